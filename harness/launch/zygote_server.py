"""The zygote's server side: ``python -m harness.launch.zygote_server PRELOAD [LISTEN_FD [SHARE_DIR]]``.

See ``harness.launch.zygote`` for what the zygote is and its protocol. Its first
client is the harness that started it, over the zygote's stdin/stdout. With a
listening Unix socket passed as ``LISTEN_FD`` (pytest-xdist workers sharing one
zygote: one ``import torch`` fewer per worker), more clients connect there; each
gets its own ``ready`` and the exits of the ranks it asked for. ``SHARE_DIR`` is
where its address is published (``harness.launch.zygote.share_through``);
the zygote removes it on its way out when it still names this zygote, so that a
starter killed before its own clean-up (SIGKILL, an OOM kill) leaves nothing in
the temp dir.

A client that goes (its stream closes: it exited or died) takes its ranks with
it: the zygote kills them (their process groups) and reaps them. The zygote
exits once its last client has gone, killing whatever is still alive.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from harness.launch import lifetime, warm
from harness.launch.zygote import leave_share_dir

KILL_WAIT_S = 5.0
"""How long the last client's exit waits for the killed children to be reaped before the zygote goes anyway."""


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
    """The last client is gone: kill every child, its process group and its descendants (orphans included)."""
    import psutil

    procs = psutil.Process().children(recursive=True)
    _kill(pids, procs)
    watched = {}
    for proc in procs:
        try:
            watched[os.pidfd_open(proc.pid)] = proc.pid
        except OSError:  # gone already
            pass
    give_up_at = time.monotonic() + KILL_WAIT_S  # a child stuck in the kernel (D state) must not keep us here
    while watched and time.monotonic() < give_up_at:
        readable, _, _ = select.select(list(watched), [], [], max(0.0, give_up_at - time.monotonic()))
        for fd in readable:
            pid = watched.pop(fd)
            os.close(fd)
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours (a rank's descendant) or reaped already
                pass


def _kill_groups(pids: list[int]) -> None:
    """One client is gone: kill its ranks, their process groups and their descendants (snapshotted first: a
    grandchild in a session of its own is reparented here only once its parent dies)."""
    import psutil

    procs = []
    for pid in pids:
        try:
            procs += psutil.Process(pid).children(recursive=True)
        except psutil.Error:
            pass
    _kill(pids, procs)


def _kill(groups: list[int], procs: list) -> None:
    """SIGCONT then SIGKILL to each process group in ``groups`` and each psutil process in ``procs``."""
    import psutil

    for sig in (signal.SIGCONT, signal.SIGKILL):
        for pid in groups:
            try:
                os.killpg(pid, sig)
            except OSError:
                pass
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.Error:
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


class _Client:
    """One connection: where its requests come from and where its answers go."""

    def __init__(self, rfd: int, send, conn: socket.socket | None = None) -> None:
        self.rfd = rfd
        self.send = send
        self.conn = conn
        self.buf = b""
        self.ranks: set[int] = set()


def _pipe_send(data: bytes) -> None:
    os.write(1, data)  # lines are far under PIPE_BUF: one write, never torn


def _reply(client: _Client, line: str) -> None:
    try:
        client.send(line.encode() + b"\n")
    except OSError:  # gone: its stream's EOF says so on the next select
        pass


def serve(preload: list[str], listen_fd: int | None = None, share_dir: str | None = None) -> None:
    """The zygote's main loop (``python -m harness.launch.zygote_server torch,... [LISTEN_FD [SHARE_DIR]]``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lifetime.become_subreaper()
    for name in preload:
        __import__(name)
    listener = socket.socket(fileno=listen_fd) if listen_fd is not None else None
    if listener is not None:
        os.set_inheritable(listen_fd, False)  # pass_fds made it so: nothing we exec may keep it accepting
    zygote_pid = os.getpid()
    clients = {0: _Client(0, _pipe_send)}
    _reply(clients[0], "ready")
    children: dict[int, tuple[int, _Client]] = {}  # pidfd -> (pid, the client that asked for it)
    orphans: dict[int, int] = {}  # pidfd -> pid, for what ranks left behind
    warmed: dict[str, tuple[str, ...]] = {}  # package -> the paths its ZYGOTE_PRELOAD was imported from
    while clients:
        readable, _, _ = select.select(_fds(clients, children, orphans, listener), [], [])
        for fd in readable:
            if fd in orphans:  # its own children, if any, are ours now
                _reap(orphans.pop(fd), fd)
                _kill_orphans({pid for pid, _ in children.values()}, orphans)
            elif fd in children:
                pid, client = children.pop(fd)
                code = _reap(pid, fd)
                client.ranks.discard(pid)
                if clients.get(client.rfd) is client:  # the harness learns of the exit before the scan for what the rank left
                    _reply(client, f"exit {pid} {code} {time.monotonic():.6f}")
                _kill_orphans({pid for pid, _ in children.values()}, orphans)
            elif listener is not None and fd == listener.fileno():
                _accept(listener, clients)
            elif fd in clients:
                _read_client(clients, clients[fd], children, orphans, zygote_pid, warmed, listener)
                if not clients and listener is not None:  # no one may join a zygote on its way out
                    _close_listener(listener, share_dir)
                    listener = None
    if listener is not None:  # the last client left another way (a failed reply)
        _close_listener(listener, share_dir)
    _kill_all([pid for pid, _ in children.values()])
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown with torch loaded: 0.4 s off every harness exit


def _fds(clients: dict, children: dict, orphans: dict, listener: socket.socket | None) -> list[int]:
    """Every descriptor the loop waits on (and a forked rank must not keep)."""
    return [*clients, *children, *orphans, *([listener.fileno()] if listener is not None else [])]


def _accept(listener: socket.socket, clients: dict[int, _Client]) -> None:
    try:
        conn, _ = listener.accept()
    except OSError:  # the joiner gave up already, or no fd left: it sees no "ready" and starts its own
        return
    conn.setblocking(True)
    clients[conn.fileno()] = client = _Client(conn.fileno(), conn.sendall, conn)
    _reply(client, "ready")


def _close_listener(listener: socket.socket, share_dir: str | None) -> None:
    """Stop accepting; its socket and private directory (``harness.launch.zygote._join_or_start``) go too, and the
    share directory while it still names this zygote."""
    sock = path = listener.getsockname()
    listener.close()  # a joiner still queued is reset: it starts a zygote of its own
    for remove in (os.unlink, os.rmdir):
        try:
            remove(path)
        except OSError:
            pass
        path = os.path.dirname(path)
    if share_dir:
        leave_share_dir(Path(share_dir), sock)


def _read_client(clients: dict[int, _Client], client: _Client, children: dict, orphans: dict, zygote_pid: int,
                 warmed: dict, listener: socket.socket | None) -> None:
    """One read from a client: fork what it asks for, or, at its EOF, kill its ranks."""
    try:
        data = os.read(client.rfd, 65536)
    except OSError:
        data = b""
    if not data:
        _drop(clients, client)
        return
    client.buf += data
    *lines, client.buf = client.buf.split(b"\n")
    for line in lines:
        req = None
        try:
            req = json.loads(line)
            rid = req["id"]
            warm.preload(req["module"], _rank_paths(req), warmed)
        except BaseException as exc:  # noqa: BLE001 - one client's bad request must not end everyone's ranks
            _reply(client, f"error {req.get('id', -1) if isinstance(req, dict) else -1} bad request: {exc!r}")
            _drop(clients, client)  # it speaks another protocol: its pending requests would wait forever
            return
        try:
            pid = os.fork()
        except OSError as exc:
            _reply(client, f"error {rid} fork failed: {exc}")
            continue
        if pid == 0:
            fds = _fds(clients, children, orphans, listener)
            _child(req, [fd for fd in fds if fd not in (0, 1, 2)], zygote_pid, warmed)
        try:
            children[os.pidfd_open(pid)] = (pid, client)
        except OSError as exc:  # no fd left to watch it by: it cannot be reported, so it must not run
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            _reply(client, f"error {rid} cannot watch the fork: {exc}")
            continue
        client.ranks.add(pid)
        _reply(client, f"spawned {rid} {pid}")


def _drop(clients: dict[int, _Client], client: _Client) -> None:
    """A client is gone (or speaks nonsense): its ranks go with it."""
    del clients[client.rfd]
    if clients:  # the last one's ranks go with the zygote's own exit, descendants and all
        _kill_groups(sorted(client.ranks))
    if client.conn is not None:
        client.conn.close()
    elif client.rfd == 0:  # the starter: close our end of its pipe so its reader ends now, not at our exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def _reap(pid: int, fd: int) -> int:
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    serve([name for name in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if name],
          int(sys.argv[2]) if len(sys.argv) > 2 else None, sys.argv[3] if len(sys.argv) > 3 else None)
