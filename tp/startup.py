"""Start-up as one phase: one deadline from ``main`` to the handshake verdict, and a cause named once it is known.

Every wait of start-up (the store connect, store reads, the handshake) ends by
``TP_STARTUP_TIMEOUT_S``: a guard thread ends the rank with ``STARTUP_TIMEOUT``
when the phase has not settled by then, wherever the main thread is blocked
(c10d's calls release the GIL, so the guard runs beside them). Before that, a
cause that is knowable ends the rank within about a second:

* nothing listens at ``MASTER_ADDR:MASTER_PORT`` after this process had reached
  a store there: the store is gone (``STORE_LOST``; under an srun-style launch
  rank 0 served it, and its pid says whether it still runs on this host);
* something accepts connections there but does not answer as a c10d store
  within ``STORE_ANSWER_S`` (a port another program holds, a stopped host),
  or answers garbage, or rank 0 cannot listen there (``STORE_UNAVAILABLE``,
  rank 0 naming the holder when ``/proc`` shows it);
* a rank number claimed by a second process (``DUPLICATE_RANK``, both pids).

c10d's own client is not bounded enough for this (torch 2.13, measured): a
refused connect is retried with an exponential, jittered backoff (delays of
23 s seen) until its timeout, one more retry round past it, and a listener that
accepts but never answers keeps the client's constructor blocked with no bound
at all. So a client first probes the port with a plain socket, retries a refusal
every ``CONNECT_POLL_S``, and builds the c10d client in a thread it waits on
with a bound.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import threading
import time
from datetime import timedelta

import torch.distributed as dist

from tp import log
from tp.crash import Crash, Fatal, _process_space, _running

STORE_ANSWER_S = 5.0
"""How long a listener may take to answer as a c10d store: a live store answers in milliseconds, even on a loaded box."""
CONNECT_POLL_S = 0.05
"""Interval between connect attempts while nothing listens yet (rank 0 still importing torch)."""
LAST_WORD_S = 2.0
"""How long a rank dying before it reached the store tries to reach it, to publish why."""
STORE_CODES = ("STORE_LOST", "STORE_UNAVAILABLE", "STARTUP_TIMEOUT")
"""Fatal codes that mean the store cannot be reached: no last try to publish them there."""
SAME_JOB_SLACK_S = 5.0
"""A store host's note written this long before a rank started still counts as its job's (ranks start together)."""
GUARD_SLACK_S = 0.5
"""The guard fires this long after the deadline, so a wait that ends itself at the deadline names its own cause."""


class Phase:
    """The start-up deadline and its guard thread; ``settle`` once the handshake verdict is in."""

    def __init__(self, *, crash: Crash, timeout_s: float, doing, die_via, watch=None) -> None:
        self.crash, self.timeout_s = crash, timeout_s
        self.deadline_at = time.monotonic() + timeout_s
        self.doing = doing
        """Returns what the main thread is doing, for the fatal line."""
        self.die_via = die_via
        """Returns the store connection to publish the abort through (one the main thread does not hold), or None."""
        self.contacted = False
        """True once this process has reached the store: from then on a refused connect means the store is gone."""
        self.store_pid: tuple[str, int] | None = None
        """Where the store-serving rank 0 runs (process space, pid), once read from ``tp/pid/0``."""
        self.watch = watch
        """Returns a ``Fatal`` once a cause is known whatever the main thread is blocked in, else None (polled)."""
        self.settled = threading.Event()
        self._thread = threading.Thread(target=self._guard, name="tp-startup-guard", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def settle(self) -> None:
        self.settled.set()

    def remaining(self) -> float:
        return self.deadline_at - time.monotonic()

    def _guard(self) -> None:
        give_up_at = self.deadline_at + GUARD_SLACK_S
        fatal = None
        while fatal is None and not self.settled.wait(CONNECT_POLL_S):
            fatal = self.watch() if self.watch is not None else None
            if fatal is None and time.monotonic() >= give_up_at:
                fatal = Fatal("STARTUP_TIMEOUT", f"start-up did not reach the handshake verdict within "
                                                 f"{self.timeout_s:g} s (TP_STARTUP_TIMEOUT_S) while {self.doing()}")
        if fatal is None:
            return
        via = self.die_via() if fatal.code == "STARTUP_TIMEOUT" else None
        if via is None:
            self.crash.store = None  # the main thread may hold the only connection, blocked in a call
        self.crash.die(fatal, dump_stack=True, via=via)

    def store_gone(self, addr: str, why: str, *, hosted_by_rank0: bool) -> Fatal:
        """``STORE_LOST``: this process had reached the store at ``addr`` and now cannot."""
        if not hosted_by_rank0:
            return Fatal("STORE_LOST", f"the rendezvous store at {addr} (served by the launcher) is gone: {why}")
        where = ""
        if self.store_pid is not None:
            space, pid = self.store_pid
            if space == _process_space():
                state = "gone" if not _running(pid, ("Z", "X")) else "frozen" if not _running(pid, ("T",)) else "running"
                where = f" (pid {pid}: {state})"
        return Fatal("STORE_LOST", f"rank 0 serves the rendezvous store at {addr} and is gone{where}: {why}",
                     cause_rank=0)


def _refused(addr: tuple[str, int], within_s: float) -> bool | None:
    """True when nothing listens at ``addr``, False when a connection was accepted, None when it timed out."""
    try:
        with socket.create_connection(addr, timeout=max(0.05, within_s)):
            return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except OSError as exc:
        return None if isinstance(exc, TimeoutError) or exc.errno in (errno.ETIMEDOUT, errno.EHOSTUNREACH) else True


def _bounded(make, within_s: float, watch=None):
    """``make()`` in a thread, waited on for ``within_s``: ``(value, error)``; both None when it is still blocked.

    ``watch()`` runs every ``CONNECT_POLL_S`` meanwhile and may raise to give up sooner.
    """
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = make()
        except Exception as exc:  # handed to the caller, which names it
            box["error"] = exc

    thread = threading.Thread(target=run, name="tp-store-connect", daemon=True)
    thread.start()
    give_up_at = time.monotonic() + within_s
    while thread.is_alive() and time.monotonic() < give_up_at:
        thread.join(min(CONNECT_POLL_S, max(0.0, give_up_at - time.monotonic())))
        if thread.is_alive() and watch is not None:
            watch()
    return box.get("value"), box.get("error")


def serve(cfg) -> dist.Store:
    """Rank 0 of an srun-style launch serves the store; a port it cannot listen on is named with its holder."""
    addr = f"{cfg.master_addr}:{cfg.master_port}"
    try:
        store = dist.TCPStore(cfg.master_addr, cfg.master_port, cfg.world_size, is_master=True,
                              timeout=timedelta(seconds=cfg.startup_timeout_s), wait_for_workers=False)
    except dist.DistNetworkError as exc:
        if "EADDRINUSE" not in str(exc) and "address already in use" not in str(exc):
            raise
    else:
        _mark_served(cfg)
        return store
    raise Fatal("STORE_UNAVAILABLE", f"rank 0 serves the rendezvous store but cannot listen on {addr}: the port is "
                                     f"taken{port_holder(cfg.master_port)}; every rank of this job needs a free "
                                     f"MASTER_PORT (its peers end within TP_STARTUP_TIMEOUT_S)")


def connect(cfg, phase: Phase, *, hosted_by_rank0: bool) -> dist.Store:
    """A client connection to the job's store, within the start-up deadline (module docstring)."""
    addr = f"{cfg.master_addr}:{cfg.master_port}"
    _await_listener(cfg, phase, addr, hosted_by_rank0)
    phase.contacted = True  # something listens: if it stops, the store this rank reached is gone

    def watch() -> None:  # c10d retries a refused connect for its whole timeout; rank 0's note says it is gone
        left = _served_and_left(cfg, stopped=True) if hosted_by_rank0 else None
        if left is not None:
            phase.store_pid = (_process_space(), left)
            raise phase.store_gone(addr, "it went away (or froze) while this rank's client connected",
                                   hosted_by_rank0=hosted_by_rank0)

    within_s = max(0.1, min(STORE_ANSWER_S, phase.remaining()))
    store, error = _bounded(lambda: dist.TCPStore(cfg.master_addr, cfg.master_port, cfg.world_size, is_master=False,
                                                  timeout=timedelta(seconds=max(1.0, phase.remaining())),
                                                  wait_for_workers=False), within_s, watch)
    if store is not None:
        phase.contacted = True
        return store
    if _refused((cfg.master_addr, cfg.master_port), 0.5):
        raise phase.store_gone(addr, str(error or "connection refused").splitlines()[0][:200],
                               hosted_by_rank0=hosted_by_rank0)
    what = (f"answered but not as a c10d store ({str(error).splitlines()[0][:200]})" if error is not None else
            f"accepted a connection but did not answer as a c10d store within {within_s:g} s")
    raise Fatal("STORE_UNAVAILABLE", f"the server at {addr} {what}: the store never became this job's "
                                     f"(a port another program holds, or a stopped store host)")


def _await_listener(cfg, phase: Phase, addr: str, hosted_by_rank0: bool) -> None:
    """Return once something listens at ``addr``; raise when the store is known gone or the deadline passed."""
    while True:
        refused = _refused((cfg.master_addr, cfg.master_port), min(1.0, max(0.05, phase.remaining())))
        if refused is False:
            return
        if refused and phase.contacted:
            raise phase.store_gone(addr, "connection refused", hosted_by_rank0=hosted_by_rank0)
        left = _served_and_left(cfg) if refused and hosted_by_rank0 else None
        if left is not None:
            raise Fatal("STORE_LOST", f"rank 0 served the rendezvous store at {addr} from pid {left} on this host and "
                                      f"is gone: no store will answer there", cause_rank=0)
        if phase.remaining() <= 0:
            raise Fatal("STORE_UNAVAILABLE", f"no rendezvous store answered at {addr} within {phase.timeout_s:g} s "
                                             f"(TP_STARTUP_TIMEOUT_S): the store never became this job's"
                                             f"{' (rank 0 serves it: did it start, with this MASTER_PORT?)' if hosted_by_rank0 else ''}")
        time.sleep(CONNECT_POLL_S)  # a poll interval while nothing listens, bounded by the deadline above


def rank0_lost(cfg) -> Fatal | None:
    """``STORE_LOST`` once rank 0, serving the store from this host (its note), is gone or frozen, else None.

    A frozen store host blocks every c10d call of a peer with no bound (its claim, a read, a first heartbeat).
    """
    pid = _served_and_left(cfg, stopped=True)
    if pid is None:
        return None
    state = "frozen" if _running(pid, ("Z", "X")) else "gone"
    return Fatal("STORE_LOST", f"rank 0 serves the rendezvous store at {cfg.master_addr}:{cfg.master_port} from "
                               f"pid {pid} on this host and is {state}: start-up cannot go on", cause_rank=0)


def _served_file(cfg) -> str:
    return os.path.join(tempfile.gettempdir(), f"tp-store-{cfg.master_addr}-{cfg.master_port}.pid")


def _mark_served(cfg) -> None:
    """Leave this host a note that this process serves the store: a peer refused before it reached the store can
    tell "rank 0 has not started serving" from "rank 0 served and is gone" (the store itself died with it)."""
    path = _served_file(cfg)
    try:
        with open(f"{path}.{os.getpid()}", "w") as f:
            f.write(f"{_process_space()} {os.getpid()}")
        os.replace(f"{path}.{os.getpid()}", path)
    except OSError as exc:
        log.info(f"could not write {path}: {exc}")


def forget_served(cfg) -> None:
    """A clean end takes the note away: the next job on this port must not read it as this one's loss."""
    try:
        os.unlink(_served_file(cfg))
    except OSError:
        pass


def _served_and_left(cfg, *, stopped: bool = False) -> int | None:
    """The pid of a store host of this address on this host, noted since this job started, that no longer runs
    (with ``stopped``: or is frozen)."""
    path = _served_file(cfg)
    try:
        if os.stat(path).st_mtime < _started_at() - SAME_JOB_SLACK_S:
            return None  # an earlier job's note
        with open(path) as f:
            space, pid = f.read().split()
    except (OSError, ValueError):
        return None
    dead = ("Z", "X", "T") if stopped else ("Z", "X")
    return int(pid) if space == _process_space() and not _running(int(pid), dead) else None


def _started_at() -> float:
    """This process's start, wall clock (``/proc``): launchers start a job's ranks within seconds of each other."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def reach(cfg) -> dist.Store | None:
    """One bounded try (``LAST_WORD_S``) at a client connection, for a rank about to die before it had one."""
    if _refused((cfg.master_addr, cfg.master_port), LAST_WORD_S) is not False:
        return None
    store, _ = _bounded(lambda: dist.TCPStore(cfg.master_addr, cfg.master_port, cfg.world_size, is_master=False,
                                              timeout=timedelta(seconds=LAST_WORD_S), wait_for_workers=False),
                        LAST_WORD_S)
    return store


def note_store_host(store: dist.Store, phase: Phase) -> None:
    """Remember where rank 0 (serving the store) runs, if it has said so yet: its pid names it once it is gone."""
    try:  # rank 0 claims its rank right after it starts serving: a moment at most
        store.wait(["tp/pid/0"], timedelta(seconds=min(1.0, max(0.1, phase.remaining()))))
        space, pid = store.get("tp/pid/0").decode().split()
        phase.store_pid = (space, int(pid))
    except Exception as exc:
        log.info(f"could not read rank 0's pid: {exc}")


def claim_rank(store: dist.Store, rank: int) -> None:
    """``tp/pid/{rank}`` = "host pid", claimed atomically: a second live claimant is ``DUPLICATE_RANK``.

    A claim left by a process of this host that no longer runs is taken over (a rank restarted on the same store).
    """
    key, mine = f"tp/pid/{rank}", f"{_process_space()} {os.getpid()}"
    held = store.compare_set(key, "", mine).decode()
    if held == mine:
        return
    space, pid = held.split()
    if space == _process_space() and not _running(int(pid), ("Z", "X")):
        store.set(key, mine)
        return
    where = "this host" if space == _process_space() else space
    raise Fatal("DUPLICATE_RANK", f"rank {rank} is claimed twice: by pid {pid} on {where} first, and by pid "
                                  f"{os.getpid()} (this process); give every process its own RANK")


def port_holder(port: int) -> str:
    """`` by pid N (cmdline)`` for a local listener on ``port`` that ``/proc`` shows, else ``""``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return ""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in {f"socket:[{i}]" for i in inodes} for fd in fds):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:120]
                return f" by pid {pid} ({cmd})"
        except OSError:
            continue
    return " by a process this user cannot see"
