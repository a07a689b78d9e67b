"""The ranks' stores, served by a process the zygote forks: a harness on the zygote path never imports torch.

Serving each run's ``TCPStore`` in the harness process cost every
pytest-xdist worker its own ``import torch`` (1.2 to 2 CPU-seconds on a 2-core
box, raced against the zygote's own before the first scenario, and 0.4 s of
teardown at the worker's exit). The zygote has torch imported already, so it
forks one store host per harness process, as it forks a rank; the host serves
one ``TCPStore`` per launch (its own port and keys, dropped when the launch
closes), and the harness reads the keys it watches through it.

Protocol, one JSON line each way over a Unix socket in the abstract namespace
(nothing on disk to clean up) that the harness listens on and the host joins::

    host    -> harness  {"ready": true}
    harness -> host     {"op": "open", "host": ADDR}       -> {"id": K, "port": N} | {"error": "..."}
    harness -> host     {"op": "read", "id": K, "keys": [KEY, ...]}
                                                            -> {"values": {KEY: VALUE}}  (keys that exist, latin-1)
    harness -> host     {"op": "close", "id": K}           -> {}

Every request also carries ``"n"``, its number, and its answer repeats it.
The harness accepts only the pid the zygote forked (``SO_PEERCRED``). The host
exits when the harness's end closes (at its exit, or when it dies: the zygote
kills a leaving client's children too) and with the zygote
(``PR_SET_PDEATHSIG``, set for every fork). A launch closes its store after
its last rank is gone.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

CALL_LIMIT_S = 2.0
"""How long one call may take before the harness gives the host up (starved on a busy box: no rank can freeze it)."""
START_S = 30.0
"""How long a forked host may take to say ready (a fork and a socket: milliseconds, unless the box is starved)."""

RES_OPTIONS = "timeout:1 attempts:1"
"""The resolver options of the store host and of the ranks the harness starts, unless its env sets its own
(glibc reads ``RES_OPTIONS``).

c10d names every store connection it opens by a reverse lookup of the peer (``getnameinfo`` of
``::ffff:127.0.0.1``, which /etc/hosts does not list), so a new TCPStore, or a rank joining one, asks DNS.
On a box whose resolver drops a query, glibc's default (5 s, two tries) stalled it 5 s: 4 of the bench's
700 time-to-crash runs, and 2 of 150 store opens. A lookup that fails only leaves the name numeric, and
one second is the least glibc waits."""


class HostError(RuntimeError):
    """The store host did not start serving."""


def host_store(tcp_store, host: str):
    """The rendezvous store, served from an IPv4-only socket on ``host``.

    Left to itself the store listens dual-stack, so every rank's connection
    arrives as ``::ffff:127.0.0.1``; c10d names each accepted peer with
    ``getnameinfo``, and /etc/hosts has no entry for that mapped form, so each
    accept costs a reverse-DNS query, and a dropped one stalls that rank's
    store connect for the resolver's 5 s timeout. An IPv4 peer is answered
    from /etc/hosts. (The ranks' own lookup of the server, client side, is
    c10d's and stays.) The libuv store takes over a listening socket from
    torch 2.8 on; with older versions it listens as before.
    """
    if not _store_takes_listen_fd():
        return tcp_store(host, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, 0))
        port = listener.getsockname()[1]
    except OSError:
        listener.close()
        raise
    # The store owns the socket from here on (it closes it), hence detach().
    return tcp_store(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30),
                     master_listen_fd=listener.detach())


def _store_takes_listen_fd() -> bool:
    """True when TCPStore's default (libuv) server accepts ``master_listen_fd`` (torch >= 2.8)."""
    import torch

    version = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return version is not None and (int(version[1]), int(version[2])) >= (2, 8)


# ---------------------------------------------------------------- harness side

class _Host:
    """The harness's connection to its host; calls are serialised and bounded by ``CALL_LIMIT_S``.

    A call that runs out of time fails alone: its answer, when it comes, is told apart by its number and
    dropped, so one slow moment of a starved host does not take every concurrent launch's store with it.
    """

    def __init__(self, conn: socket.socket, pid: int, log) -> None:
        self.pid, self._log = pid, log
        self._conn, self._buf = conn, b""
        self._calls = itertools.count(1)
        self._lock = threading.Lock()
        self.dead: str | None = None
        self.lost: str | None = None
        """Why the host process ended while this harness still used it (set by ``exited``), else None."""

    def call(self, request: dict, limit_s: float = CALL_LIMIT_S) -> dict:
        with self._lock:
            if self.dead:
                raise TimeoutError(self.dead)
            number = next(self._calls)
            give_up_at = time.monotonic() + limit_s
            try:
                self._conn.settimeout(limit_s)
                self._conn.sendall(json.dumps({**request, "n": number}).encode() + b"\n")
                while True:
                    line = self._line(give_up_at)
                    reply = json.loads(line) if line else None
                    if not isinstance(reply, dict) or reply.get("n") in (number, None):
                        break  # older numbers: answers to calls that gave up, dropped
            except TimeoutError:
                raise TimeoutError(f"the store host (pid {self.pid}) did not answer within {limit_s:g} s") from None
            except OSError as exc:
                line, self.dead = b"", f"the store host (pid {self.pid}) stopped answering: {exc}"
            except ValueError:
                self.dead = f"the store host (pid {self.pid}) answered {line[:200]!r}"
                self.close()
                raise TimeoutError(self.dead) from None
            if not line:
                self.dead = (self.dead or f"the store host (pid {self.pid}) is gone") + _tail(self._log)
                self.close()
                raise TimeoutError(self.dead)
        if not isinstance(reply, dict):
            raise HostError(f"the store host (pid {self.pid}) answered {line[:200]!r}")
        if "error" in reply:
            raise HostError(f"the store host (pid {self.pid}): {reply['error']}{_tail(self._log)}")
        return reply

    def exited(self, code: int | None, mono: float | None) -> None:
        """The zygote saw the host process end.

        Called on the zygote's reader thread, before the exit of any rank the loss made fail: a supervisor
        that checks ``HostedStore.lost`` after taking a rank's exit never mistakes them for the TP path's.
        ``mono`` None means the zygote itself went: each rank's own "lost" event says so, more precisely."""
        if self.dead == "closed" or mono is None:  # we ended it, or the zygote's loss is reported per rank
            return
        self.lost = f"the store host (pid {self.pid}) exited ({code}) while the ranks used its store{_tail(self._log)}"

    def _line(self, give_up_at: float) -> bytes:
        """The next line from the host (b"" at its EOF); TimeoutError at ``give_up_at``, nothing lost by it."""
        while b"\n" not in self._buf:
            self._conn.settimeout(max(0.001, give_up_at - time.monotonic()))
            data = self._conn.recv(65536)
            if not data:
                return b""
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def close(self, *, kill: bool = False) -> None:
        """The host exits when it reads our end's EOF; ``kill``: one that stopped reading (stuck, stopped) is
        killed, with its session, instead of living on beside its successor until the zygote goes."""
        self.dead = self.dead or "closed"
        for end in (self._conn, self._log):
            try:
                end.close()
            except OSError:
                pass
        if kill:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the zygote made it a session leader; it reaps it
            except OSError:  # gone already
                pass


class HostedStore:
    """One launch's store, served by the host: ``read`` (one round trip), ``check`` and ``get`` as a c10d store's."""

    def __init__(self, host: _Host, sid: int, port: int) -> None:
        self._host, self._sid, self.port = host, sid, port
        self._closed = False

    def lost(self) -> str | None:
        """Why this store stopped serving before its launch closed it (its host process ended), else None."""
        return None if self._closed else self._host.lost

    def read(self, keys: list[str]) -> dict[str, bytes]:
        """The value of each of ``keys`` that exists."""
        values = self._host.call({"op": "read", "id": self._sid, "keys": list(keys)})["values"]
        return {k: v.encode("latin-1") for k, v in values.items()}

    def check(self, keys: list[str]) -> bool:
        return len(self.read(keys)) == len(set(keys))

    def get(self, key: str) -> bytes:
        values = self.read([key])
        if key not in values:
            raise KeyError(key)
        return values[key]

    def close(self) -> None:
        """Drop the store (its port closes); the host stays for the next launch."""
        self._closed = True
        try:
            self._host.call({"op": "close", "id": self._sid})
        except (TimeoutError, HostError):
            pass


_HOST: _Host | None = None
_HOST_LOCK = threading.Lock()


def open_store(spawn: Callable[..., int], host: str) -> HostedStore:
    """A fresh store on ``host`` for one launch, from this process's store host (forked by ``spawn``,
    ``zygote.spawn``, on first use, and again if the one before went). Raises HostError."""
    global _HOST
    with _HOST_LOCK:
        for attempt in (1, 2):
            if _HOST is None or _HOST.dead:
                _HOST = _start(spawn)
            try:
                # A new TCPStore may wait out a resolver stall (5 s measured): a slow open must not end the
                # host, and with it every other launch's store.
                reply = _HOST.call({"op": "open", "host": host}, limit_s=START_S)
                return HostedStore(_HOST, int(reply["id"]), int(reply["port"]))
            except TimeoutError as exc:  # it went (its zygote went, or it was killed), or is stuck: one fresh try
                if not _HOST.dead:  # silent for START_S: ending it also drops the store it may yet have opened
                    _HOST.dead = f"{exc}; given up"
                    _HOST.close(kill=True)
                if attempt == 2:
                    raise HostError(str(exc)) from None
    raise AssertionError("unreachable")


def close_host() -> None:
    """End this process's host (it exits at our EOF); the next ``open_store`` forks a new one."""
    global _HOST
    with _HOST_LOCK:
        if _HOST is not None:
            _HOST.close()
            _HOST = None


def _start(spawn: Callable[..., int]) -> _Host:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"tp-breakit-store-{os.getpid()}-{secrets.token_hex(8)}"
    # Its stderr: a file the host opens by name, unlinked once it has (nothing is left on disk, whatever ends
    # this process); what it says is quoted in the errors that need it.
    fd, path = tempfile.mkstemp(prefix="harness-store-host-", suffix=".log")
    log = os.fdopen(fd, "rb")
    gone: list[int | None] = []
    started: list[_Host] = []
    wake_r, wake_w = socket.socketpair()

    def on_exit(_pid: int, code: int | None, mono: float | None) -> None:
        if started:  # it served: the launches using it must learn it went
            started[0].exited(code, mono)
            return
        gone.append(code)
        try:
            wake_w.send(b"x")  # the host will never join: stop waiting for it
        except OSError:
            pass

    try:
        listener.bind("\0" + name)
        listener.listen(1)
        pid = spawn(module=__name__, argv=[name], env={"RES_OPTIONS": RES_OPTIONS, **os.environ}, cwd=str(Path(__file__).resolve().parents[2]),
                    log=path, on_exit=on_exit)
        conn = _accept(listener, wake_r, pid, gone, log)
    except BaseException:
        log.close()
        raise
    finally:
        os.unlink(path)
        for sock in (listener, wake_r, wake_w):
            sock.close()
    host = _Host(conn, pid, log)
    started.append(host)
    try:
        ready = json.loads(host._line(time.monotonic() + START_S) or b"{}")
    except (OSError, ValueError):
        ready = {}
    if not ready.get("ready"):
        why = f"the store host (pid {pid}) did not say ready within {START_S:g} s{_tail(log)}"
        host.close()
        raise HostError(why)
    return host


def _accept(listener: socket.socket, wake: socket.socket, pid: int, gone: list, log) -> socket.socket:
    give_up_at = time.monotonic() + START_S
    while True:
        ready, _, _ = select.select([listener, wake], [], [], max(0.0, give_up_at - time.monotonic()))
        if listener not in ready:
            why = f"exited ({gone[0]})" if gone else f"did not connect within {START_S:g} s"
            raise HostError(f"the store host (pid {pid}) {why}{_tail(log)}")
        conn, _ = listener.accept()
        peer_pid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
        if peer_pid == pid:
            return conn
        conn.close()  # someone else found the name: not ours to serve


def _tail(log, limit: int = 600) -> str:
    """``; it said: ...`` with the end of what the host wrote to its stderr, or "" when it said nothing."""
    try:
        os.lseek(log.fileno(), max(0, os.fstat(log.fileno()).st_size - limit), os.SEEK_SET)
        said = os.read(log.fileno(), limit).decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""
    return f"; it said: {' | '.join(line.strip() for line in said.splitlines() if line.strip())}" if said else ""


# ---------------------------------------------------------------- host side

def _serve(name: str) -> int:
    from torch.distributed import TCPStore

    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect("\0" + name)
    wfile, rfile = conn.makefile("wb"), conn.makefile("rb")
    stores: dict[int, object] = {}
    ids = itertools.count(1)  # never reused: a closed launch's id cannot reach a newer launch's store
    reply: dict = {"ready": True}
    for line in itertools.chain((b"",), rfile):
        if line:
            number = None
            try:
                req = json.loads(line)
                number = req.get("n")
                reply = _answer(req, stores, ids, TCPStore)
            except Exception as exc:  # noqa: BLE001 - one bad request or store error must not end every launch's store
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            reply["n"] = number  # the harness drops answers to calls it gave up on
        wfile.write(json.dumps(reply).encode() + b"\n")
        wfile.flush()
    return 0


def _answer(req: dict, stores: dict, ids: itertools.count, tcp_store) -> dict:
    op = req.get("op")
    if op == "open":
        try:
            store = host_store(tcp_store, req["host"])
        except Exception as exc:  # noqa: BLE001 - the harness says why
            print(f"store host: cannot serve a store: {type(exc).__name__}: {exc}", file=sys.stderr)
            return {"error": f"cannot serve a store: {type(exc).__name__}: {exc}"}
        sid = next(ids)
        stores[sid] = store
        return {"id": sid, "port": store.port}
    store = stores.get(req.get("id"))
    if op == "close":
        stores.pop(req.get("id"), None)
        return {}
    if op == "read" and store is not None:
        return {"values": {k: store.get(k).decode("latin-1") for k in req["keys"] if store.check([k])}}
    return {"error": f"bad request {req!r}"}


if __name__ == "__main__":
    code = _serve(sys.argv[1])
    sys.stderr.flush()
    os._exit(code)  # the stores' threads may still hold a rank's connection: no interpreter teardown
