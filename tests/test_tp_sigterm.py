"""SIGTERM on a rank: a peer's published abort is its last word, else a worker ends by the signal.

Launchers end the survivors of a failed rank with SIGTERM (torchrun's agent sends it at once to every local
rank of the failed one). Before the signal thread, a worker so ended left no line at all, and the driver's
Python handler waited for a collective that never returned. Here the watchdog polls far apart
(``TP_HEARTBEAT_S`` 60 s), so only the SIGTERM path can read the abort within the test's bound.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.test_launch_paths import HandLaunch

ROOT = Path(__file__).resolve().parent.parent
BOUND_S = 30.0
"""Crash-vs-hang bound; the watchdog's own next poll is 60 s away."""
SLOW_WATCHDOG = {"TP_HEARTBEAT_S": "60", "TP_PEER_TIMEOUT_S": "120", "TP_PEER_TIMEOUT_MIN_S": "120",
                 "TP_FAILPOINTS": "generator.call=hang@rank=1,chunk=1,hit=1"}


def _wait_for(path: Path, pattern: str) -> None:
    tick, give_up_at = threading.Event(), time.monotonic() + BOUND_S
    while not re.search(pattern, path.read_text(errors="replace")):
        assert time.monotonic() < give_up_at, f"no {pattern!r} within {BOUND_S} s in {path}:\n{path.read_text()[-2000:]}"
        tick.wait(0.05)


@pytest.fixture
def stalled(tmp_path):
    """Two hand-launched ranks, rank 1 hung in Python at chunk 1, rank 0 waiting for it in a collective."""
    launches: list[HandLaunch] = []

    def start(**env: str) -> HandLaunch:
        launch = HandLaunch(tmp_path, 2, chunks=4, env={**SLOW_WATCHDOG, **env})
        launches.append(launch)
        _wait_for(launch.logs[1], r"TP-FAULT site=generator\.call action=hang rank=1")
        init = next(json.loads(line.split("TP-EVENT ", 1)[1]) for line in launch.text(1).splitlines()
                    if '"event": "init"' in line)
        assert ("watchdog" in init["guardrails"]) == ("-watchdog" not in env.get("TP_GUARDRAILS", "")), init
        return launch

    yield start
    for launch in launches:
        launch.close()


def _publish_abort(launch: HandLaunch, *, rank: int) -> None:
    """What a rank on a fatal path writes (crash.Crash._publish): the claim, then the abort."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", launch.port, is_master=False, timeout=timedelta(seconds=BOUND_S))
    assert store.add("tp/abort_claims", 1) == 1
    store.set("tp/abort", json.dumps({"code": "FAULT_INJECTED", "fm": "none", "rank": rank, "chunk": 1, "call_id": 5,
                                      "detail": "published by the test"}))


@pytest.mark.parametrize("victim", [0, 1], ids=["driver-in-a-collective", "worker-in-python"])
def test_a_sigterm_after_a_peers_abort_ends_the_rank_naming_that_peer(stalled, victim):
    launch = stalled()
    cause = 1 - victim
    _publish_abort(launch, rank=cause)
    os.kill(launch.procs[victim].pid, signal.SIGTERM)
    code = launch.procs[victim].wait(timeout=BOUND_S)
    text = launch.text(victim)
    assert code == 51, text[-3000:]  # PEER_ABORT's exit code
    assert re.search(rf"TP-FATAL fm=\S+ code=PEER_ABORT rank={victim} cause_rank={cause} .*published by the test", text)


def test_a_sigterm_after_a_peer_died_without_an_abort_names_that_peer(tmp_path):
    # Every rank parked in Python at chunk 1, so none is in a collective that could tell it rank 1 died.
    launch = HandLaunch(tmp_path, 4, chunks=4, env={**SLOW_WATCHDOG, "TP_FAILPOINTS": "generator.call=hang@chunk=1,hit=1"})
    try:
        for rank in range(4):
            _wait_for(launch.logs[rank], rf"TP-FAULT site=generator\.call action=hang rank={rank}")
        launch.procs[1].kill()  # SIGKILL: no abort, as the OOM killer leaves it
        launch.procs[1].wait(timeout=BOUND_S)
        os.kill(launch.procs[2].pid, signal.SIGTERM)
        code = launch.procs[2].wait(timeout=BOUND_S)
        text = launch.text(2)
        assert code == 50, text[-3000:]  # PEER_LOST's exit code
        assert re.search(r"TP-FATAL fm=FM-14 code=PEER_LOST rank=2 cause_rank=1 .*process is gone", text), text[-3000:]
    finally:
        launch.close()


@pytest.mark.parametrize(("guardrails", "why"), [("all", "no abort was published"),
                                                 ("all,-watchdog", "nothing reads the abort")])
def test_a_worker_sigtermed_with_no_abort_to_read_ends_by_the_signal(stalled, guardrails, why):
    launch = stalled(TP_GUARDRAILS=guardrails)
    if guardrails != "all":
        _publish_abort(launch, rank=0)
    os.kill(launch.procs[1].pid, signal.SIGTERM)
    code = launch.procs[1].wait(timeout=BOUND_S)
    assert code == -signal.SIGTERM, (why, launch.text(1)[-3000:])
    assert "TP-FATAL" not in launch.text(1), why


def test_die_by_ends_the_process_by_the_signal_from_another_thread_while_main_is_blocked():
    child = textwrap.dedent("""
        import os, signal
        from tp import signals
        assert signals.on(signal.SIGTERM, lambda: signals.die_by(signal.SIGTERM))
        print("ready", flush=True)
        r, _ = os.pipe()
        os.read(r, 1)  # blocked in C, like a rank inside a gloo collective
        print("unreachable", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=BOUND_S) == -signal.SIGTERM
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_second_sigterm_ends_a_driver_that_never_reaches_its_next_chunk(stalled):
    launch = stalled()  # rank 0, the driver, waits in a collective for rank 1, parked in Python
    os.kill(launch.procs[0].pid, signal.SIGTERM)
    _wait_for(launch.logs[0], r"TP-INFO SIGTERM: the driver stops before its next chunk")
    os.kill(launch.procs[0].pid, signal.SIGTERM)
    code = launch.procs[0].wait(timeout=BOUND_S)
    assert code == -signal.SIGTERM, launch.text(0)[-3000:]
    assert "TP-FATAL" not in launch.text(0)


def test_ranks_sigtermed_together_do_not_take_each_other_for_lost_peers(tmp_path):
    # A cancelled job: every rank gets SIGTERM at once, nothing failed. Each worker ends by the signal; none
    # may name a sibling that the same SIGTERM ended a moment earlier as a lost peer.
    launch = HandLaunch(tmp_path, 4, chunks=4, env={**SLOW_WATCHDOG, "TP_FAILPOINTS": "generator.call=hang@chunk=1,hit=1"})
    try:
        for rank in range(4):
            _wait_for(launch.logs[rank], rf"TP-FAULT site=generator\.call action=hang rank={rank}")
        for proc in launch.procs:
            os.kill(proc.pid, signal.SIGTERM)
        codes = [launch.procs[r].wait(timeout=BOUND_S) for r in (1, 2, 3)]
        assert codes == [-signal.SIGTERM] * 3, [launch.text(r)[-1500:] for r in (1, 2, 3)]
        _wait_for(launch.logs[0], r"TP-INFO SIGTERM: the driver stops before its next chunk")
        for rank in range(4):
            assert "TP-FATAL" not in launch.text(rank), launch.text(rank)[-3000:]
    finally:
        launch.close()
