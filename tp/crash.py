"""The crash-only contract: one ``TP-FATAL`` line, the abort key, ``os._exit``.

No rank limps on after a fatal error and none waits on a peer that is gone:
the detecting rank writes ``tp/abort`` so every peer's watchdog learns of it
within one poll interval and exits with ``PEER_ABORT`` naming the cause.

Every rank leaving on a fatal path also writes ``tp/exit/{rank}``. A rank that
serves the store itself (rank 0 under an srun/mpirun-style launch) lingers
until each peer has left or is gone, bounded by ``HOST_LINGER_S``: the store
dies with its process, and a peer that had not yet read ``tp/abort`` would
otherwise learn only "store unreachable", not the cause.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

from tp import codes, flight, log, signals

ABORT_KEY = "tp/abort"
_ABORT_CLAIM = "tp/abort_claims"
HOST_LINGER_S = 3.0
"""How long a store-hosting rank waits on its fatal path for peers to leave first."""


def exit_key(rank: int) -> str:
    return f"tp/exit/{rank}"


def done_key(rank: int) -> str:
    return f"tp/done/{rank}"


class Fatal(Exception):
    """Raised inside a rank; ``die`` turns it into the crash-only exit."""

    def __init__(self, code: str, detail: str, *, cause_rank: int | None = None, fm: str | None = None,
                 publish: bool = True) -> None:
        super().__init__(f"{code}: {detail}")
        codes.code(code)
        self.code, self.detail, self.cause_rank, self.fm = code, detail, cause_rank, fm
        self.publish = publish
        """False when ``cause_rank`` publishes this very abort itself (a verdict it wrote): the race to the
        abort key is then left to it, so followers name it, not whichever rank read its verdict first."""


class Crash:
    """Where this rank is (for the fatal line) and how it dies."""

    def __init__(self, *, rank: int, world_size: int = 1) -> None:
        self.rank, self.world_size = rank, world_size
        self.chunk = -1
        self.call_id = -1
        self.store: dist.Store | None = None
        self.hosts_store = False
        """True when this process serves the store: its exit takes the store down for every rank."""
        self._lock = threading.Lock()

    def hold(self, *, within_s: float) -> bool:
        """Take the fatal-exit lock; True when taken, False after ``within_s``.

        ``die`` never releases it, so taking it means no fatal exit is under way, and none can start after:
        for ending the process some other way (a SIGTERM) without cutting a ``TP-FATAL`` exit short.
        """
        return self._lock.acquire(timeout=within_s)

    def die(self, fatal: Fatal, *, dump_stack: bool = False, via: dist.Store | None = None) -> None:
        """Print the fatal line, publish the abort (first writer wins), exit. Never returns.

        ``via``: the store connection to publish through instead of ``self.store``. A c10d client runs one
        call at a time, so the main thread's connection is taken for as long as its blocking call lasts (a
        handshake ``wait``): the watchdog publishes through its own.
        """
        entry = codes.code(fatal.code)
        with self._lock:  # one fatal line per rank even if the watchdog races the main thread
            if via is not None:
                self.store = via
            try:
                fm = fatal.fm or entry.fm
                print(log.fatal_line(fm=fm, code=fatal.code, rank=self.rank, call_id=self.call_id, chunk=self.chunk,
                                     detail=fatal.detail, cause_rank=fatal.cause_rank), flush=True)
                if fatal.code != "PEER_ABORT" and fatal.publish:  # a follower never claims to be the cause
                    self._publish(fatal, fm)
                if dump_stack:
                    signals.dump_stacks()
                flight.dump(f"TP-FATAL {fatal.code}")
                self._leave(fatal.cause_rank)
                log.event("exit", rank=self.rank, code=fatal.code, exit=entry.exit)
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                # Even if the log is gone (a closed pipe), the exit must happen.
                os._exit(entry.exit)

    def _publish(self, fatal: Fatal, fm: str) -> None:
        if self.store is None:
            return
        payload = {"code": fatal.code, "fm": fm, "rank": self.rank, "chunk": self.chunk,
                   "call_id": self.call_id, "detail": fatal.detail, "pid": os.getpid()}
        try:
            if self.store.add(_ABORT_CLAIM, 1) == 1:
                self.store.set(ABORT_KEY, json.dumps(payload))
        except Exception as exc:  # the store may be gone too; exiting matters more
            log.info(f"could not publish abort: {exc}")

    def _leave(self, lost: int | None) -> None:
        if self.store is None:
            return
        try:
            self.store.set(exit_key(self.rank), "1")
            if self.hosts_store:  # a peer already known lost will not leave: do not wait for it
                wait_for_peers(self.store, rank=self.rank, world_size=self.world_size, keys=(exit_key, done_key),
                               within_s=HOST_LINGER_S, skip=lost)
        except Exception as exc:
            log.info(f"could not mark this rank's exit: {exc}")


def wait_for_peers(store: dist.Store, *, rank: int, world_size: int, keys, within_s: float,
                   skip: int | None = None) -> list[int]:
    """Wait until each peer has written one of ``keys(peer)`` or its process is gone or frozen; return the stragglers.

    Bounded by ``within_s``: a peer blocked with no watchdog never writes, and must not keep this rank alive.
    """
    deadline_at = time.monotonic() + within_s
    pending = [r for r in range(world_size) if r not in (rank, skip)]
    tick = threading.Event()
    while True:
        gone = set(gone_peers(store, rank=rank, world_size=world_size, stopped=True))
        pending = [p for p in pending if p not in gone and not any(store.check([k(p)]) for k in keys)]
        if not pending or time.monotonic() >= deadline_at:
            return pending
        tick.wait(0.02)


def lost_peer(text: str) -> bool:
    """True when a collective's error says the other end went (gloo's words for a peer that died or closed)."""
    return any(word in text for word in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def from_another(abort: dict | None, rank: int) -> bool:
    """True for an abort another process published: another rank, or this rank number claimed by a second process."""
    return abort is not None and (abort.get("rank") != rank or abort.get("pid", os.getpid()) != os.getpid())


def read_abort(store: dist.Store) -> dict | None:
    """The published abort, if any (non-blocking)."""
    try:
        if not store.check([ABORT_KEY]):
            return None
        store.set_timeout(timedelta(seconds=2))
        return json.loads(store.get(ABORT_KEY))
    except Exception:
        return None


def lost_fm(rank: int | None, driver_rank: int) -> str:
    """Losing the driver is FM-13, losing a worker FM-14."""
    return "FM-13" if rank == driver_rank else ("FM-14" if rank is not None else "none")


def peer_abort(abort: dict) -> Fatal:
    return Fatal("PEER_ABORT", f"rank {abort['rank']} died with {abort['code']}: {abort['detail']}",
                 cause_rank=abort["rank"], fm=abort.get("fm"))


def publish_identity(store: dist.Store, rank: int) -> None:
    """``tp/pid/{rank}`` = "host pid": lets a peer tell *which* rank vanished."""
    store.set(f"tp/pid/{rank}", f"{_process_space()} {os.getpid()}")


def _process_space() -> str:
    """Where a pid means this process: the host name and the pid namespace (containers may share a host name).

    Peers whose pids live in another namespace cannot be looked up in /proc here, and must never look gone.
    """
    try:
        return f"{socket.gethostname()}/pidns:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return socket.gethostname()


def gone_peers(store: dist.Store, *, rank: int, world_size: int, stopped: bool = False) -> list[int]:
    """Peers on this host whose process no longer runs (exited, killed, or a zombie; with ``stopped``, also frozen)."""
    host, gone = _process_space(), []
    for peer in range(world_size):
        if peer == rank:
            continue
        try:
            if not store.check([f"tp/pid/{peer}"]):
                continue
            peer_host, pid = store.get(f"tp/pid/{peer}").decode().split()
        except Exception:
            continue
        if peer_host == host and not _running(int(pid), dead_states=("Z", "X", "T") if stopped else ("Z", "X")):
            gone.append(peer)
    return gone


def _running(pid: int, dead_states: tuple[str, ...]) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in dead_states
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
