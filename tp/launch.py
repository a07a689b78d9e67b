"""``python -m tp --world-size N``: spawn N local ranks around a hosted store.

The launcher hosts the rendezvous ``TCPStore`` on an ephemeral port (as the
torchrun agent does) and starts each rank as ``python -m tp`` with torchrun's
variables, relaying their output with a ``[rN]`` prefix to stderr. The
driver's final JSON line goes to stdout. SIGTERM/SIGINT are forwarded to rank 0, which
shuts the group down gracefully; if any rank fails, the rest get a grace
period and are then killed: nothing outlives the launcher.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta

from tp import codes

FAILURE_GRACE_S = 10.0


FOLLOWER_EXITS = tuple(codes.CODES[name].exit for name in ("PEER_LOST", "PEER_ABORT", "STORE_LOST"))
"""Exit statuses of a rank that followed another's failure."""


def spawn(*, world_size: int, argv: list[str]) -> int:
    import torch.distributed as dist

    store = _host_store(dist, world_size)
    tick = threading.Event()  # never set: an interruptible poll interval
    last_lines: dict[int, str] = {}
    procs, threads = _start_ranks(world_size, store.port, argv, last_lines)

    signals = []

    def forward(signum, _frame):
        # First signal: graceful (rank 0 sends SHUTDOWN). Second: kill everything.
        signals.append(signum)
        for p in procs if len(signals) > 1 else procs[:1]:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL if len(signals) > 1 else signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    first_failure: tuple[int, int] | None = None  # (rank, returncode), in the order exits are seen
    kill_at = None
    while True:
        states = [p.poll() for p in procs]
        now = time.monotonic()
        failed = [(rank, code) for rank, code in enumerate(states) if code not in (None, 0)]
        if failed and first_failure is None:
            # Exits seen in one poll are unordered: a follower's code (a peer lost or aborted) is not the cause.
            first_failure = min(failed, key=lambda rc: rc[1] in FOLLOWER_EXITS)
        if all(code is not None for code in states):
            break
        if kill_at is None and any(code is not None for code in states):
            # Once one rank is gone the rest must follow promptly; a straggler past the grace is hung.
            kill_at = now + FAILURE_GRACE_S
        if kill_at is not None and now > kill_at:
            for rank, p in enumerate(procs):
                if p.poll() is None:
                    print(f"tp: rank {rank} still running {FAILURE_GRACE_S} s after a peer exited; killing it",
                          file=sys.stderr, flush=True)
                    os.killpg(p.pid, signal.SIGKILL)
        tick.wait(0.05)
    for relay in threads:
        relay.join(timeout=5)
    for p in procs:
        p.stdout and p.stdout.close()
    if first_failure is not None:
        rank, code = first_failure
        name = signal.Signals(-code).name if code < 0 else f"exit {code}"
        print(f"tp: rank {rank} failed ({name}); see the [r{rank}] lines above", file=sys.stderr)
        return code if code > 0 else 128 - code
    for rank in sorted(last_lines):  # only the driver prints a JSON line (rank 0 unless TP_DRIVER_RANK)
        print(last_lines[rank], flush=True)
        break
    return 0


def _start_ranks(world_size: int, port: int, argv: list[str], last_lines: dict[int, str]):
    """Every rank as ``python -m tp`` with torchrun's variables, its output relayed by a thread of its own."""
    procs, threads = [], []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "TORCHELASTIC_USE_AGENT_STORE": "True",
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen([sys.executable, "-m", "tp", *argv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.append(proc)
        relay = threading.Thread(target=_relay, args=(rank, proc, last_lines), daemon=True)
        relay.start()
        threads.append(relay)
    return procs, threads


def _host_store(dist, world_size: int):
    """The store, served from an IPv4-only socket.

    Listening dual-stack (the default), each rank's connection arrives as
    ``::ffff:127.0.0.1``, which c10d names with a reverse-DNS query (no
    /etc/hosts entry has the mapped form); a dropped query stalls that rank's
    connect for the resolver's 5 s timeout. An IPv4 peer is named from /etc/hosts.
    The libuv store takes over a listening socket from torch 2.8 on; older
    versions listen as before.
    """
    import torch

    version = re.match(r"(\d+)\.(\d+)", torch.__version__)
    if version is None or (int(version[1]), int(version[2])) < (2, 8):
        return dist.TCPStore("127.0.0.1", 0, world_size, is_master=True, timeout=timedelta(seconds=60),
                             wait_for_workers=False)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    except OSError:
        listener.close()
        raise
    # The store owns the socket from here on (it closes it), hence detach().
    return dist.TCPStore("127.0.0.1", port, world_size, is_master=True, timeout=timedelta(seconds=60),
                         wait_for_workers=False, master_listen_fd=listener.detach())


def _relay(rank: int, proc: subprocess.Popen, last_lines: dict[int, str]) -> None:
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.startswith("{"):
            last_lines[rank] = line
        sys.stderr.write(f"[r{rank}] {line}\n")
        sys.stderr.flush()
