"""The deadline is the bound of a crash proof: a stall the traces prove ends a run early only where HUNG is allowed.

Against the stand-in engine (fixtures/ranks/fake_tp.py), not the reference TP path: its guardrail is a
timeout of its own (``FAKE_TIMEOUT_S``: no collective completed for S seconds is ``TP-FATAL code=FAKE_TIMEOUT``),
and it writes flight traces (``FAKE_FLIGHT``), so the stall probe proves the stall long before the timeout fires.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness import Blocked, Expect, Fault, Scenario
from harness.pipeline.runner import RunConfig, run_scenario

RANKS = Path(__file__).resolve().parent.parent / "fixtures" / "ranks"
HANG = Fault(site="fake.chunk", action="hang", rank=1, chunk=1)
GUARD_S = 3.0
"""The stand-in's own timeout: three stall windows after the fault."""


def _run(tmp_path: Path, expect: Expect, *, guard_s: float | None = GUARD_S, **kw):
    config = RunConfig(run_dir=tmp_path / "run", tp_command=(sys.executable, "-m", "fake_tp"), cwd=RANKS,
                       deadline_s=8.0, stall_s=1.0)
    env = {"FAKE_FLIGHT": "1", "FAKE_CALLS": "2", **({"FAKE_TIMEOUT_S": f"{guard_s:g}"} if guard_s else {})}
    scenario = Scenario(id="FM-42/timeout", title="a rank hangs: the engine's own timeout ends every rank",
                        proves="timeout", faults=(HANG,), expect=expect, env=env, **kw)
    return run_scenario(scenario, config)


def test_a_guardrail_with_its_own_timeout_gets_until_the_deadline(tmp_path) -> None:
    result = _run(tmp_path, Expect.crash({"all": r"TP-FATAL .*code=(FAKE_TIMEOUT|PEER_ABORT)"}))
    assert result.observed == "CRASHED" and result.passed, result.reason
    assert GUARD_S <= result.time_to_crash_s < GUARD_S + 2, result.time_to_crash_s
    # The stall was seen (and proven) at about the window, recorded, and did not end the run.
    assert result.stall is not None and 0.9 <= result.stall["at_s"] < GUARD_S, result.stall
    assert "rank 1 parked in its own fault's hang at fake.chunk" in result.stall["reason"]
    assert "in failpoint" in result.stall["stacks"]["1"] and "in collective" in result.stall["stacks"]["0"]
    assert f"stalled at {result.stall['at_s']:.1f} s after TP-FAULT: rank 0 in seq" in result.reason
    assert "HUNG is not an allowed outcome, so the ranks were left to act until the 8 s deadline" in result.reason
    assert "when stalled at" in result.failure_text()
    assert not any(r.reaped for r in result.ranks)


def test_where_hung_is_allowed_the_proven_stall_still_ends_the_run(tmp_path) -> None:
    result = _run(tmp_path, Expect.hang(blocked={0: Blocked(op="barrier")}), deadline_s=8.0)
    assert result.observed == "HUNG" and result.passed, result.reason
    assert result.hang_verdict_s is not None and result.hang_verdict_s < GUARD_S, result.hang_verdict_s
    assert result.stall is None and "the flight traces show every live rank stuck" in result.reason


def test_a_crash_proof_that_really_hangs_is_hung_at_its_deadline_with_the_stall_it_saw(tmp_path) -> None:
    result = _run(tmp_path, Expect.crash(), guard_s=None, deadline_s=2.5)
    assert result.observed == "HUNG" and not result.passed, result.reason
    assert "deadline 2.5 s after TP-FAULT passed" in result.reason
    assert result.stall is not None and result.stall["at_s"] < 2.5
    assert "stalled at " in result.reason and result.ranks[1].stack  # and the deadline's own stacks
