"""The doors users launch through, with no harness in the way.

* A hand launch with only torchrun's variables, as Slurm's ``srun`` or an MPI
  launcher starts ranks: no launcher store, so rank 0 serves it.
* Two ``torchrun`` agents with c10d rendezvous standing in for two nodes, as a
  multi-node job runs.

Each must reach the same output digest as one rank, and a lost rank must end
the whole job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = 4
CONTRACT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "GROUP_RANK")
RUN_LIMIT_S = 180.0
LOST_RANK_BOUND_S = 5.0
"""The issue's bound for every other rank to exit once one is killed (measured: ~0.1 s)."""
FROZEN_HOST_BOUND_S = 30.0
"""Crash-vs-hang bound once the store host froze; the detection itself takes the peer timeout."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _base_env(**extra: str) -> dict[str, str]:
    """The test's env without any launcher's variables; ``TP_FAILPOINTS`` passes through when a test sets it."""
    env = {k: v for k, v in os.environ.items()
           if k not in CONTRACT and (k == "TP_FAILPOINTS" or not k.startswith(("TP_", "TORCHELASTIC_")))}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _driver_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{") and "output_digest" in line:
            return json.loads(line)
    raise AssertionError(f"no JSON result line in:\n{text[-3000:]}")


@pytest.fixture(scope="module")
def digest_ws1() -> str:
    out = subprocess.run([sys.executable, "-m", "tp", "--world-size", "1", "--chunks", str(CHUNKS)], cwd=ROOT,
                         env=_base_env(), capture_output=True, text=True, timeout=RUN_LIMIT_S)
    assert out.returncode == 0, out.stderr[-3000:]
    return _driver_json(out.stdout)["output_digest"]


class HandLaunch:
    """``world_size`` plain processes of ``python -m tp`` with the env contract only."""

    def __init__(self, tmp_path: Path, world_size: int, *, chunks: int, env: dict[str, str] | None = None) -> None:
        self.port = _free_port()
        self.logs = [tmp_path / f"rank{r}.log" for r in range(world_size)]
        self.procs: list[subprocess.Popen] = []
        for rank, log in enumerate(self.logs):
            rank_env = _base_env(**(env or {}), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                                 MASTER_ADDR="127.0.0.1", MASTER_PORT=str(self.port))
            with log.open("wb") as fh:
                self.procs.append(subprocess.Popen([sys.executable, "-m", "tp", "--chunks", str(chunks)], cwd=ROOT,
                                                   env=rank_env, stdout=fh, stderr=subprocess.STDOUT,
                                                   start_new_session=True))

    def wait_all(self, timeout_s: float) -> list[int]:
        give_up_at = time.monotonic() + timeout_s
        return [p.wait(timeout=max(0.1, give_up_at - time.monotonic())) for p in self.procs]

    def text(self, rank: int) -> str:
        return self.logs[rank].read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture
def hand_launch(tmp_path):
    launches: list[HandLaunch] = []

    def start(world_size: int, *, chunks: int = CHUNKS) -> HandLaunch:
        launches.append(HandLaunch(tmp_path, world_size, chunks=chunks))
        return launches[-1]

    yield start
    for launch in launches:
        launch.close()


@pytest.mark.parametrize("world_size", [2, 4, pytest.param(8, marks=pytest.mark.world_size_8)])
def test_a_hand_launch_with_only_the_env_contract_matches_one_rank(hand_launch, digest_ws1, world_size):
    launch = hand_launch(world_size)
    codes = launch.wait_all(RUN_LIMIT_S)
    assert codes == [0] * world_size, "\n".join(launch.text(r)[-1500:] for r in range(world_size))
    assert _driver_json(launch.text(0))["output_digest"] == digest_ws1
    assert "EADDRINUSE" not in launch.text(0)


@pytest.mark.parametrize("victim", [0, 3], ids=["store-host", "worker"])
def test_killing_any_rank_of_a_hand_launch_ends_every_other_rank(hand_launch, victim):
    import torch.distributed as dist

    launch = hand_launch(4, chunks=100_000)
    # Wait on the job's own store (served by rank 0) until the victim has finished a chunk: mid-run for sure.
    store = dist.TCPStore("127.0.0.1", launch.port, is_master=False, timeout=timedelta(seconds=RUN_LIMIT_S))
    store.wait([f"tp/progress/{victim}"], timedelta(seconds=RUN_LIMIT_S))
    os.kill(launch.procs[victim].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    others = [r for r in range(4) if r != victim]
    codes = {r: launch.procs[r].wait(timeout=RUN_LIMIT_S) for r in others}
    took_s = time.monotonic() - killed_at
    assert all(code != 0 for code in codes.values()), codes
    assert took_s < LOST_RANK_BOUND_S, f"the last rank exited {took_s:.2f} s after rank {victim} was killed"
    for r in others:
        assert "TP-FATAL" in launch.text(r), launch.text(r)[-2000:]


def _torchrun_agents(tmp_path: Path, *, world_size: int, failpoints: str = "") -> list[subprocess.Popen]:
    torchrun = shutil.which("torchrun")
    if torchrun is None:  # torch installs it next to the interpreter; its absence is a broken install
        torchrun = str(Path(sys.executable).with_name("torchrun"))
    port = _free_port()
    agents = []
    for node in range(2):
        cmd = [torchrun, "--nnodes=2", f"--nproc-per-node={world_size // 2}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test-{port}", "--local-addr=127.0.0.1",
               f"--node-rank={node}", "--max-restarts=0", "-m", "tp", "--chunks", str(CHUNKS)]
        with (tmp_path / f"node{node}.log").open("wb") as fh:
            agents.append(subprocess.Popen(cmd, cwd=ROOT, env=_base_env(TP_FAILPOINTS=failpoints), stdout=fh,
                                           stderr=subprocess.STDOUT, start_new_session=True))
    return agents


@pytest.fixture
def agents(tmp_path):
    started: list[subprocess.Popen] = []

    def start(**kwargs) -> list[subprocess.Popen]:
        started.extend(_torchrun_agents(tmp_path, **kwargs))
        return started

    yield start
    for agent in started:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()


def test_two_torchrun_agents_as_two_nodes_match_one_rank(agents, tmp_path, digest_ws1):
    codes = [a.wait(timeout=RUN_LIMIT_S) for a in agents(world_size=4)]
    text = "\n".join((tmp_path / f"node{n}.log").read_text(errors="replace") for n in range(2))
    assert codes == [0, 0], text[-4000:]
    assert _driver_json(text)["output_digest"] == digest_ws1


def test_a_fault_on_the_second_node_crashes_the_whole_two_node_job(agents, tmp_path):
    # Agents own contiguous global ranks, so rank 3 is never on rank 0's node.
    codes = [a.wait(timeout=RUN_LIMIT_S) for a in agents(world_size=4,
                                                          failpoints="generator.call=raise@rank=3,chunk=1,hit=1")]
    text = "\n".join((tmp_path / f"node{n}.log").read_text(errors="replace") for n in range(2))
    assert codes == [1, 1], text[-4000:]  # torchrun's own status when a worker failed
    assert "TP-FAULT site=generator.call action=raise rank=3" in text
    assert "code=FAULT_INJECTED rank=3" in text
    # Every other rank names rank 3, wherever it runs. Rank 2 shares rank 3's agent, which SIGTERMs a failed
    # worker's local siblings at once (torchrun's elastic api, "closing signal SIGTERM"), and the first rank
    # of the other node to die has its sibling SIGTERMed the same way: a SIGTERMed rank reads the published abort
    # before it ends (tests/test_tp_sigterm.py), so none of them ends silently.
    for rank in (0, 1, 2):
        assert re.search(rf"TP-FATAL fm=\S+ code=(PEER_ABORT|PEER_LOST) rank={rank} cause_rank=3", text), text[-4000:]


def test_a_fatal_error_on_the_store_host_reaches_every_peer_as_its_cause(hand_launch, monkeypatch):
    # Rank 0 serves the store and dies on a fatal path: it must keep the store up until its peers have read
    # the abort, or they would only learn "store unreachable" and name no cause.
    monkeypatch.setenv("TP_FAILPOINTS", "generator.call=raise@rank=0,chunk=1,hit=1")
    launch = hand_launch(4, chunks=8)
    codes = launch.wait_all(RUN_LIMIT_S)
    assert all(code != 0 for code in codes), codes
    assert "code=FAULT_INJECTED rank=0" in launch.text(0)
    for r in (1, 2, 3):
        assert re.search(r"TP-FATAL fm=\S+ code=PEER_ABORT rank=\d cause_rank=0", launch.text(r)), launch.text(r)[-2000:]


def test_a_frozen_store_host_is_named_lost_by_every_peer(hand_launch, monkeypatch):
    # A stopped store server blocks c10d's client calls forever, the watchdog's included: only the
    # store-free sentinel can tell, and every peer must exit naming rank 0.
    monkeypatch.setenv("TP_FAILPOINTS", "driver.idle=kill(SIGSTOP)@rank=0,chunk=2")
    launch = hand_launch(2, chunks=8)
    try:  # detection takes the peer timeout (2 s); without the sentinel rank 1 waits forever
        code = launch.procs[1].wait(timeout=FROZEN_HOST_BOUND_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"rank 1 still running {FROZEN_HOST_BOUND_S} s after rank 0 froze:\n{launch.text(1)[-2000:]}")
    assert code != 0
    assert re.search(r"TP-FATAL fm=FM-13 code=PEER_LOST rank=1 cause_rank=0 .*rank 0's heartbeat stopped",
                     launch.text(1)), launch.text(1)[-2000:]
