"""Say why first: a fault that never fired leads the verdict, for any TP path; ``"others"`` skips the ranks a
fault killed; and the rank whose fault fired must still end inside the contract.

Against the stand-in engine (fixtures/ranks/fake_tp.py): ``FAKE_NO_CHECKS`` + ``FAKE_ANY_SITE`` make it an
engine that neither answers ``--check-*`` nor refuses a site it does not have, ``FAKE_FAULT_END`` one whose fault
path ends outside the contract after its ``TP-FAULT`` line, ``FAKE_TIMEOUT_S`` one whose peers end by a timeout.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import Expect, Fault, Scenario
from harness.pipeline.runner import RunConfig, run_scenario

RANKS = Path(__file__).resolve().parent.parent / "fixtures" / "ranks"


def _run(tmp_path: Path, expect: Expect, faults: tuple[Fault, ...], env: dict[str, str], **kw):
    config = RunConfig(run_dir=tmp_path / "run", tp_command=(sys.executable, "-m", "fake_tp"), cwd=RANKS,
                       deadline_s=8.0)
    scenario = Scenario(id="FM-42", title="t", proves="timeout", expect=expect, faults=faults, env=env, chunks=3, **kw)
    return run_scenario(scenario, config)


@pytest.mark.parametrize("expect", [Expect.crash(), Expect.clean()], ids=["crash", "clean"])
def test_a_misspelt_site_an_engine_accepts_is_the_first_thing_the_verdict_says(tmp_path, expect) -> None:
    fault = Fault(site="fake.stpe", action="raise", rank=1)
    result = _run(tmp_path, expect, (fault,), {"FAKE_NO_CHECKS": "1", "FAKE_ANY_SITE": "1"})
    assert result.observed == "CLEAN" and not result.passed, result.reason
    assert result.reason.startswith("the fault never fired: no rank printed a TP-FAULT line for "
                                    "fake.stpe=raise@rank=1"), result.reason
    assert result.reason_parts["verdict"] == "FAIL"


def test_a_fault_that_fired_with_one_that_did_not_is_a_note(tmp_path) -> None:
    fired = Fault(site="fake.chunk", action="raise", rank=0, chunk=1)
    result = _run(tmp_path, Expect.crash(), (fired, Fault(site="fake.call", action="raise", rank=1)), {})
    assert result.observed == "CRASHED" and result.passed, result.reason
    assert result.reason.startswith("expected CRASHED, observed CRASHED")
    assert "armed but never fired (no TP-FAULT line): fake.call=raise@rank=1" in result.reason


def test_others_leaves_out_the_rank_the_fault_killed(tmp_path) -> None:
    kill = Fault(site="fake.chunk", action="kill(SIGKILL)", rank=1, chunk=1)
    result = _run(tmp_path, Expect.crash({"others": r"TP-FATAL .*code=(FAKE_TIMEOUT|PEER_ABORT)"}), (kill,),
                  {"FAKE_TIMEOUT_S": "1"})
    assert result.observed == "CRASHED" and result.passed, result.reason
    assert result.ranks[1].exit == "SIGKILL" and result.ranks[1].signatures == []
    assert result.root_cause["rank"] == 1


@pytest.mark.parametrize(
    ("action", "end", "shown"),
    [("raise", "exit1", "rank 0 exit 1"), ("raise", "segv", "rank 0 SIGSEGV"),
     ("kill(SIGKILL)", "sigterm", "rank 0 SIGTERM")],
    ids=["raise-then-exit-1", "raise-then-sigsegv", "kill-then-a-signal-nobody-sent"],
)
def test_the_rank_whose_fault_fired_must_still_end_inside_the_contract(tmp_path, action, end, shown) -> None:
    fault = Fault(site="fake.chunk", action=action, rank=0, chunk=1)
    result = _run(tmp_path, Expect.crash(), (fault,), {"FAKE_FAULT_END": end, "FAKE_TIMEOUT_S": "1"})
    assert result.observed == "HARNESS_ERROR" and not result.passed, result.reason
    assert f"{shown} without a TP-FATAL line and not by its own fault's exit or signal" in result.reason


def test_another_rank_s_fault_at_the_same_site_does_not_excuse_it(tmp_path) -> None:
    # Rank 1's armed kill(SIGSEGV) must not make rank 0's SIGSEGV after its own 'raise' look like its action.
    faults = (Fault(site="fake.chunk", action="raise", rank=0, chunk=1),
              Fault(site="fake.chunk", action="kill(SIGSEGV)", rank=1, chunk=2))
    result = _run(tmp_path, Expect.crash(), faults, {"FAKE_FAULT_END": "segv", "FAKE_TIMEOUT_S": "1"})
    assert result.observed == "HARNESS_ERROR", result.reason
    assert "rank 0 SIGSEGV without a TP-FATAL line" in result.reason
