"""The zygote: a long-lived process with ``torch`` imported that forks ranks.

``import torch`` costs about a second per process; a fork from a process that
already paid it costs milliseconds. The same goes for the modules a rank
module's package declares fork-safe (``harness.warm``). The zygote does no compute and starts no
threads before forking (CONTRACT-safe: a forked child gets a clean torch).

Protocol over the zygote's stdin/stdout, one line per message:

    harness -> zygote   {"id": N, "module": M, "argv": [...], "env": {...}, "cwd": D, "log": PATH}
    zygote  -> harness  ready | spawned N PID | error N MESSAGE | exit PID RETURNCODE MONO

The zygote is the ranks' parent, so it reaps them (``waitpid`` when the
child's pidfd becomes readable) and reports each exit status. When its stdin
closes (the harness exited or died) it kills every live child and exits.
Each rank dies with the zygote (``PR_SET_PDEATHSIG``), and the zygote is a
child subreaper: whatever a rank leaves behind when it exits (a grandchild in
a session of its own) becomes the zygote's child, and the zygote kills and
reaps it when that rank's exit is reported (harness/lifetime.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness import lifetime, warm

ExitCallback = Callable[[int, "int | None", "float | None"], None]


# --------------------------------------------------------------------- server


def _rank_paths(req: dict) -> list[str]:
    """Where the rank's imports resolve: its working directory, then its ``PYTHONPATH``."""
    return [req["cwd"], *(p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p)]


def _child(req: dict, close_fds: list[int], zygote_pid: int, warmed: dict[str, tuple[str, ...]]) -> None:
    """Runs in the forked child: become the rank and never return."""
    code = 1
    try:
        lifetime.die_with_parent(zygote_pid)
        os.setsid()
        for fd in close_fds:
            os.close(fd)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(devnull)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
        # The rank's own line-buffered streams on the log (they live as long as the process).
        sys.stdout = open(1, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        paths = _rank_paths(req)
        sys.path[:1] = [paths[0], *(p for p in paths[1:] if p not in sys.path)]
        import importlib

        importlib.invalidate_caches()
        warm.forget_elsewhere(req["module"], paths, warmed)
        threads = req["env"].get("OMP_NUM_THREADS", "")
        if threads.isdigit() and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(int(threads))
        sys.argv = [req["module"], *req["argv"]]
        import runpy

        try:
            runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - like an interpreter: print it, exit 1
            import traceback

            traceback.print_exc()
            code = 1
        # What a normal interpreter does on the way out: join non-daemon threads, run atexit.
        import atexit

        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if 0 <= code <= 255 else 1)


def _kill_all(pids: list[int]) -> None:
    """The harness is gone: kill every child, its process group and its descendants (orphans included)."""
    import psutil

    procs = psutil.Process().children(recursive=True)
    for sig in (signal.SIGCONT, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig)
            except OSError:
                pass
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
                pass
    for proc in procs:
        try:
            os.waitpid(proc.pid, 0)
        except ChildProcessError:  # not ours (a rank's descendant) or reaped already
            pass


def _kill_orphans(ranks: set[int], orphans: dict[int, int]) -> None:
    """Kill the zygote's children that are not ranks: a rank's descendants, reparented here when their parent
    exited. Each is reaped when its pidfd becomes readable (``orphans``: pidfd -> pid)."""
    import psutil

    known = ranks | set(orphans.values())
    for proc in psutil.Process().children():
        if proc.pid in known:
            continue
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:
            continue
        orphans[fd] = proc.pid
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                if os.getpgid(proc.pid) == proc.pid:  # a session or group of its own: take its members too
                    os.killpg(proc.pid, sig)
                else:
                    os.kill(proc.pid, sig)
            except OSError:
                pass


def serve(preload: list[str]) -> None:
    """The zygote's main loop (``python -m harness.zygote torch,...``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lifetime.become_subreaper()
    for name in preload:
        __import__(name)
    out = sys.stdout.buffer
    zygote_pid = os.getpid()
    out.write(b"ready\n")
    out.flush()
    children: dict[int, int] = {}  # pidfd -> pid
    orphans: dict[int, int] = {}  # pidfd -> pid, for what ranks left behind
    warmed: dict[str, tuple[str, ...]] = {}  # package -> the paths its ZYGOTE_PRELOAD was imported from
    buf = b""
    while True:
        readable, _, _ = select.select([0, *children, *orphans], [], [])
        for fd in readable:
            if fd in orphans:  # its own children, if any, are ours now
                _reap(orphans.pop(fd), fd)
                _kill_orphans(set(children.values()), orphans)
                continue
            if fd != 0:
                pid = children.pop(fd)
                code = _reap(pid, fd)
                out.write(f"exit {pid} {code} {time.monotonic():.6f}\n".encode())
                out.flush()  # the harness learns of the exit before the scan for what the rank left
                _kill_orphans(set(children.values()), orphans)
                continue
            data = os.read(0, 65536)
            if not data:
                _kill_all(list(children.values()))
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                req = json.loads(line)
                out.flush()
                warm.preload(req["module"], _rank_paths(req), warmed)
                try:
                    pid = os.fork()
                except OSError as exc:
                    out.write(f"error {req['id']} fork failed: {exc}\n".encode())
                    continue
                if pid == 0:
                    _child(req, [*children, *orphans], zygote_pid, warmed)
                children[os.pidfd_open(pid)] = pid
                out.write(f"spawned {req['id']} {pid}\n".encode())
        out.flush()


def _reap(pid: int, fd: int) -> int:
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# --------------------------------------------------------------------- client


class ZygoteError(RuntimeError):
    """The zygote could not start or spawn a rank."""


class Zygote:
    """Client side: starts the zygote process and asks it to fork ranks."""

    def __init__(self, preload: tuple[str, ...] = ("torch", "torch.distributed")) -> None:
        self.preload = preload
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ready = threading.Event()
        self._pending: dict[int, dict] = {}
        self._on_exit: dict[int, ExitCallback] = {}
        self._next_id = 0
        self._dead: str | None = None
        self._errlog = tempfile.TemporaryFile(prefix="harness-zygote-")  # its stderr; no name to leak
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start the process (non-blocking); ``spawn`` waits until it is ready."""
        with self._lock:
            if self._proc is not None:
                return
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                   lifetime.RUN_ENV: lifetime.run_marker()}  # forked ranks' /proc/PID/environ is the zygote's
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "harness.zygote", ",".join(self.preload)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errlog,
                cwd=str(Path(__file__).resolve().parent.parent), env=env, start_new_session=True,
            )
            self._reader = threading.Thread(target=self._read, name="harness-zygote-reader", daemon=True)
            self._reader.start()

    def _read(self) -> None:
        proc = self._proc
        for raw in proc.stdout:  # type: ignore[union-attr]
            kind, _, rest = raw.decode().strip().partition(" ")
            if kind == "ready":
                self._ready.set()
            elif kind in ("spawned", "error"):
                rid, _, value = rest.partition(" ")
                with self._lock:
                    slot = self._pending.pop(int(rid))
                    if kind == "spawned":
                        self._on_exit[int(value)] = slot["on_exit"]
                slot["value"] = (kind, value)
                slot["event"].set()
            elif kind == "exit":
                pid, code, mono = rest.split()
                with self._lock:
                    callback = self._on_exit.pop(int(pid), None)
                if callback is not None:
                    callback(int(pid), int(code), float(mono))
        self._died()

    def _died(self) -> None:
        try:
            self._errlog.seek(0)
            detail = self._errlog.read().decode(errors="replace").strip()[-2000:]
        except ValueError:  # closed by close(): the exit was ours
            detail = ""
        with self._lock:
            self._dead = "the zygote exited" + (f": {detail}" if detail else "")
            pending, self._pending = self._pending, {}
            lost, self._on_exit = self._on_exit, {}
        self._ready.set()
        for slot in pending.values():
            slot["value"] = ("error", self._dead)
            slot["event"].set()
        for pid, callback in lost.items():
            callback(pid, None, None)

    def spawn(self, *, module: str, argv: list[str], env: dict, cwd: str, log: str,
              on_exit: ExitCallback, timeout_s: float = 60.0) -> int:
        """Fork a rank running ``python -m module *argv``; return its pid.

        ``on_exit(pid, returncode, mono)`` is called from a reader thread when
        the rank exits (returncode None if the zygote died first).
        """
        self.start()
        ready_at = time.monotonic() + timeout_s
        if not self._ready.wait(timeout=max(0.0, ready_at - time.monotonic())):
            raise ZygoteError(f"the zygote did not become ready within {timeout_s:g} s")
        slot = {"event": threading.Event(), "on_exit": on_exit}
        with self._lock:
            if self._dead:
                raise ZygoteError(self._dead)
            rid = self._next_id
            self._next_id += 1
            self._pending[rid] = slot
        req = {"id": rid, "module": module, "argv": argv, "env": env, "cwd": cwd, "log": log}
        try:
            with self._write_lock:
                self._proc.stdin.write(json.dumps(req).encode() + b"\n")  # type: ignore[union-attr]
                self._proc.stdin.flush()  # type: ignore[union-attr]
        except OSError as exc:
            raise ZygoteError(f"cannot reach the zygote: {exc}") from None
        if not slot["event"].wait(timeout=max(0.0, ready_at - time.monotonic())):
            raise ZygoteError(f"the zygote did not answer a spawn request within {timeout_s:g} s")
        kind, value = slot["value"]
        if kind != "spawned":
            raise ZygoteError(value)
        return int(value)

    def close(self) -> None:
        """Close stdin: the zygote kills any live child and exits."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._errlog.close()


_SHARED: Zygote | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> Zygote:
    """The one zygote of this harness process (started on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED._dead:
            _SHARED = Zygote()
            import atexit

            atexit.register(_SHARED.close)
        _SHARED.start()
        return _SHARED


if __name__ == "__main__":
    serve([name for name in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if name])
