"""PyTorch's Flight Recorder analyzer, called as shipped with the installed torch, one child process per run.

The analyzer (``torch.distributed.flight_recorder``: ``loader.read_dir`` then ``builder.build_db``, what its
``fr_trace.main`` runs) disables the garbage collector, logs through a process-wide logger and may raise on
input it does not expect; a child keeps all of that out of the harness. The child prints one JSON line: the
first collective the analyzer flags (seq, op, the ranks it blames, its own words) or why it said nothing.

Each run's dumps are read twice: as dumped, and with ``pg_config`` repaired. On gloo (torch 2.13) a rank's
dump lists its default group under an empty name while every entry names it ``'0'``, so the analyzer stops
with ``KeyError: ('0', 0)`` before matching anything; the repaired read copies the group's ranks under the
names the entries use, changing nothing else, to learn what the matching logic itself would say.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FR_DIR = "fr"
"""Subdirectory of a run's report directory holding the per-rank pickles."""
PREFIX = "fr_rank"
"""File name prefix of the per-rank pickles (``tp/flight.py`` writes ``fr/fr_rank{R}``)."""
MODES = ("as_dumped", "repaired")
TIMEOUT_S = 180.0


def analyze(fr_dir: Path, *, timeout_s: float = TIMEOUT_S) -> dict[str, dict]:
    """``{mode: answer}`` for ``fr_dir``; an answer is ``{"ok": False, "error": ...}`` when the analyzer failed."""
    return analyze_many([fr_dir], timeout_s=timeout_s)[0]


def analyze_many(fr_dirs: list[Path], *, timeout_s: float = TIMEOUT_S) -> list[dict[str, dict]]:
    """``analyze`` for each of ``fr_dirs``, in one child (torch is imported once)."""
    def failed(error: str) -> dict[str, dict]:
        return {mode: {"ok": False, "error": error} for mode in MODES}

    present = [str(d) for d in fr_dirs if Path(d).is_dir()]
    found: dict[str, dict] = {}
    if present:
        command = [sys.executable, "-m", "harness.attribution.fr", *present]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=timeout_s * len(present))
            lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
            found = json.loads(lines[-1]) if lines else {}
            why = f"the analyzer's process exited {proc.returncode}: " + (
                (proc.stderr.strip().splitlines() or ["(no output)"])[-1])
        except subprocess.TimeoutExpired:
            why = f"the analyzer ran over {timeout_s * len(present):g} s"
    return [found[str(d)] if str(d) in found else
            failed(f"no Flight Recorder dumps: {d} does not exist" if not Path(d).is_dir() else why)
            for d in fr_dirs]


def repair(details: dict) -> bool:
    """Name each rank's groups in ``pg_config`` as its entries do (gloo leaves them unnamed); True if changed."""
    changed = False
    for dump in details.values():
        config = dump["pg_config"]
        unnamed = config.get("")
        for entry in dump["entries"]:
            name, desc = entry["process_group"]
            if name not in config and unnamed is not None:
                config[name] = {"name": name, "desc": desc, "ranks": unnamed["ranks"]}
                changed = True
        if changed and unnamed is not None and not unnamed.get("name"):
            config.pop("", None)
    return changed


def first_flag(db) -> dict:
    """The first collective the analyzer did not pass, as ``{"fr_seq", "seq", "op", "culprits", "how"}``."""
    for c in db.collectives:
        missing = sorted(c.missing_ranks or ())
        blamed = sorted((c.mismatch_collectives or {}).keys())
        if c.pass_check and not missing:
            continue
        how = "not all ranks joined" if missing else "; ".join(dict.fromkeys(
            str(m.type_of_mismatch) for m in (c.mismatch_collectives or {}).values())) or "failed its check"
        return {"fr_seq": c.collective_seq_id, "seq": c.collective_seq_id - 1,
                "op": str(c.collective_name).partition(":")[2] or str(c.collective_name),
                "culprits": missing or blamed, "how": how, "collectives": len(db.collectives)}
    return {"fr_seq": None, "seq": None, "op": None, "culprits": [], "how": "every collective matched",
            "collectives": len(db.collectives)}


_heard: list[str] | None = None


def _listen() -> list[str]:
    """What the analyzer's logger says, kept in a list (one handler per process)."""
    global _heard
    if _heard is None:
        import logging

        heard: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                heard.append(record.getMessage())

        logging.getLogger("Flight Recorder").addHandler(Keep())
        _heard = heard
    return _heard


def _child(fr_dir: str) -> dict[str, dict]:
    import copy
    import gc

    from torch.distributed.flight_recorder.components.builder import build_db
    from torch.distributed.flight_recorder.components.config_manager import JobConfig
    from torch.distributed.flight_recorder.components.loader import read_dir

    said = _listen()
    args = JobConfig().parse_args([fr_dir, "-p", PREFIX, "--allow-incomplete-ranks"])
    answers: dict[str, dict] = {}
    try:
        loaded, version = read_dir(args)
    except Exception as exc:  # noqa: BLE001 - what the analyzer raises is its answer
        failed = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {mode: dict(failed) for mode in MODES}
    finally:
        gc.enable()
    for mode in MODES:
        details = copy.deepcopy(loaded)
        repaired = repair(details) if mode == "repaired" else False
        del said[:]
        try:
            db = build_db(details, args, version)
        except Exception as exc:  # noqa: BLE001
            answers[mode] = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "repaired": repaired}
            continue
        flag = first_flag(db)
        reference = next(iter(details.values()))["rank"]  # the analyzer matches every other rank against it
        answers[mode] = {"ok": True, "repaired": repaired, "ranks": sorted(d["rank"] for d in details.values()),
                         "reference": reference,
                         "said": list(dict.fromkeys(s for s in said if s.strip() and "tabulate" not in s))[:12], **flag}
    return answers


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m harness.attribution.fr DIR...  (directories of fr_rank{R} pickles)")
    print(json.dumps({d: _child(d) for d in sys.argv[1:]}), flush=True)
