"""torchrun agents: one (static rendezvous) or two standing in for two nodes (c10d rendezvous).

Ranks under an agent are not the harness's children, so each runs inside a
small shell wrapper that writes its pid and, at exit, its status next to its
log; the harness follows each rank through those files.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from harness.launch import lifetime
from harness.launch.spec import HOST, LaunchError, LaunchSpec, base_env

NODES = {"torchrun": 1, "torchrun-2node": 2}
"""Agents per launch mode."""
_WRAPPER = (
    '"$@" >"$HARNESS_LOG_DIR/rank$RANK.log" 2>&1 & p=$!; trap \'\' TERM INT HUP QUIT; '
    'echo $p >"$HARNESS_LOG_DIR/rank$RANK.pid"; wait $p; s=$?; echo $s >"$HARNESS_LOG_DIR/rank$RANK.exit"; exit $s'
)
"""A rank's shell: its log, pid and exit status. When a sibling fails the agent signals each worker's process
group (torch >= 2.2 starts workers in their own session and ``killpg``s them): the rank gets the signal itself,
and the shell ignores it (set after the rank is forked, so the rank keeps the default) to outlive the rank and
write the status it ended with. The pid file comes after the trap: once it exists, a signal cannot lose the status."""
_POLL_S = 0.02
"""The pid and exit files have no event to wait on: how often to look for them."""


def rank_store_port_key(port: int) -> str:
    """Where the c10d rendezvous at ``port`` publishes the ranks' store port (``start_agents``'s run id, round 0).

    torch's ``DynamicRendezvousHandler`` prefixes its keys with ``torch.rendezvous.{run_id}.{round}``
    (``PrefixStore`` joins with "/"); ``RendezvousStoreInfo`` writes ``MASTER_PORT`` there.
    """
    return f"torch.rendezvous.harness-{port}.0/MASTER_PORT"


def start_agents(spec: LaunchSpec, *, port: int, marker: str) -> list[subprocess.Popen]:
    """Start ``NODES[spec.mode]`` agents that together run ``spec.world_size`` ranks."""
    torchrun, mode, nnodes = shutil.which("torchrun"), spec.mode, NODES[spec.mode]
    if torchrun is None:
        raise LaunchError(f"launch mode {mode!r} needs the torchrun command on PATH")
    if spec.rank_env:
        raise LaunchError(f"launch mode {mode!r} cannot give single ranks extra env; use zygote or subprocess")
    if spec.world_size % nnodes:
        raise LaunchError(f"launch mode {mode!r} splits the ranks over {nnodes} agents; "
                          f"world size {spec.world_size} is not a multiple of {nnodes}")
    env = {**base_env(spec), "HARNESS_LOG_DIR": str(spec.log_dir), lifetime.LAUNCH_ENV: marker}
    if nnodes == 1:
        rdzv = ["--rdzv-backend=static", f"--master-addr={HOST}", f"--master-port={port}"]
    else:  # what a multi-node job uses: dynamic rendezvous at one endpoint (rank_store_port_key: the ranks' store)
        rdzv = ["--rdzv-backend=c10d", f"--rdzv-endpoint={HOST}:{port}", f"--rdzv-id=harness-{port}",
                f"--local-addr={HOST}"]
    agents = []
    for node in range(nnodes):
        cmd = [torchrun, f"--nnodes={nnodes}", f"--nproc-per-node={spec.world_size // nnodes}", *rdzv,
               f"--node-rank={node}", "--max-restarts=0", "--no-python", "sh", "-c", _WRAPPER, "harness-rank",
               *spec.command]
        log = spec.log_dir / ("torchrun.log" if nnodes == 1 else f"torchrun-node{node}.log")
        with log.open("ab") as fh:
            agents.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                           env=env, cwd=spec.cwd, start_new_session=True,
                                           preexec_fn=lifetime.child_preexec()))
    return agents


def follow_ranks(log_dir: Path, world_size: int, agents: list[subprocess.Popen], *,
                 on_pid: Callable[[int, int], None], on_exit: Callable[[int, int | None], None]) -> None:
    """One thread a rank: ``on_pid(rank, pid)`` once it runs, ``on_exit(rank, code)`` once it is gone."""
    for rank in range(world_size):
        threading.Thread(target=_follow, args=(log_dir, rank, agents, on_pid, on_exit), daemon=True,
                         name=f"harness-torchrun-rank{rank}").start()


def _follow(log_dir: Path, rank: int, agents: list[subprocess.Popen], on_pid, on_exit) -> None:
    pidfile, exitfile = log_dir / f"rank{rank}.pid", log_dir / f"rank{rank}.exit"
    tick = threading.Event()  # never set: an interruptible poll interval
    while not pidfile.exists() and any(a.poll() is None for a in agents):
        tick.wait(_POLL_S)
    code = None
    if pidfile.exists():
        pid = int(pidfile.read_text().strip() or 0)
        on_pid(rank, pid)
        try:
            psutil.Process(pid).wait()
        except psutil.NoSuchProcess:
            pass
        give_up_at = time.monotonic() + 2.0
        text = ""
        while not text.endswith("\n") and time.monotonic() < give_up_at:  # the wrapper writes it next
            text = exitfile.read_text() if exitfile.exists() else ""
            tick.wait(_POLL_S / 2)
        if text.strip().isdigit():
            status = int(text)
            code = -(status - 128) if status > 128 else status
    on_exit(rank, code)
