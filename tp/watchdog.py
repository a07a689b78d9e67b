"""The watchdog thread: heartbeats, the abort key, peer liveness, progress.

It has its own store connection (the main thread may be blocked inside a
collective holding nothing but a socket). Each poll it beats, checks
``tp/abort``, checks every peer's heartbeat counter moved within that peer's
adaptive timeout (``tp.liveness``: learnt from the gaps between its beats,
between ``peer_timeout_min_s`` and ``peer_timeout_s``; clock-free: counters,
not timestamps, so it works across hosts), and checks the main thread has not been busy without progress for
``progress_timeout_s``.

A second, store-free thread watches the first: c10d's store client blocks
for as long as a *stopped* server holds its connection (``set_timeout`` does
not bound ``add``/``check``), so when the rank serving the store freezes
(rank 0 under an srun-style launch) the watchdog would freeze with it. The
sentinel notices that the watchdog's polls stopped completing and exits.

Where the main thread is stuck decides who is to blame. A rank stuck in
Python (outside any collective) is the cause: it dies at the progress
deadline. Its peers sit in a collective waiting for it, just as long without
progress; they get twice the deadline, so the stuck rank is the one that
publishes the abort and is named as the cause. When every rank waits in a
collective (a real desync) they still die, at twice the deadline.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import timedelta

import torch.distributed as dist

from tp import handshake
from tp.crash import Crash, Fatal, done_key, exit_key, from_another, gone_peers, lost_fm, peer_abort, read_abort
from tp.liveness import Arrivals

TERMINATING_HOLD_S = 0.5
"""How long a SIGTERMed rank holds a peer's abort for the handshake verdict its main thread is reading."""

_COLLECTIVES = os.path.join("torch", "distributed", "")


def in_collective(frame) -> bool:
    """True when ``frame``'s stack is inside torch.distributed (blocked in a collective on gloo).

    NCCL collectives return at once and the wait happens later in a CUDA sync, so there a waiting
    rank counts as busy in Python and the first rank past the deadline is blamed, as without this.
    """
    while frame is not None:
        if _COLLECTIVES in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def in_handshake(frame) -> bool:
    """True when ``frame``'s stack is inside ``tp.handshake.run`` (publishing its record or waiting for the verdict)."""
    while frame is not None:
        if frame.f_code is handshake.run.__code__:
            return True
        frame = frame.f_back
    return False


class Progress:
    """Main-thread progress, read by the watchdog. Plain attributes: one writer."""

    def __init__(self) -> None:
        self.busy_since: float | None = None
        self.last = time.monotonic()
        self.what = "starting"

    def mark(self, what: str) -> None:
        self.last = time.monotonic()
        self.what = what

    def busy(self, what: str) -> None:
        self.mark(what)
        self.busy_since = self.last

    def idle(self, what: str) -> None:
        self.mark(what)
        self.busy_since = None


class Watchdog:
    def __init__(self, *, crash: Crash, store_factory, rank: int, driver_rank: int, world_size: int, heartbeat_s: float,
                 peer_timeout_s: float, progress_timeout_s: float, progress: Progress,
                 store_host: int | None = None, peer_timeout_min_s: float | None = None,
                 startup_grace_s: float = 30.0, watch_startup: bool = False) -> None:
        self.startup_grace_s = startup_grace_s
        self.watch_startup = watch_startup
        """Until settled, also look for peers gone before their first beat (the ``startup`` guardrail)."""
        self.crash, self.rank, self.driver_rank, self.world_size = crash, rank, driver_rank, world_size
        self.heartbeat_s, self.peer_timeout_s, self.progress_timeout_s = heartbeat_s, peer_timeout_s, progress_timeout_s
        self.progress = progress
        self.store: dist.Store = store_factory()
        self.store.set_timeout(timedelta(seconds=max(2.0, peer_timeout_s)))
        self.seen: dict[int, tuple[int, float]] = {}
        self.store_host = store_host
        """The rank that serves the store, or None when a launcher does (its loss is not a rank's)."""
        self.polled_at = time.monotonic()
        floor = min(peer_timeout_min_s or peer_timeout_s, peer_timeout_s)
        self.arrivals = {r: Arrivals(floor_s=floor, ceiling_s=peer_timeout_s, expected_s=heartbeat_s) for r in range(world_size) if r != rank}
        self.main_ident = threading.get_ident()  # the thread that runs the TP loop constructs the watchdog
        self.settled = False
        """False until the handshake is over: until then the main thread's own verdict goes first (see _defer)."""
        self._first_fatal_at: float | None = None
        self.terminating = False
        """Set by ``recheck``: the process is being ended, so a handshake verdict is held only briefly."""
        self.leaving = False
        """Set by ``recheck`` when the rank ends after it: each poll marks it gone (``tp/exit/{rank}``)."""
        self._abort_pending = False
        """The last poll read another rank's abort and held it (``_defer``): the rank is about to die of it."""
        self._polls = 0
        self._in_poll = False
        self._polling = False
        """True while the polling thread runs (from ``start`` until it returns)."""
        self._polled = threading.Condition()
        self._poke = threading.Event()
        """Set to poll now instead of after the rest of the heartbeat interval."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tp-watchdog", daemon=True)
        self._sentinel = threading.Thread(target=self._watch_polls, name="tp-watchdog-sentinel", daemon=True)

    def stalest_peer(self) -> int | None:
        """The peer whose heartbeat moved least recently: the likeliest to be gone."""
        seen = dict(self.seen)
        return min(seen, key=lambda r: seen[r][1]) if seen else None

    def start(self) -> None:
        # Beat once before any collective can start: a peer that froze before the thread's first
        # beat would otherwise look "still starting" and get the long startup grace, not the timeout.
        self.polled_at = time.monotonic()
        self._polling = True
        self._sentinel.start()  # it watches this first beat too: a frozen store host blocks it with no bound
        self.store.add(f"tp/hb/{self.rank}", 1)
        self.polled_at = time.monotonic()
        self._thread.start()

    def recheck(self, *, within_s: float, leaving: bool) -> None:
        """Poll now; return once a poll that started after this call found no abort (bounded by ``within_s``).

        For a SIGTERM: a launcher ending this rank because a peer failed (torchrun's agent SIGTERMs every
        local rank once one fails) must leave the peer's abort, not silence, as this rank's last word. The
        failed peer published its abort before exiting, so a poll that starts now reads it and the rank dies
        of it (or of the handshake verdict its main thread is reading: ``_defer``), or of a peer on this host
        gone without one (``_die_of_a_gone_peer``). This returns when there was neither, or the watchdog is
        not polling (stopped, or its store silent). ``leaving``: the rank ends once this returns, so that
        poll also writes its ``tp/exit`` key: ranks SIGTERMed together (a cancelled job) must not take each
        other for lost peers. Otherwise (a driver asked to stop) the watchdog goes back to its usual polls.
        """
        self.terminating, self.leaving = True, leaving
        with self._polled:
            target = self._polls + (2 if self._in_poll else 1)  # one in progress may predate the flags
            self._poke.set()
            self._polled.wait_for(lambda: (self._polls >= target and not self._abort_pending) or not self._polling,
                                  timeout=within_s)
        self.terminating = leaving

    def settle(self) -> None:
        """The handshake is over: from now on a lost peer or an abort is fatal at once."""
        self.settled = True

    def _defer(self, now: float) -> bool:
        """During the handshake, give the main thread one peer timeout to die of rank 0's verdict.

        Rank 0 publishes the handshake verdict and then the abort; every rank waiting for the verdict must die
        of the verdict's own code (PLAN_MISMATCH...), which its main thread reads within milliseconds, not of
        the abort or of rank 0's silence. Nothing is held where no verdict will be read: before rank 0 has
        published one (a peer lost while loading, a fault's abort: holding would only keep this rank alive
        until the handshake timeout), or while the main thread is outside the handshake (stuck in Python
        before it, it never reads one).
        """
        if self.settled or not in_handshake(sys._current_frames().get(self.main_ident)) \
                or not self.store.check([handshake.VERDICT]):
            return False
        if self._first_fatal_at is None:
            self._first_fatal_at = now
        # Ending anyway (SIGTERM): the main thread gets a shorter hold, so the rank still ends within ``recheck``.
        return now - self._first_fatal_at < (TERMINATING_HOLD_S if self.terminating else self.peer_timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()
        self._thread.join(timeout=2 * self.heartbeat_s + 1)
        self._sentinel.join(timeout=2 * self.heartbeat_s + 1)

    def _store_lost(self, why: str, *, silent: bool) -> Fatal:
        host = self.store_host
        if host is None or host == self.rank:
            return Fatal("PEER_LOST", f"rendezvous store {why}")
        who = f"rank {host}'s heartbeat stopped: the rendezvous store it serves" if silent else \
              f"rank {host} (serving the rendezvous store) is gone: the store"
        return Fatal("PEER_LOST", f"{who} {why}", cause_rank=host,
                     fm=lost_fm(host, self.driver_rank))

    def _watch_polls(self) -> None:
        limit_s = self.peer_timeout_s + self.heartbeat_s
        while not self._stop.wait(self.heartbeat_s):
            silent_s = time.monotonic() - self.polled_at
            if silent_s > limit_s and not self._stop.is_set():
                self.crash.store = None  # publishing the abort would block on the same silent store
                self.crash.die(self._store_lost(f"has not answered for {silent_s:.2f} s "
                                                f"(peer timeout {self.peer_timeout_s} s)", silent=True), dump_stack=True)

    def _run(self) -> None:
        try:
            self._poll_until_stopped()
        finally:
            with self._polled:  # a ``recheck`` waiting for the next poll must not wait out its bound
                self._polling = False
                self._polled.notify_all()

    def _poll_until_stopped(self) -> None:
        peers = [r for r in range(self.world_size) if r != self.rank]
        seen = self.seen = {r: (-1, time.monotonic()) for r in peers}
        while self._next_poll():
            with self._polled:
                self._in_poll = True
            try:
                self.store.add(f"tp/hb/{self.rank}", 1)
                abort = read_abort(self.store)
                self._abort_pending = from_another(abort, self.rank)
                if self._abort_pending and not self._defer(time.monotonic()):
                    self.crash.die(peer_abort(abort), dump_stack=True, via=self.store)
                if self.terminating and not self._abort_pending:
                    self._die_of_a_gone_peer()
                if self.leaving:
                    self.store.set(exit_key(self.rank), "1")
                now = time.monotonic()
                if self.watch_startup and not self.settled:
                    self._die_of_a_peer_gone_before_beating(peers)
                for r in peers:
                    if self.store.check([done_key(r)]):
                        continue
                    count = self.store.add(f"tp/hb/{r}", 0)
                    if count != seen[r][0]:
                        seen[r] = (count, now)
                        self.arrivals[r].arrived(now)
                    # A peer that never beat yet may still be importing torch: give it the startup grace.
                    elif (now - seen[r][1] > (self.arrivals[r].timeout() if count > 0 else self.startup_grace_s)
                          and not self._defer(now)):
                        self.crash.die(Fatal("PEER_LOST", f"rank {r}'s heartbeat stopped {now - seen[r][1]:.2f} s ago "
                                             f"({self.arrivals[r].describe()})", cause_rank=r,
                                             fm=lost_fm(r, self.driver_rank)), dump_stack=True,
                                       via=self.store)
            except Exception as exc:
                if self._stop.is_set():
                    return
                self.crash.die(self._store_lost(f"is unreachable: {exc}", silent=False), dump_stack=True)
            self.polled_at = time.monotonic()
            with self._polled:
                self._polls += 1
                self._in_poll = False
                self._polled.notify_all()
            self._check_progress()

    def _die_of_a_gone_peer(self) -> None:
        """SIGTERMed with no abort to read: a peer that died without one (SIGKILL, the OOM killer) is the cause.

        A launcher ends the survivors of a dead rank with SIGTERM, often before their own collective error or
        the peer timeout says so; the dead rank is on this host (the launcher signals its own ranks). A peer
        that finished (``tp/done``) or left (``tp/exit``: on a fatal path, or ended by its own SIGTERM) is not lost.
        """
        gone = [r for r in gone_peers(self.store, rank=self.rank, world_size=self.world_size)
                if not any(self.store.check([key(r)]) for key in (done_key, exit_key))]
        if gone:
            r = gone[0]
            self.crash.die(Fatal("PEER_LOST", f"rank {r}'s process is gone and this rank was sent SIGTERM (a launcher "
                                 f"ending the survivors)", cause_rank=r, fm=lost_fm(r, self.driver_rank)),
                           dump_stack=True, via=self.store)

    def _die_of_a_peer_gone_before_beating(self, peers: list[int]) -> None:
        """During start-up: a peer that claimed its rank (its pid is known) and is gone before its first beat.

        Its heartbeat never moved, so the heartbeat timeout cannot tell it from a peer still loading; its pid can.
        """
        quiet = [r for r in peers if self.seen[r][0] <= 0]
        if not quiet:
            return
        for r in gone_peers(self.store, rank=self.rank, world_size=self.world_size):
            if r in quiet and not any(self.store.check([key(r)]) for key in (done_key, exit_key)):
                self.crash.die(Fatal("PEER_LOST", f"rank {r} claimed its rank in the store and its process is gone "
                                     f"before its first heartbeat", cause_rank=r, fm=lost_fm(r, self.driver_rank)),
                               dump_stack=True, via=self.store)

    def _next_poll(self) -> bool:
        """Wait one heartbeat interval, or less when poked; False once stopped."""
        self._poke.wait(self.heartbeat_s)
        self._poke.clear()
        return not self._stop.is_set()

    def _check_progress(self) -> None:
        if self.progress.busy_since is None:
            return
        stalled = time.monotonic() - self.progress.last
        if stalled <= self.progress_timeout_s:
            return
        waiting = in_collective(sys._current_frames().get(self.main_ident))
        if waiting and stalled <= 2 * self.progress_timeout_s:
            return  # a peer stuck in Python is the cause: give it the time to say so first
        where = "waiting in a collective" if waiting else "stuck outside any collective"
        self.crash.die(Fatal("PROGRESS_TIMEOUT", f"no progress for {stalled:.2f} s ({where}; progress timeout "
                             f"{self.progress_timeout_s} s) while '{self.progress.what}'",
                             fm=None if waiting else "FM-15"), dump_stack=True, via=self.store)
