"""``grade --env`` and the card's delta, in process: no rank starts (the engine's runs are stand-ins).

An outside user graded an engine with ``MY_PG_TIMEOUT_S=3`` exported, then without it: the card had not recorded
it and reported "was CRASHED, now HUNG" as if the engine had changed. Then they narrowed ``--ops`` and the
delta called the rows they left out "removed". The real end-to-end run of ``--env`` is in test_engine_grade.py.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from harness.cli.parser import build
from harness.declare.selection import UsageError
from harness.engine import run as engine_run
from harness.grade import card
from harness.grade import run as grade_run
from harness.judge.result import Baseline, Result
from harness.report import files as report

ENGINE = "python my_engine.py"


def args(*words: str, reports: Path):
    return build().parse_args(["grade", "--engine", ENGINE, *words, "--report-dir", str(reports), "-q"])


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """Stand-ins for the engine's healthy runs and rows, recording the rank environment each was given; the
    row's outcome is ``seen["outcome"]`` (CRASHED unless a test says otherwise)."""
    seen: dict = {"healthy": [], "rows": [], "outcome": "CRASHED"}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_engine.py").write_text("")  # grade refuses an engine script that is not there
    log = tmp_path / "healthy"
    log.mkdir()
    (log / "rank1.log").write_text("TP-FAULT site=collective.all_reduce op=all_reduce\n" * 4)

    def healthy(config, *, world_size, output_regex, watch="", env=None):
        seen["healthy"].append(dict(env or {}))
        return Baseline(ok=True, digest="d", where=str(log), elapsed_s=1.0)

    def run_engine(scenario, config, *, output_regex=None, deadline_s=None, healthy_env=None):
        seen["rows"].append((dict(scenario.env), dict(healthy_env or {})))
        crashed = seen["outcome"] == "CRASHED"
        return Result(id=scenario.id, fm="adhoc", title="t", proves="adhoc", guardrails=None, faults=[],
                      world_size=scenario.world_size, chunks=1, backend="engine", launch="subprocess", deadline_s=8.0,
                      expected=["CRASHED"], observed=seen["outcome"], passed=crashed, reason="stand-in",
                      time_to_crash_s=1.0 if crashed else None, first_failure_s=1.0 if crashed else None)

    names = (f"20260101-0000{n:02d}-1" for n in itertools.count())
    monkeypatch.setattr(engine_run, "healthy", healthy)
    monkeypatch.setattr(engine_run, "run_engine", run_engine)
    monkeypatch.setattr(report, "run_dir_name", lambda: next(names))
    return seen


def test_env_is_parsed_like_runs_and_needs_an_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reports = tmp_path / "reports"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_engine.py").write_text("")
    asked = grade_run._inputs(args("--env", "MY_PG_TIMEOUT_S=3", "--env", "OPTS=a=b", reports=reports))
    assert asked.env == {"MY_PG_TIMEOUT_S": "3", "OPTS": "a=b"}
    with pytest.raises(UsageError, match=r"bad --env '3X=1': expected NAME=VALUE, e.g. TP_PROGRESS_TIMEOUT_S=1"):
        grade_run._inputs(args("--env", "3X=1", reports=reports))
    bare = build().parse_args(["grade", "--env", "A=1", "--report-dir", str(reports)])
    with pytest.raises(UsageError, match=r"--env sets an engine's rank environment: it needs --engine"):
        grade_run._inputs(bare)


def test_env_reaches_every_row_and_the_healthy_run_and_only_a_grade_with_the_same_env_is_compared(
        fake_engine: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reports = tmp_path / "reports"
    env = {"MY_PG_TIMEOUT_S": "3"}
    common = ("--world-sizes", "2", "--actions", "hang,raise")
    assert grade_run.cmd_grade(args(*common, "--env", "MY_PG_TIMEOUT_S=3", reports=reports)) == 0
    assert fake_engine["healthy"] == [env] and fake_engine["rows"] == [(env, env), (env, env)]
    first = reports / "20260101-000000-1"
    doc = json.loads((first / "grade.json").read_text())
    assert doc["settings"]["env"] == env and doc["settings"]["actions"] == ["hang", "raise"]
    assert "; world sizes 2; `--env MY_PG_TIMEOUT_S=3`; each row" in (first / "grade.md").read_text()

    fake_engine["outcome"] = "HUNG"  # without its timeout the engine hangs: another configuration, not a change
    assert grade_run.cmd_grade(args(*common, reports=reports)) == 0
    assert fake_engine["healthy"][-1] == {} and fake_engine["rows"][-1] == ({}, {})
    doc = json.loads((reports / "20260101-000001-1" / "grade.json").read_text())
    assert doc["delta"]["baseline"] is None and doc["settings"]["env"] == {}
    assert doc["delta"]["note"].endswith(f"with the same settings in {reports}; not compared with 1 of it with "
                                         "other ones (the newest 20260101-000000-1: other env)"), doc["delta"]["note"]
    assert "world sizes 2; each row" in (reports / "20260101-000001-1" / "grade.md").read_text()

    fake_engine["outcome"] = "CRASHED"
    assert grade_run.cmd_grade(args(*common, "--env", "MY_PG_TIMEOUT_S=3", reports=reports)) == 0
    doc = json.loads((reports / "20260101-000002-1" / "grade.json").read_text())
    assert doc["delta"]["baseline"] == str(first) and doc["delta"]["outcome_changes"] == []
    assert "since the last grade with --env MY_PG_TIMEOUT_S=3 (20260101-000000-1): no change" in capsys.readouterr().out


def row(ws: int, op: str, action: str, outcome: str = "CRASHED") -> dict:
    return {"key": f"ws{ws} {op} {action}", "world_size": ws, "op": op, "action": action, "call": 3,
            "fault": f"collective.{op}={action}@rank=1,call=3", "outcome": outcome, "time_to_crash_s": 1.0,
            "first_failure_s": 1.0, "named_ranks": [], "root_cause_rank": 1, "first_divergent": None, "sentence": "s"}


def settings(world_sizes: list[int], actions: list[str], ops: list[str] | None = None, **more) -> dict:
    return {"world_sizes": world_sizes, "actions": actions, "ops": ops, "env": {}, **more}


def test_rows_left_out_by_narrower_ops_actions_or_world_sizes_are_not_removed(tmp_path: Path) -> None:
    full = [row(ws, op, a) for ws in (2, 4) for op in ("all_reduce", "broadcast") for a in ("hang", "raise")]
    card.write(tmp_path / "20260101-000000-1", graded=ENGINE, rows=full, settings=settings([2, 4], ["hang", "raise"]))
    narrow = card.write(tmp_path / "20260101-000001-1", graded=ENGINE, rows=[row(2, "all_reduce", "hang", "HUNG")],
                        settings=settings([2], ["hang"], ["all_reduce"]))
    d = narrow["delta"]
    assert d["removed"] == [] and d["added"] == [] and len(d["not_graded_now"]) == 7 and d["compared"] == 1
    assert card.delta_lines(d) == [
        "since the last grade (20260101-000000-1): 1 outcome changed in the 1 row graded both times",
        "  ws2 all_reduce hang: was CRASHED, now HUNG",
        "  not graded this time (narrower --ops/--actions/--world-sizes): 7 rows of that grade, not compared"]

    # Back to the full matrix: the rows the narrow grade left out are new to the comparison, not to the engine;
    # a row asked for both times that is no longer there (the engine stopped issuing broadcast) is removed.
    wider = [r for r in full if r["op"] != "broadcast"]
    d = card.write(tmp_path / "20260101-000002-1", graded=ENGINE, rows=wider,
                   settings=settings([2, 4], ["hang", "raise"]))["delta"]
    assert d["added"] == [] and d["not_graded_then"] == ["ws2 all_reduce raise", "ws4 all_reduce hang",
                                                         "ws4 all_reduce raise"]
    assert d["removed"] == [] and d["not_graded_now"] == []
    d = card.write(tmp_path / "20260101-000003-1", graded=ENGINE, rows=wider[:3],
                   settings=settings([2, 4], ["hang", "raise"]))["delta"]
    assert d["removed"] == ["ws4 all_reduce raise"] and d["not_graded_now"] == []
    assert "  removed ws4 all_reduce raise (asked for this time, but no longer a row)" in card.delta_lines(d)


def test_a_card_from_before_env_was_recorded_is_the_baseline_of_a_grade_without_env(tmp_path: Path) -> None:
    old = tmp_path / "20260101-000000-1"
    old.mkdir()
    (old / "grade.json").write_text(json.dumps({"graded": ENGINE, "settings": {"world_sizes": [2]},
                                                "rows": [row(2, "all_reduce", "hang")]}))
    d = card.write(tmp_path / "20260101-000001-1", graded=ENGINE, rows=[row(2, "all_reduce", "hang")],
                   settings=settings([2], ["hang"]))["delta"]
    assert d["baseline"] == str(old) and d["removed"] == d["added"] == d["not_graded_now"] == []


def test_a_grade_with_another_rank_or_hang_after_is_not_compared_row_against_row(fake_engine, tmp_path) -> None:
    reports = tmp_path / "reports"
    common = ("--world-sizes", "2", "--ops", "all_reduce", "--actions", "hang")
    assert grade_run.cmd_grade(args(*common, "--hang-after", "8", reports=reports)) == 0
    assert grade_run.cmd_grade(args(*common, "--hang-after", "20", reports=reports)) == 0
    doc = json.loads(sorted(reports.glob("2*/grade.json"))[-1].read_text())
    assert doc["delta"]["baseline"] is None and doc["delta"]["note"].endswith("other hang_after_s)"), doc["delta"]
    assert grade_run.cmd_grade(args(*common, "--hang-after", "20", reports=reports)) == 0
    doc = json.loads(sorted(reports.glob("2*/grade.json"))[-1].read_text())
    assert doc["delta"]["baseline"] is not None, doc["delta"]
