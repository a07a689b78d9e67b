"""The true first divergence and an interrupt's time to crash, on real ranks of the stand-in engine.

fixtures/ranks/fake_tp.py runs ``FAKE_CALLS`` all_reduces per chunk, each a store barrier keyed by the rank's own
sequence number: like a real all_reduce of equal shapes, ranks that disagree on which call they are in pass each
other silently, and only call ids and sites tell them apart. Its own timeout (``FAKE_TIMEOUT_S``) ends the rank
left waiting at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness import Expect, Fault, Interrupt, Scenario
from harness.pipeline.runner import RunConfig, run_scenario

RANKS = Path(__file__).resolve().parent.parent / "fixtures" / "ranks"


def _run(tmp_path: Path, scenario: Scenario):
    config = RunConfig(run_dir=tmp_path / "run", tp_command=(sys.executable, "-m", "fake_tp"), cwd=RANKS,
                       deadline_s=8.0)
    return run_scenario(scenario, config)


def test_a_skipped_call_is_named_where_it_was_skipped_not_where_a_rank_ran_out(tmp_path) -> None:
    # Chunk 1 is seq 4 (its barrier), then calls 4, 5, 6 at seq 5, 6, 7; rank 1 skips call 5.
    skip = Fault(site="fake.call", action="set(skip)", rank=1, call=5)
    scenario = Scenario(id="FM-03/skip", title="t", proves="lockstep", faults=(skip,), chunks=3,
                        expect=Expect.crash({0: r"TP-FATAL .*code=FAKE_TIMEOUT"}),
                        env={"FAKE_FLIGHT": "1", "FAKE_CALLS": "3", "FAKE_TIMEOUT_S": "1"})
    result = _run(tmp_path, scenario)
    assert result.observed == "CRASHED" and result.passed, result.reason
    div = result.divergence
    assert (div["seq"], div["kind"]) == (6, "mismatch"), div["line"]
    assert ("seq 6: rank 0 all_reduce float32[4] (step 1, chunk 1) call_id 5 - rank 1 all_reduce float32[4] "
            "(step 2, chunk 1) call_id 6") in result.reason


def test_after_an_interrupt_the_crash_counts_from_it_and_a_start_up_trace_is_not_evidence(tmp_path) -> None:
    scenario = Scenario(id="FM-14/interrupt", title="t", proves="watchdog", chunks=200,
                        interrupt=Interrupt(rank=1, signal="SIGKILL", after_chunk=3),
                        expect=Expect.crash({0: r"TP-FATAL .*code=FAKE_TIMEOUT"}),
                        env={"FAKE_FLIGHT": "1", "FAKE_TRACE_AT_INIT": "1", "FAKE_CHUNK_S": "0.5",
                             "FAKE_TIMEOUT_S": "1"})
    result = _run(tmp_path, scenario)
    assert result.observed == "CRASHED" and result.passed, result.reason
    assert result.anchor == "interrupt" and "after interrupt" in result.reason
    assert 0.5 <= result.time_to_crash_s < 2.5, result.time_to_crash_s  # from init it would be over 3 s
    assert result.root_cause["rank"] == 1 and "interrupt" in result.root_cause["how"]
    assert "no collective yet" not in result.divergence["line"], result.divergence["line"]
    assert "rank 1 has no flight trace (its newest trace (init, written at mono" in result.divergence["line"]
