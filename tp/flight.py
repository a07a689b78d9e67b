"""The flight trace: every rank's bounded ring of its last collectives.

Each collective this TP path issues goes through ``enter`` and ``leave``: a
sequence number, the op, shapes, dtypes, root, the caller's site (envelope
header / meta / a tensor key, generator call k, digest exchange, chunk-end
stats), chunk, call_id, and ``time.monotonic()`` on entry and exit. A rank
blocked in a collective has an entry with no ``leave``; ranks that disagree on
the n-th collective show it at the same ``seq``. That is what the harness
diffs to name the first divergent collective (docs/CONTRACT.md §6).

Always on, so it must be cheap: an entry is one list holding the tensor's own
``shape`` and ``dtype`` objects; names and JSON are made only when dumping.

With PyTorch's Flight Recorder on (``TORCH_FR_BUFFER_SIZE`` set before the process group exists), each dump
also writes the recorder's own pickle as ``fr/fr_rank{R}`` in the report directory: the layout PyTorch's
analyzer (``python -m torch.distributed.flight_recorder.fr_trace DIR/fr -p fr_rank``) reads, and an answer to
SIGUSR1 also into ``fr_asked/`` (``FR_ASKED_DIR``). Off by default, so a run without the variable pays nothing.

The ring is written on SIGUSR1, on every TP-FATAL and at a clean exit. A
rank blocked inside a collective is inside C++ and never runs a Python signal
handler, so SIGUSR1 is acted on by ``tp.signals``' thread, which writes every
thread's stack to the log and then the dump.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time

from tp import signals

SCHEMA = "tp-flight/1"
DEFAULT_ENTRIES = 512
"""Ring length: about ten chunks of collectives at world size 2."""

FR_ENV = "TORCH_FR_BUFFER_SIZE"
"""PyTorch's Flight Recorder records only when this is set (to its ring length) before the group is made."""
FR_DIR = "fr"
"""Subdirectory of the report directory holding each rank's newest ``fr_rank{R}`` pickle: the analyzer reads
every file of its directory tree whose name holds the prefix."""
FR_ASKED_DIR = "fr_asked"
"""Beside it: each rank's newest answer to SIGUSR1 (the pickle and this rank's flight trace, same moment). A
hung run's ranks dump again while the harness reaps them (SIGCONT, SIGTERM), so ``fr/`` then holds the
reaping, not the hang; this keeps what the ranks said when asked at the stall."""

GENERATOR_SITE = "generator call"
"""The site of the generator's all_reduces; dumps append the call_id ("generator call 5")."""

# Entry layout (a list, not an object: this runs on every collective).
SEQ, OP, SHAPES, DTYPES, ROOT, SITE, CHUNK, CALL_ID, ENTER, LEAVE = range(10)


class Recorder:
    """One rank's ring. ``ctx`` is the rank's live ``{"chunk", "call_id"}`` dict."""

    def __init__(self, *, rank: int, world_size: int, ctx: dict, entries: int = DEFAULT_ENTRIES,
                 report_dir: str | None = None) -> None:
        self.rank, self.world_size, self.ctx = rank, world_size, ctx
        self.ring: collections.deque[list] = collections.deque(maxlen=entries)
        self.seq = 0
        self.report_dir = report_dir or None
        self.fr = bool(os.environ.get(FR_ENV)) and self.report_dir is not None
        """Whether dumps also write PyTorch's Flight Recorder pickle (``FR_ENV`` set and a report directory)."""
        self.idle: str | None = None
        """Set while the main thread waits for outside input (a request), in no collective; dumped as ``idle``."""
        self._lock = threading.Lock()

    def enter(self, op: str, tensor, site: str, root: int | None = None) -> list:
        ctx = self.ctx
        entry = [self.seq, op, tensor.shape, tensor.dtype, root, site, ctx["chunk"], ctx["call_id"],
                 time.monotonic(), None]
        self.seq += 1
        self.ring.append(entry)
        return entry

    @staticmethod
    def leave(entry: list) -> None:
        entry[LEAVE] = time.monotonic()

    def document(self, reason: str) -> dict:
        """The JSON document of docs/CONTRACT.md §6."""
        now = time.monotonic()
        entries = [_entry_json(e) for e in list(self.ring)]
        return {"schema": SCHEMA, "rank": self.rank, "world_size": self.world_size, "pid": os.getpid(),
                "reason": reason, "mono": round(now, 6), "next_seq": self.seq, "capacity": self.ring.maxlen,
                "idle": self.idle, "entries": entries}

    def dump(self, reason: str) -> None:
        """Write ``flight_rank{R}.json`` into the report directory, or one ``TP-TRACE`` log line."""
        with self._lock:
            text = json.dumps(self.document(reason), separators=(",", ":"))
            if self.fr:  # before the trace file: a fresh trace tells the harness this answer is complete
                _dump_fr(self.report_dir, self.rank, text if reason == "SIGUSR1" else None)
            if self.report_dir is not None:
                path = os.path.join(self.report_dir, f"flight_rank{self.rank}.json")
                tmp = f"{path}.{os.getpid()}.tmp"
                try:
                    with open(tmp, "w") as f:  # rename: a reader never sees half a dump
                        f.write(text)
                    os.replace(tmp, path)
                    return
                except OSError as exc:
                    sys.stdout.write(f"TP-INFO cannot write {path} ({exc}); the trace follows as a log line\n")
            sys.stdout.write("TP-TRACE " + text + "\n")
            sys.stdout.flush()


def _dump_fr(report_dir: str, rank: int, asked_trace: str | None) -> None:
    """PyTorch's Flight Recorder pickle (every collective, no stacks) to ``fr/fr_rank{R}``, atomically; an
    answer to SIGUSR1 (``asked_trace``: the flight trace of the same moment) also to ``fr_asked/``."""
    try:
        import torch

        data = torch._C._distributed_c10d._dump_fr_trace(includeCollectives=True, includeStackTraces=False,
                                                        onlyActive=False)
        _replace(report_dir, FR_DIR, f"fr_rank{rank}", data)
        if asked_trace is not None:
            _replace(report_dir, FR_ASKED_DIR, f"flight_rank{rank}.json", asked_trace.encode())
            _replace(report_dir, FR_ASKED_DIR, f"fr_rank{rank}", data)
    except Exception as exc:  # noqa: BLE001 - an older torch, a full disk: the flight trace still follows
        sys.stdout.write(f"TP-INFO cannot write the Flight Recorder dump of rank {rank} ({exc})\n")


def _replace(report_dir: str, folder: str, name: str, data: bytes) -> None:
    os.makedirs(os.path.join(report_dir, folder), exist_ok=True)
    tmp = os.path.join(report_dir, f".{name}.{os.getpid()}.tmp")  # outside the folder: never half-read there
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(report_dir, folder, name))


def _entry_json(e: list) -> dict:
    site = f"{e[SITE]} {e[CALL_ID]}" if e[SITE] == GENERATOR_SITE else e[SITE]
    return {"seq": e[SEQ], "op": e[OP], "shapes": [list(e[SHAPES])], "dtypes": [str(e[DTYPES]).removeprefix("torch.")],
            "root": e[ROOT], "site": site, "chunk": e[CHUNK], "call_id": e[CALL_ID],
            "enter": round(e[ENTER], 6), "leave": None if e[LEAVE] is None else round(e[LEAVE], 6)}


recorder: Recorder | None = None
"""This process's recorder (``install`` sets it); the collective call sites record into it."""


def enter(op: str, tensor, site: str, root: int | None = None) -> list | None:
    return recorder.enter(op, tensor, site, root) if recorder is not None else None


def leave(entry: list | None) -> None:
    if entry is not None:
        entry[LEAVE] = time.monotonic()


def dump(reason: str) -> None:
    """Dump the ring if there is one; never raises (it runs on the way to ``os._exit``)."""
    if recorder is None:
        return
    try:
        recorder.dump(reason)
    except Exception as exc:  # noqa: BLE001 - a full disk must not stop a crash-only exit
        print(f"TP-INFO flight trace dump failed: {exc}", flush=True)


def install(rec: Recorder) -> None:
    """Make ``rec`` the process's recorder; on SIGUSR1 the signal thread dumps every stack, then the ring.

    Stacks first, trace file last: the harness takes a fresh trace as "this answer is complete" (CONTRACT §6).
    """
    global recorder
    recorder = rec
    if not signals.on(signal.SIGUSR1, _answer):
        # Not the main thread (an embedding runtime): no signal thread, so faulthandler's own handler is the
        # only way to answer. It walks frames without the GIL (see tp.signals): stacks only, traces on exit.
        import faulthandler

        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


def _answer() -> None:
    signals.dump_stacks()
    dump("SIGUSR1")
