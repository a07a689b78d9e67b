"""PyTorch's Flight Recorder, written as the contract's flight trace (docs/CONTRACT.md §6) for the judge.

The bootstrap turns the recorder on (``TORCH_FR_BUFFER_SIZE``) before the engine makes a process group; every
backend then records every collective it runs (gloo too: entries named ``gloo:all_reduce``). On request
(SIGUSR1) and at exit the recorder's JSON dump (``_dump_fr_trace_json``) is written raw as ``fr_rank{R}.json``
(for tools that read PyTorch's own format) and converted to ``flight_rank{R}.json``, schema ``tp-flight/1``.

What the recorder gives on gloo (torch 2.13, CPU), and so what the conversion does:

* ``collective_seq_id`` counts each process group's collectives from 1: ``seq`` is it minus 1 for the
  default group (pg_id 0), and ``pg_id * GROUP_STRIDE`` plus that for another group of every rank (a TP group
  made with ``new_group``: every rank numbers its groups alike, so each group's sequence is compared with the
  same group's on the peers), collectives only (p2p ops number separately). A group of fewer ranks is left out
  (the recorder on gloo gives no group's members: the sizes come from the injector's ``issued``, so without
  faults armed only the default group is traced); entries stay in the order the rank entered them;
* ``state`` stays ``scheduled`` and ``time_discovered_*`` stay 0 on gloo: ``retired`` (the work finished)
  is the only sign a collective returned, so ``leave`` is null exactly while it is not retired;
* p2p ops are not recorded on gloo, and a ``reduce_scatter_tensor`` is recorded as ``gloo:all_reduce``
  (gloo runs it as one); the ``site`` names the call the engine made;
* ``time_created_ns`` is wall-clock time: ``enter`` is it moved onto ``time.monotonic()``;
* ``timeout_ms`` is the timeout the collective runs under (the process group's, or the call's own): it is
  ``timeout_s``, which tells the supervisor when the engine's own guardrail will end a stuck collective;
* ``input_sizes`` / ``input_dtypes`` (``Double``...) give ``shapes`` / ``dtypes`` (``float64``...); the root
  of a rooted collective is not recorded (``root`` null); a scatter's shapes are its output's (its root's input
  is the whole list).
"""

from __future__ import annotations

import json
import os
import sys
import time

SCHEMA = "tp-flight/1"
GROUP_STRIDE = 10**12
"""``seq`` of a collective of process group N (N > 0) is ``N * GROUP_STRIDE + its number in that group``."""
BUFFER_ENV = "TORCH_FR_BUFFER_SIZE"
BUFFER_DEFAULT = "4096"
P2P = ("send", "recv", "recv_any_source")
_DTYPES = {"Double": "float64", "Float": "float32", "Half": "float16", "BFloat16": "bfloat16", "Long": "int64",
           "Int": "int32", "Short": "int16", "Char": "int8", "Byte": "uint8", "Bool": "bool"}


def raw_dump() -> dict | None:
    """The recorder's entries now, as PyTorch dumps them; None when it has none or cannot dump."""
    torch = sys.modules.get("torch")
    if torch is None:  # a process that never imported torch has no recorder (and must not pay for the import)
        return None
    try:
        text = torch._C._distributed_c10d._dump_fr_trace_json(includeCollectives=True, onlyActive=False)
        doc = json.loads(text if isinstance(text, str) else bytes(text).decode())
    except Exception:  # noqa: BLE001 - no recorder (an older torch, no process group yet): no trace
        return None
    return doc if isinstance(doc, dict) else None


def convert(raw: dict | None, *, rank: int, world_size: int, reason: str,
            issued: list[tuple] | None = None) -> dict:
    """The contract's flight trace from a raw recorder dump.

    ``issued`` (with faults armed: the injector's record of every collective handed to the backend, in order)
    names each entry by the call it is, ``all_reduce call 3``, as its ``site`` and ``call_id``: a rank that
    skipped a call then differs from its peers where it skipped, not where the shapes first disagree.
    Without it (or when the recorder's ring has wrapped) the site is the recorder's own name and record id.
    """
    offset = time.time() - time.monotonic()
    recorded = sorted((e for e in (raw or {}).get("entries") or [] if isinstance(e, dict)),
                      key=lambda e: int(e.get("record_id", 0)))
    wrapped = not recorded or recorded[0].get("record_id") != 0
    recorded = [e for e in recorded if not e.get("is_p2p")]
    issued = [c for c in issued or () if c[0] not in P2P]  # gloo records no p2p op at all, NCCL its own way
    named = bool(issued) and not wrapped and len(recorded) <= len(issued)
    entries = []
    for i, e in enumerate(recorded):
        pg = int(e.get("pg_id", 0) or 0)
        if pg and not (named and len(issued[i]) > 2 and issued[i][2] == world_size):
            continue
        name = str(e.get("profiling_name", "?")).partition(":")[2] or str(e.get("profiling_name"))
        # What every rank passes alike: a scatter's root sends more than the others (its input is the whole
        # list), so its output is compared; elsewhere the input (a gather's non-root output is empty).
        first, then = ("output", "input") if name == "scatter" else ("input", "output")
        shapes = e.get(f"{first}_sizes") or e.get(f"{then}_sizes") or []
        dtypes = e.get(f"{first}_dtypes") or e.get(f"{then}_dtypes") or []
        enter = float(e.get("time_created_ns") or 0) / 1e9 - offset
        entries.append({"seq": pg * GROUP_STRIDE + int(e.get("collective_seq_id", 0)) - 1, "op": name, "shapes": shapes,
                        "dtypes": [_DTYPES.get(d, str(d).lower()) for d in dtypes], "root": None,
                        "site": f"{issued[i][0]} call {issued[i][1]}" if named else
                        f"{e.get('profiling_name')} record {e.get('record_id')}", "chunk": None,
                        "call_id": issued[i][1] if named else None, "enter": round(enter, 6),
                        "leave": round(enter, 6) if e.get("retired") else None,
                        "timeout_s": float(e["timeout_ms"]) / 1000 if e.get("timeout_ms") else None})
    default = [x["seq"] for x in entries if x["seq"] < GROUP_STRIDE]
    next_seq = max(default) + 1 if default else 0
    return {"schema": SCHEMA, "rank": rank, "world_size": world_size, "pid": os.getpid(), "reason": reason,
            "mono": time.monotonic(), "next_seq": next_seq, "capacity": int(os.environ.get(BUFFER_ENV) or 0),
            "source": "torch flight recorder", "idle": None, "entries": entries}


def write(report_dir: str | None, *, rank: int, world_size: int, reason: str,
          issued: list[tuple] | None = None) -> None:
    """Dump the recorder raw and converted: into ``report_dir`` (atomically), else one ``TP-TRACE`` line."""
    raw = raw_dump()
    doc = convert(raw, rank=rank, world_size=world_size, reason=reason, issued=issued)
    if report_dir:
        try:
            if raw is not None:
                _replace(os.path.join(report_dir, f"fr_rank{rank}.json"), json.dumps(raw))
            _replace(os.path.join(report_dir, f"flight_rank{rank}.json"), json.dumps(doc))  # last: "answer complete"
            return
        except OSError:
            pass
    print("TP-TRACE " + json.dumps(doc, separators=(",", ":")), flush=True)


def _replace(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
