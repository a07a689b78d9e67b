"""The crash-only contract: one ``TP-FATAL`` line, the abort key, ``os._exit``.

No rank limps on after a fatal error and none waits on a peer that is gone:
the detecting rank writes ``tp/abort`` so every peer's watchdog learns of it
within one poll interval and exits with ``PEER_ABORT`` naming the cause.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import sys
import threading
from datetime import timedelta

import torch.distributed as dist

from tp import codes, flight, log

ABORT_KEY = "tp/abort"
_ABORT_CLAIM = "tp/abort_claims"


class Fatal(Exception):
    """Raised inside a rank; ``die`` turns it into the crash-only exit."""

    def __init__(self, code: str, detail: str, *, cause_rank: int | None = None, fm: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        codes.code(code)
        self.code, self.detail, self.cause_rank, self.fm = code, detail, cause_rank, fm


class Crash:
    """Where this rank is (for the fatal line) and how it dies."""

    def __init__(self, *, rank: int) -> None:
        self.rank = rank
        self.chunk = -1
        self.call_id = -1
        self.store: dist.Store | None = None
        self._lock = threading.Lock()

    def die(self, fatal: Fatal, *, dump_stack: bool = False) -> None:
        """Print the fatal line, publish the abort (first writer wins), exit. Never returns."""
        entry = codes.code(fatal.code)
        with self._lock:  # one fatal line per rank even if the watchdog races the main thread
            try:
                fm = fatal.fm or entry.fm
                print(log.fatal_line(fm=fm, code=fatal.code, rank=self.rank, call_id=self.call_id, chunk=self.chunk,
                                     detail=fatal.detail, cause_rank=fatal.cause_rank), flush=True)
                if fatal.code != "PEER_ABORT":  # a follower never claims to be the cause
                    self._publish(fatal, fm)
                if dump_stack:
                    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                flight.dump(f"TP-FATAL {fatal.code}")
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
                   "call_id": self.call_id, "detail": fatal.detail}
        try:
            if self.store.add(_ABORT_CLAIM, 1) == 1:
                self.store.set(ABORT_KEY, json.dumps(payload))
        except Exception as exc:  # the store may be gone too; exiting matters more
            log.info(f"could not publish abort: {exc}")


def read_abort(store: dist.Store) -> dict | None:
    """The published abort, if any (non-blocking)."""
    try:
        if not store.check([ABORT_KEY]):
            return None
        store.set_timeout(timedelta(seconds=2))
        return json.loads(store.get(ABORT_KEY))
    except Exception:
        return None


def peer_abort(abort: dict) -> Fatal:
    return Fatal("PEER_ABORT", f"rank {abort['rank']} died with {abort['code']}: {abort['detail']}",
                 cause_rank=abort["rank"], fm=abort.get("fm"))


def publish_identity(store: dist.Store, rank: int) -> None:
    """``tp/pid/{rank}`` = "host pid": lets a peer tell *which* rank vanished."""
    store.set(f"tp/pid/{rank}", f"{socket.gethostname()} {os.getpid()}")


def gone_peers(store: dist.Store, *, rank: int, world_size: int) -> list[int]:
    """Peers on this host whose process no longer runs (exited, killed, or a zombie)."""
    host, gone = socket.gethostname(), []
    for peer in range(world_size):
        if peer == rank:
            continue
        try:
            if not store.check([f"tp/pid/{peer}"]):
                continue
            peer_host, pid = store.get(f"tp/pid/{peer}").decode().split()
        except Exception:
            continue
        if peer_host == host and not _running(int(pid)):
            gone.append(peer)
    return gone


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
