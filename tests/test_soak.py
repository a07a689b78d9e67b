"""tools/soak.py's own parts: JUnit outcomes, flake counting, busy loops that never outlive their block."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from harness.launch import wait_gone
from tools.soak import busy_loops, flakes, junit_outcomes

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
  <testcase classname="scenarios.test_fm01" name="test_fm01[FM-01]" time="1.0"/>
  <testcase classname="scenarios.test_fm01" name="test_fm01[FM-01/off]" time="9.0"><failure message="x">y</failure></testcase>
  <testcase classname="scenarios.test_fm13" name="test_fm13[FM-13]" time="1.0"><error message="e"/></testcase>
  <testcase classname="scenarios.test_ctl" name="test_ctl[CTL-x]" time="0"><skipped message="s"/></testcase>
</testsuite></testsuites>
"""


def test_junit_outcomes_name_each_test_and_its_outcome(tmp_path: Path) -> None:
    (tmp_path / "junit.xml").write_text(JUNIT)
    assert junit_outcomes(tmp_path / "junit.xml") == {
        "scenarios.test_fm01::test_fm01[FM-01]": "passed", "scenarios.test_fm01::test_fm01[FM-01/off]": "failed",
        "scenarios.test_fm13::test_fm13[FM-13]": "error", "scenarios.test_ctl::test_ctl[CTL-x]": "skipped",
    }
    assert junit_outcomes(tmp_path / "missing.xml") == {}


def test_a_flake_is_a_scenario_whose_outcome_changed_between_runs() -> None:
    runs = [{"outcomes": {"a": "passed", "b": "failed"}}, {"outcomes": {"a": "failed", "b": "failed"}},
            {"outcomes": {"a": "passed"}}]
    assert flakes(runs) == {"a": {"runs": 3, "passed": 2, "failed": 1, "flaky": True},
                            "b": {"runs": 2, "failed": 2, "flaky": False}}


def test_busy_loops_are_killed_when_their_block_ends_even_by_an_exception() -> None:
    with pytest.raises(RuntimeError), busy_loops(2) as pids:
        procs = [psutil.Process(pid) for pid in pids]
        assert all(p.status() != psutil.STATUS_ZOMBIE for p in procs)
        raise RuntimeError("the suite crashed")
    assert wait_gone(procs, timeout_s=5) == []
