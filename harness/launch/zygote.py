"""The zygote: a long-lived process with ``torch`` imported that forks ranks.

``import torch`` costs about a second per process; a fork from a process that
already paid it costs milliseconds. The same goes for the modules a rank
module's package declares fork-safe (``harness.launch.warm``). The zygote does no compute and starts no
threads before forking (CONTRACT-safe: a forked child gets a clean torch).

Protocol, one line per message, over the zygote's stdin/stdout (the harness that
started it) or a Unix socket (``share_through``: pytest-xdist workers of one run):

    harness -> zygote   {"id": N, "module": M, "argv": [...], "env": {...}, "cwd": D, "log": PATH}
    zygote  -> harness  ready | spawned N PID | error N MESSAGE | exit PID RETURNCODE MONO

The zygote is the ranks' parent, so it reaps them (``waitpid`` when the
child's pidfd becomes readable) and reports each exit status to the client that
asked for the rank. When a client's stream closes (that harness exited or died)
the zygote kills its ranks; after the last one it kills every live child and exits.
Each rank dies with the zygote (``PR_SET_PDEATHSIG``), and the zygote is a
child subreaper: whatever a rank leaves behind when it exits (a grandchild in
a session of its own) becomes the zygote's child, and the zygote kills and
reaps it when that rank's exit is reported (harness/launch/lifetime.py). The server
side is ``harness.launch.zygote_server``.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness.launch import lifetime

ExitCallback = Callable[[int, "int | None", "float | None"], None]
PRELOAD = ("torch", "torch.distributed")
"""What the zygote imports before it forks anything."""
KILL_WAIT_S = 5.0
"""How long a SIGKILLed zygote may take to be reaped (one stuck in the kernel)."""
ADDRESS_FILE = "zygote.addr"
"""In the shared directory: the path of the shared zygote's socket."""
_ADDRESS_TMP = ADDRESS_FILE + ".tmp"
"""Written first, then renamed over ``ADDRESS_FILE``: a joiner never reads half an address."""
LOCK_FILE = "zygote.lock"
"""In the shared directory: held while a process joins or starts the shared zygote, or removes the directory."""


class ZygoteError(RuntimeError):
    """The zygote could not start or spawn a rank."""


class Zygote:
    """Client side: starts the zygote process (or joins one, ``connect``) and asks it to fork ranks."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD, *,
                 listen: socket.socket | None = None) -> None:
        self.preload = preload
        self._listen = listen
        """A bound, listening Unix socket handed to the zygote: other harness processes may join it."""
        self._proc: subprocess.Popen | None = None
        self._conn: socket.socket | None = None
        self._rfile = None
        self._wfile = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._ready = threading.Event()
        self._pending: dict[int, dict] = {}
        self._on_exit: dict[int, ExitCallback] = {}
        self._next_id = 0
        self._dead: str | None = None
        self._errlog = tempfile.TemporaryFile(prefix="harness-zygote-")  # its stderr; no name to leak
        self._reader: threading.Thread | None = None
        self.share_dir: Path | None = None
        """Where this zygote's address is published (``share_through``): removed when its starter closes."""
        self.share_sock = ""
        """The address published there: the socket of this zygote's listener."""
        self.greeted = False
        """The zygote said ``ready`` to us (a joiner queued on a zygote on its way out never hears it)."""

    @classmethod
    def connect(cls, path: str) -> Zygote:
        """Join the zygote listening at ``path`` (raises OSError when nobody does)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(path)
        except OSError:
            conn.close()
            raise
        zygote = cls(preload=())
        zygote._conn = conn
        zygote._rfile, zygote._wfile = conn.makefile("rb"), conn.makefile("wb")
        zygote._start_reader()
        return zygote

    @property
    def pid(self) -> int | None:
        """The zygote's pid when this process started it."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the process (non-blocking); ``spawn`` waits until it is ready."""
        with self._lock:
            if self._proc is not None or self._conn is not None:
                return
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                   lifetime.RUN_ENV: lifetime.run_marker()}  # forked ranks' /proc/PID/environ is the zygote's
            argv = [sys.executable, "-m", "harness.launch.zygote_server", ",".join(self.preload)]
            fds = ()
            if self._listen is not None:
                argv.append(str(self._listen.fileno()))
                fds = (self._listen.fileno(),)
                if self.share_dir is not None:
                    argv.append(str(self.share_dir))
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._errlog, pass_fds=fds,
                cwd=str(Path(__file__).resolve().parents[2]), env=env, start_new_session=True,
            )
            if self._listen is not None:
                self._listen.close()  # the zygote's now: it goes when the zygote goes
                self._listen = None
            self._rfile, self._wfile = self._proc.stdout, self._proc.stdin
            self._start_reader()

    def _start_reader(self) -> None:
        self._reader = threading.Thread(target=self._read, name="harness-zygote-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self._rfile:  # type: ignore[union-attr]
                self._on_line(raw.decode().strip())
        except (OSError, ValueError):  # our own close() shut the stream
            pass
        self._died()

    def _on_line(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "ready":
            self.greeted = True
            self._ready.set()
        elif kind in ("spawned", "error"):
            rid, _, value = rest.partition(" ")
            with self._lock:
                slot = self._pending.pop(int(rid), None) if rid.lstrip("-").isdigit() else None
                if slot is None:  # an answer to nothing we asked (the zygote's word on a request it could not read)
                    return
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
            with self._lock:  # the next shared() starts a fresh one instead of waiting on this one again
                self._dead = self._dead or f"the zygote did not become ready within {timeout_s:g} s"
            self._kill()
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
                self._wfile.write(json.dumps(req).encode() + b"\n")  # type: ignore[union-attr]
                self._wfile.flush()  # type: ignore[union-attr]
        except OSError as exc:
            raise ZygoteError(f"cannot reach the zygote: {exc}") from None
        if not slot["event"].wait(timeout=max(0.0, ready_at - time.monotonic())):
            raise ZygoteError(f"the zygote did not answer a spawn request within {timeout_s:g} s")
        kind, value = slot["value"]
        if kind != "spawned":
            raise ZygoteError(value)
        return int(value)

    def _kill(self) -> None:
        """End a zygote this process started that is given up (stuck before ready): its session, reaped.
        Nothing it forked outlives it (``PR_SET_PDEATHSIG``); one joined is its starter's to end."""
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)  # started in a session of its own
        except OSError:
            pass
        try:
            self._proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:  # stuck in the kernel: nothing more a signal can do
            pass

    def close(self) -> None:
        """Close our stream: the zygote kills our live ranks, and exits when no other harness uses it."""
        proc, conn = self._proc, self._conn
        if conn is not None:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        elif proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()  # type: ignore[union-attr]
                if self.share_dir is None:  # a shared zygote lives on for the others: never wait for it or kill it
                    proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._errlog.close()
        if self.share_dir is not None:  # a worker starting later starts a zygote of its own
            leave_share_dir(self.share_dir, self.share_sock)


_SHARED: Zygote | None = None
_SHARED_LOCK = threading.Lock()
_SHARE_DIR: Path | None = None


def share_through(directory: Path) -> None:
    """Harness processes that name the same directory share one zygote (the pytest-xdist workers of one run).

    The first to need it starts it, listening on a Unix socket in a private (0700) directory whose path it writes
    into ``directory`` (created 0700; the plugin names one per xdist run in the temp dir); the others connect.
    One ``import torch`` fewer per worker, on the cores the workers' own start-up fights over (about half a
    second of a two-worker suite on a 2-core box).
    """
    global _SHARE_DIR
    _SHARE_DIR = Path(directory)


def share_dir() -> Path | None:
    """The directory named by ``share_through``, if any."""
    return _SHARE_DIR


def shared() -> Zygote:
    """The one zygote of this harness process (started, or joined, on first use)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED._dead:
            _SHARED = _join_or_start(_SHARE_DIR)
            import atexit

            atexit.register(_SHARED.close)
        _SHARED.start()
        return _SHARED


def spawn(**request) -> int:
    """``shared().spawn(**request)``; once more, from a fresh zygote, when the one joined went before it answered
    (a worker joining just as the last other one left)."""
    forker = shared()
    try:
        return forker.spawn(**request)
    except ZygoteError:
        if forker._conn is None or forker.greeted:
            raise
    return shared().spawn(**request)


def _join_or_start(directory: Path | None, preload: tuple[str, ...] = PRELOAD) -> Zygote:
    """Join the zygote another process of this run started, or start one that others can join."""
    if directory is None:
        return Zygote(preload)
    while True:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = (directory / LOCK_FILE).open("a")
        except OSError:
            return Zygote(preload)
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter; the others find its address
            if _still_named(lock, directory / LOCK_FILE):
                return _join_or_start_locked(directory, preload)
            # A zygote on its way out removed the directory while we waited for its lock: start over.


def leave_share_dir(directory: Path, sock: str) -> None:
    """Remove the share directory unless a newer zygote's address is in it, under the joiners' lock.

    Called by the zygote on its way out (its starter may have been killed before its own ``close``) and by
    the starter's ``close``. A joiner that waited for the lock meanwhile holds an unlinked lock file:
    ``_join_or_start`` sees that and starts over, with a fresh directory."""
    path = directory / LOCK_FILE
    try:
        lock = path.open("a")
    except OSError:  # gone already
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _still_named(lock, path):
            return  # removed while we waited, and made anew: a newer zygote's directory
        try:
            if (directory / ADDRESS_FILE).read_text() != sock:
                return
        except OSError:
            pass
        for name in (ADDRESS_FILE, _ADDRESS_TMP, LOCK_FILE):
            try:
                (directory / name).unlink()
            except OSError:
                pass
        try:
            directory.rmdir()
        except OSError:
            pass


def _still_named(lock, path: Path) -> bool:
    """True when the open ``lock`` is still the file at ``path`` (not removed, not made anew)."""
    try:
        return os.path.samestat(os.fstat(lock.fileno()), os.stat(path))
    except OSError:
        return False


def _join_or_start_locked(directory: Path, preload: tuple[str, ...]) -> Zygote:
    """``_join_or_start`` holding the directory's lock."""
    address = directory / ADDRESS_FILE
    try:
        return Zygote.connect(address.read_text())
    except OSError:  # none yet, or gone (its last client left): start one
        pass
    private = tempfile.mkdtemp(prefix="harness-zygote-")  # 0700: nobody else can ask it to fork
    listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listen.bind(os.path.join(private, "sock"))
        listen.listen(16)  # joiners queue here until the zygote's loop starts (torch imported)
    except OSError:  # a TMPDIR too long for a socket path, say: this process gets one of its own
        listen.close()
        os.rmdir(private)
        return Zygote(preload)
    zygote = Zygote(preload, listen=listen)
    zygote.share_dir, zygote.share_sock = directory, os.path.join(private, "sock")
    zygote.start()
    tmp = directory / _ADDRESS_TMP
    tmp.write_text(zygote.share_sock)
    tmp.replace(address)
    return zygote
