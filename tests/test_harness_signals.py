"""The harness's signals are its own: a stack request (SIGUSR1) goes only to a rank whose handler is installed,
never after its exit event, and a death by a signal the harness sent is the harness's, never the rank's.

Against the stand-in engine (fixtures/ranks/fake_tp.py): ``FAKE_FLIGHT`` makes it announce flight traces (so the
stall probe asks it early), ``FAKE_NO_FAULTHANDLER`` leaves SIGUSR1 at its default action (death), and
``FAKE_LINGER_S`` gives a rank a slow teardown that restores that default, as interpreter finalization does.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from harness import Expect, Scenario
from harness.judge.outcome import judge
from harness.judge.result import Baseline
from harness.pipeline.runner import RunConfig, run_scenario
from harness.supervise.dumps import catches
from harness.supervise.observation import Observation, RankExit

RANKS = Path(__file__).resolve().parent.parent / "fixtures" / "ranks"


def _run(tmp_path: Path, expect: Expect, env: dict[str, str], **kw):
    config = RunConfig(run_dir=tmp_path / "run", tp_command=(sys.executable, "-m", "fake_tp"), cwd=RANKS,
                       deadline_s=8.0, stall_s=0.3)
    scenario = Scenario(id="CTL-t", fm="control", title="t", proves="control", expect=expect,
                        env={"FAKE_FLIGHT": "1", **env}, **kw)
    return run_scenario(scenario, config)


def test_sigcgt_says_whether_a_handler_is_installed() -> None:
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)
    try:
        assert catches(os.getpid(), signal.SIGUSR2) is True
        signal.signal(signal.SIGUSR2, signal.SIG_DFL)
        assert catches(os.getpid(), signal.SIGUSR2) is False
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert catches(None, signal.SIGUSR1) is None


def test_a_rank_that_announces_traces_but_has_no_handler_is_never_signalled(tmp_path) -> None:
    # Chunks of 0.8 s with a 0.3 s stall window: the probe comes due mid-chunk in every run.
    result = _run(tmp_path, Expect.clean(), {"FAKE_NO_FAULTHANDLER": "1", "FAKE_CHUNK_S": "0.8"}, chunks=3)
    assert result.observed == "CLEAN" and result.passed, result.reason
    assert [r.exit for r in result.ranks] == ["exit 0", "exit 0"]
    assert "has no SIGUSR1 handler installed (SigCgt in /proc/" in result.reason, result.reason


def test_a_rank_tearing_down_without_its_handler_is_not_killed_by_a_probe(tmp_path) -> None:
    # No exit event, then 1.5 s of teardown with SIGUSR1 back at its default: the probe comes due meanwhile.
    result = _run(tmp_path, Expect.clean(), {"FAKE_NO_EXIT_EVENT": "1", "FAKE_LINGER_S": "1.5"}, chunks=2)
    assert result.observed == "CLEAN" and result.passed, result.reason
    assert [r.exit for r in result.ranks] == ["exit 0", "exit 0"]
    assert result.root_cause is None


def test_a_death_by_the_harness_s_own_signal_is_a_harness_error_never_a_root_cause(tmp_path) -> None:
    """Judged from an observation: rank 0 died of a SIGUSR1 the harness sent it (the handler went in between)."""
    paths = {}
    for rank, line in ((0, "TP-EVENT {\"event\": \"init\", \"mono\": 100.0}"),
                       (1, "TP-FATAL fm=FM-00 code=PEER_ABORT rank=1 cause_rank=0 mono=101.0")):
        paths[rank] = tmp_path / f"rank{rank}.log"
        paths[rank].write_text(line + "\n")
    obs = Observation(world_size=2, pids={0: 1000, 1: 1001}, log_paths=paths, started_at=99.0, ended_at=102.0,
                      init_mono=100.0)
    obs.exits = {0: RankExit(rank=0, returncode=-signal.SIGUSR1, mono=100.9),
                 1: RankExit(rank=1, returncode=51, mono=101.1)}
    obs.signals_sent = {0: [("SIGUSR1", 100.8)], 1: [("SIGUSR1", 100.8)]}
    scenario = Scenario(id="CTL-t", fm="control", title="t", proves="control", expect=Expect.crash())
    result = judge(scenario, obs, deadline_s=8.0, baseline=lambda: Baseline(ok=False),
                   meta={"backend": "gloo", "launch": "zygote", "dir": str(tmp_path)}, codes={"PEER_ABORT": 51})
    assert result.observed == "HARNESS_ERROR", result.reason
    assert "rank 0 (pid 1000) was killed by the SIGUSR1 the harness sent it 0.8 s after init" in result.reason
    assert result.root_cause is None or result.root_cause["rank"] != 0, result.root_cause
    assert "root cause" not in result.ranks[0].role and "no TP-FATAL" not in result.reason_parts["ranks"][0]
    assert "outside the contract" not in result.reason


def test_reaping_a_hung_run_makes_no_rank_crash(tmp_path) -> None:
    # FM-01 with preflight off leaves rank 1 blocked mid-envelope. A SIGTERM-first reap let tp's rank 0 send its
    # graceful SHUTDOWN into it, and gloo aborted rank 1 (SIGABRT) on every run: the harness's reaping made a
    # rank crash. After a verdict the harness stops the whole tree, then SIGKILLs it: no rank acts on a peer's
    # death either (killed one by one, rank 1 saw rank 0 go and exited PEER_LOST in 3 of 4 runs).
    from harness.declare.selection import load_scenarios

    (scenario,) = [s for s in load_scenarios(None) if s.id == "FM-01/off"]
    result = run_scenario(scenario, RunConfig(run_dir=tmp_path / "run"))
    assert result.observed == "HUNG", result.reason
    assert {r.rank: r.returncode for r in result.ranks} == {0: -signal.SIGKILL, 1: -signal.SIGKILL}, result.reason
