"""What the zero-touch bootstrap does to one rank of an unmodified engine (docs/CONTRACT.md, "Zero-touch").

Started by ``sitecustomize`` before the engine's first line, in the main thread:

* turns on PyTorch's Flight Recorder (``TORCH_FR_BUFFER_SIZE``, unless the engine's env sets it);
* arms the collective faults of ``TP_FAILPOINTS`` (``_breakit_faults``) once ``torch`` is imported, and prints
  the ``TP-FAULT`` line of each fault before it acts;
* prints ``TP-EVENT init`` when the engine's process group is up (``init_process_group`` returned), saying it
  answers SIGUSR1 with a flight trace;
* answers SIGUSR1 with every thread's stack and then the flight trace, from a thread of its own woken through
  ``signal.set_wakeup_fd`` (a rank blocked in a collective never returns to the interpreter, and faulthandler's
  own signal handler walks frames without the GIL while threads run: it can crash the rank). A Python-level
  SIGUSR1 handler the engine installs later still runs: Python's C handler writes the wakeup fd for it too;
* prints one ``TP-FATAL ... code=UNCAUGHT_EXCEPTION`` line for an uncaught exception (type, message, rank),
  then lets the engine's own excepthook and exit happen;
* with ``BREAKIT_OUTPUT_REGEX`` (``--output-regex``), watches what rank 0 prints and at exit prints the last
  match's digest as the JSON line the judge compares with the healthy run's (``output_digest``);
* at exit writes the flight trace and prints ``TP-EVENT exit``.
"""

from __future__ import annotations

import atexit
import faulthandler
import hashlib
import importlib.abc
import importlib.util
import json
import os
import re
import signal
import sys
import threading
import time

import _breakit_faults as faults
import _breakit_flight as flight

FATAL_CODE = "UNCAUGHT_EXCEPTION"
"""The one fatal code the bootstrap prints; its exit status is the interpreter's for an uncaught exception."""
FATAL_EXIT = 1

_state = {"rank": 0, "world_size": 1, "init": False, "fatal": False, "exit_code": None, "library": None,
          "injector": None}
_print_lock = threading.Lock()


def emit(kind: str, text: str) -> None:
    """One contract line, in one write, flushed (the engine may die right after it)."""
    with _print_lock:
        try:
            sys.stdout.write(f"{kind} {text}\n" if kind else text + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            pass


def event(name: str, **fields) -> None:
    emit("TP-EVENT", json.dumps({"event": name, "rank": _state["rank"], "mono": time.monotonic(),
                                 "wall": time.time(), **fields}))


def start() -> None:
    """Everything that must happen before the engine's first line."""
    _state["rank"] = int(os.environ.get("RANK", "0"))
    _state["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    os.environ.setdefault(flight.BUFFER_ENV, flight.BUFFER_DEFAULT)
    try:
        entries = faults.parse(os.environ.get("TP_FAILPOINTS", ""))
    except faults.FaultSpecError as exc:
        print(f"breakit bootstrap: {exc}", file=sys.stderr, flush=True)
        os._exit(2)
    _answer_sigusr1()
    _watch_uncaught()
    if _state["rank"] == 0 and os.environ.get("BREAKIT_OUTPUT_REGEX"):
        sys.stdout = _Output(sys.stdout, re.compile(os.environ["BREAKIT_OUTPUT_REGEX"]))
    atexit.register(_at_exit)
    sys.meta_path.insert(0, _AfterTorch(entries))


class _AfterTorch(importlib.abc.MetaPathFinder):
    """Runs ``_on_torch`` once ``import torch`` has finished, whoever imports it first."""

    def __init__(self, entries: list) -> None:
        self.entries = entries

    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_arm(module) -> None:
            exec_module(module)
            _on_torch(module, self.entries)

        spec.loader.exec_module = exec_then_arm
        return spec


def _on_torch(torch, entries: list) -> None:
    if entries:
        injector = _state["injector"] = faults.Injector(entries, _state["rank"], _fault_line)
        _state["library"] = injector.install(torch)
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    original = c10d.init_process_group

    def init_process_group(*args, **kwargs):
        result = original(*args, **kwargs)
        _announce(dist)
        return result

    for module in (c10d, dist, sys.modules.get("torch.distributed.device_mesh")):
        if module is not None and getattr(module, "init_process_group", None) is original:
            module.init_process_group = init_process_group


def _announce(dist) -> None:
    if _state["init"]:
        return
    _state["init"] = True
    _state["rank"], _state["world_size"] = dist.get_rank(), dist.get_world_size()
    event("init", world_size=_state["world_size"], pid=os.getpid(), flight=flight.SCHEMA, guardrails=[],
          engine="zero-touch", backend=str(dist.get_backend()))


def _fault_line(site: str, action: str, call: int, op: str) -> None:
    emit("TP-FAULT", f"site={site} action={action} rank={_state['rank']} chunk=0 call_id={call} op={op} "
                     f"mono={time.monotonic():.6f}")


def _answer_sigusr1() -> None:
    previous = signal.getsignal(signal.SIGUSR1)

    def handler(signum, frame) -> None:  # runs in the main thread, whenever it is back in Python
        if callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGUSR1, handler)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: SIGUSR1 keeps its meaning
        return
    threading.Thread(target=_wakeups, args=(read_fd, old_fd), name="breakit-signals", daemon=True).start()


def _wakeups(read_fd: int, chained_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if chained_fd >= 0:  # someone's wakeup fd before ours (rare at start-up) still hears every signal
            try:
                os.write(chained_fd, data)
            except OSError:
                pass
        if signal.SIGUSR1 in data:
            dump_stacks()
            _write_flight("SIGUSR1")


def _write_flight(reason: str) -> None:
    injector = _state["injector"]
    flight.write(os.environ.get("TP_REPORT_DIR"), rank=_state["rank"], world_size=_state["world_size"],
                 reason=reason, issued=list(injector.issued) if injector is not None else None)


def dump_stacks() -> None:
    """Every thread's stack to stderr, with the GIL held (no frame is freed while it is read)."""
    try:
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except (OSError, ValueError, RuntimeError):
        pass


def _watch_uncaught() -> None:
    previous_hook, previous_exit = sys.excepthook, sys.exit

    def excepthook(exc_type, exc, tb) -> None:
        if not issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            _state["fatal"], _state["exit_code"] = True, FATAL_EXIT
            detail = f"{exc_type.__name__}: {exc}".replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")[:500]
            emit("TP-FATAL", f"fm=ENGINE code={FATAL_CODE} rank={_state['rank']} mono={time.monotonic():.6f} "
                             f"type={exc_type.__name__} detail=\"{detail}\"")
        previous_hook(exc_type, exc, tb)

    def exit_(code=0):
        _state["exit_code"] = code if isinstance(code, int) else (0 if code is None else 1)
        previous_exit(code)

    sys.excepthook, sys.exit = excepthook, exit_


class _Output:
    """Rank 0's stdout, passed through, with the last match of the user's output regex kept."""

    def __init__(self, stream, regex: re.Pattern) -> None:
        self._stream, self._regex, self._line, self.match = stream, regex, "", None

    def write(self, text: str) -> int:
        self._line += text
        *lines, self._line = self._line.split("\n")
        for line in lines:
            m = self._regex.search(line)
            if m:
                self.match = m.group(1) if m.groups() else m.group(0)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _at_exit() -> None:
    out = sys.stdout
    if isinstance(out, _Output) and out.match is not None:
        digest = hashlib.sha256(out.match.encode()).hexdigest()[:16]
        emit("", json.dumps({"output_digest": digest, "output": out.match[:200], "source": "--output-regex"}))
    _write_flight(f"TP-FATAL {FATAL_CODE}" if _state["fatal"] else "exit")
    # None: the engine ended without sys.exit or an uncaught exception the bootstrap saw (returning from its
    # script, or ``raise SystemExit(...)``, which skips both); the process's own exit status is the truth.
    event("exit", code=_state["exit_code"])
