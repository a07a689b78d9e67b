"""Process trees: find every process of a launch, signal it, wait for it; the registry of live launches.

``atexit`` and ``reap_all`` close every launch still registered, so a crashing
or interrupted harness leaves no rank behind.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import sys
import threading
import time

import psutil

from harness.launch import lifetime


def process_tree(roots: list[psutil.Process], groups: set[int], marker: str) -> list[psutil.Process]:
    """Every live process under ``roots``, in the process ``groups``, or carrying the launch ``marker``."""
    found: dict[int, psutil.Process] = {}
    for proc in roots:
        try:
            if proc.is_running():
                found[proc.pid] = proc
                found.update((c.pid, c) for c in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    for proc in psutil.process_iter():
        try:
            if proc.pid not in found and os.getpgid(proc.pid) in groups and proc.pid != os.getpid():
                found[proc.pid] = proc
        except (OSError, psutil.NoSuchProcess):
            continue
    for pid in lifetime.marked(lifetime.LAUNCH_ENV, marker):  # left their session and their parent
        try:
            found.setdefault(pid, psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return [p for p in found.values() if alive(p)]


def signal_all(procs: list[psutil.Process], sig: signal.Signals) -> None:
    """SIGCONT first (a stopped process cannot act on SIGTERM), then ``sig``; for SIGKILL, SIGSTOP first.

    Signals reach the processes one by one: a rank still running when its peer is killed sees the connection
    drop and acts on it (tp's exits PEER_LOST, gloo may abort) before its own SIGKILL lands. Stopping the whole
    tree first means no process acts on another's death: the harness's kill is the only thing that happens."""
    for s in ((signal.SIGSTOP, sig) if sig == signal.SIGKILL else (signal.SIGCONT, sig)):
        for proc in procs:
            try:
                proc.send_signal(s)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited (zombies count as gone); return the survivors.

    Waits on pidfds, which become readable when a process exits, whoever its parent is.
    """
    fds: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            fds[os.pidfd_open(proc.pid)] = proc
        except OSError:
            continue
    try:
        gone_at = time.monotonic() + timeout_s
        pending = set(fds)
        while pending:
            readable, _, _ = select.select(list(pending), [], [], max(0.0, gone_at - time.monotonic()))
            if not readable:
                break
            pending.difference_update(readable)
        return [fds[fd] for fd in pending]
    finally:
        for fd in fds:
            os.close(fd)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


_LIVE: set = set()
_LIVE_LOCK = threading.Lock()


def register(launch) -> None:
    with _LIVE_LOCK:
        _LIVE.add(launch)


def unregister(launch) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(launch)


def reap_all() -> None:
    """Kill every process of every live launch (atexit, harness crash, interrupt)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for launch in live:
        try:
            launch.close()
        except Exception as exc:  # noqa: BLE001 - reaping must go on for the others
            print(f"harness: could not reap a launch: {exc}", file=sys.stderr)


atexit.register(reap_all)
