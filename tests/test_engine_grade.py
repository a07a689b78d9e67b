"""``python -m harness grade``: the report card, from the outside (the CLI in a subprocess, real ranks).

The fixture engine is graded on the smallest matrix that shows each outcome it has (ws 2, all_reduce, a hang,
a SIGKILL, a corruption it absorbs); the reference path on two rows, cheap under the zygote, which also carry
the delta test (a doctored earlier card with another outcome).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from harness.grade import plan

ROOT = Path(__file__).resolve().parents[1]
ENGINE = "python fixtures/engines/dtensor_engine.py"


def grade(*args: str, reports: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "grade", *args, "--report-dir", str(reports)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def card(proc: subprocess.CompletedProcess) -> tuple[Path, dict]:
    """The card's directory (the path printed last) and its grade.json."""
    last = proc.stdout.strip().splitlines()[-1]
    path = Path(last.rpartition("report card: ")[2])
    assert path.name == "grade.md" and path.exists(), proc.stdout + proc.stderr
    return path.parent, json.loads((path.parent / "grade.json").read_text())


def left_behind(run_dir: Path) -> list[int]:
    """Rank pids of every row still alive (zombies excepted)."""
    pids = [r["pid"] for p in run_dir.glob("grade.*/result.json") for r in json.loads(p.read_text())["ranks"]
            if r.get("pid")]
    assert pids, f"no rank of {run_dir} recorded a pid"
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def engine_card(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, dict]:
    # --hang-after counts from the fault: 12 s leaves the rows that end after it room on a loaded box.
    proc = grade("--engine", ENGINE, "--world-sizes", "2", "--ops", "all_reduce", "--actions",
                 "hang,kill(SIGKILL),corrupt", "--hang-after", "12", reports=tmp_path_factory.mktemp("reports"))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return (proc, *card(proc))


def test_each_row_of_the_engine_is_its_own_judged_outcome(engine_card) -> None:
    proc, run_dir, doc = engine_card
    rows = {r["action"]: r for r in doc["rows"]}
    assert list(rows) == ["hang", "kill(SIGKILL)", "corrupt"]
    assert {a: r["outcome"] for a, r in rows.items()} == {"hang": "HUNG", "kill(SIGKILL)": "CRASHED",
                                                          "corrupt": "CLEAN"}, [r["reason"] for r in doc["rows"]]
    # all_reduce's 3rd call after start-up: the engine's start-up (weight scatters, the prompt) issues none.
    assert {r["fault"] for r in doc["rows"]} >= {"collective.all_reduce=hang@rank=1,call=3"}
    kill = rows["kill(SIGKILL)"]
    assert kill["time_to_crash_s"] < 12 and kill["root_cause_rank"] == 1 and kill["named_ranks"] == []
    assert rows["hang"]["time_to_crash_s"] is None
    assert "seq 18" in rows["hang"]["first_divergent"] and "rank 1 never entered it" in rows["hang"]["first_divergent"]
    assert "rank 1 stuck in all_reduce (call 3): your engine hangs (no timeout fires within 12 s)" \
        == rows["hang"]["sentence"]
    assert not left_behind(run_dir)


def test_the_card_is_markdown_json_progress_and_latest(engine_card) -> None:
    proc, run_dir, doc = engine_card
    md = (run_dir / "grade.md").read_text()
    assert md.startswith(f"# Report card: `{ENGINE}`")
    assert md.count("| 2 | all_reduce (3) |") == 3 and "**HUNG**" in md and "**CRASHED**" in md
    assert "[2/3] all_reduce kill(SIGKILL) ws=2 ... CRASHED" in proc.stderr
    assert "ws=2: a healthy run, every collective printed" in proc.stderr and "all_reduce x" in proc.stderr
    assert (run_dir.parent / "latest").resolve() == run_dir
    assert doc["delta"]["baseline"] is None, "the first card of this engine has nothing to compare with"


def test_the_reference_path_crashes_fast_and_a_changed_outcome_leads_the_delta(tmp_path: Path) -> None:
    """Two reference rows come out CRASHED well inside the deadline; an earlier card doctored to say HUNG for one
    of them makes the next card list that row first, in the delta and in the table."""
    reports = tmp_path / "reports"
    args = ("--world-sizes", "2", "--actions", "hang,kill(SIGKILL)", "--ops", "all_reduce")
    first = grade(*args, reports=reports)
    assert first.returncode == 0, first.stdout + first.stderr[-3000:]
    run_dir, doc = card(first)
    assert [(r["action"], r["outcome"]) for r in doc["rows"]] == [("hang", "CRASHED"), ("kill(SIGKILL)", "CRASHED")]
    assert all(r["time_to_crash_s"] < 5 for r in doc["rows"]), [r["time_to_crash_s"] for r in doc["rows"]]
    assert [r["named_ranks"] for r in doc["rows"]] == [[1], [1]], "rank 0's PEER_* line names rank 1 (cause_rank=1)"
    assert not left_behind(run_dir)
    doc["rows"][1]["outcome"] = "HUNG"
    (run_dir / "grade.json").write_text(json.dumps(doc))
    second = grade(*args, reports=reports)
    assert second.returncode == 0, second.stdout + second.stderr[-3000:]
    again, now = card(second)
    assert now["delta"]["outcome_changes"] == [{"row": "ws2 all_reduce kill(SIGKILL)", "was": "HUNG",
                                                "now": "CRASHED"}]
    assert f"since the last grade ({run_dir.name}): 1 outcome changed" in second.stdout
    table = [ln for ln in (again / "grade.md").read_text().splitlines() if ln.startswith("| 2 |")]
    assert "**CRASHED** (was HUNG)" in table[0], table


def test_env_reaches_every_rank_of_the_rows_and_of_the_healthy_run(tmp_path: Path) -> None:
    """The fixture engine generates ENGINE_TOKENS tokens: the corrupted all_reduce it absorbs is CLEAN only if
    the healthy run it is compared with had the same --env (without it, 8 tokens: DIVERGED)."""
    proc = grade("--engine", ENGINE, "--world-sizes", "2", "--ops", "all_reduce", "--actions", "corrupt",
                 "--env", "ENGINE_TOKENS=3", reports=tmp_path / "reports")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    run_dir, doc = card(proc)
    assert [r["outcome"] for r in doc["rows"]] == ["CLEAN"], [r["reason"] for r in doc["rows"]]
    assert doc["settings"]["env"] == {"ENGINE_TOKENS": "3"}
    assert "; world sizes 2; `--env ENGINE_TOKENS=3`; each row" in (run_dir / "grade.md").read_text()
    assert "no earlier grade of 'python fixtures/engines/dtensor_engine.py' with --env ENGINE_TOKENS=3" in proc.stdout


@pytest.mark.parametrize("args, words", [
    (("--actions", "hang,explode"), ["unknown --actions explode", "valid: hang, skip"]),
    (("--rank", "2", "--world-sizes", "2"), ["--rank 2", "0..1"]),
    (("--ops", "all_gather"), ["--ops 'all_gather'", "all_reduce, broadcast"]),
    (("--engine", ENGINE, "--tp-command", "python -m tp"), ["give one"]),
    (("--engine", ENGINE, "--env", "MY_PG_TIMEOUT_S"), ["bad --env 'MY_PG_TIMEOUT_S': expected NAME=VALUE"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path: Path, args: tuple, words: list[str]) -> None:
    proc = grade(*args, reports=tmp_path / "reports", timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr
    assert not (tmp_path / "reports" / "latest").exists()


def test_start_up_is_the_prefix_the_steady_state_never_issues_again() -> None:
    """A DTensor engine's shape: weight scatters, the prompt's broadcast, then per token all_reduces, an
    all_gather and a broadcast; the default call is the 3rd after start-up (or the last of fewer)."""
    sequence = ["scatter"] * 4 + ["broadcast"] + ["all_reduce", "all_reduce", "all_gather", "broadcast"] * 3
    calls = plan.op_calls(sequence)
    assert list(calls) == ["broadcast", "all_reduce", "all_gather"]
    assert calls["broadcast"] == plan.OpCalls(startup=0, later=4) and calls["broadcast"].default_call() == 3
    assert calls["all_reduce"].default_call() == 3 and calls["all_gather"].default_call() == 3
    assert plan.op_calls(["scatter"] * 4 + ["all_reduce"])["all_reduce"].default_call() == 1


def test_an_engine_that_is_not_healthy_cannot_be_graded(tmp_path: Path) -> None:
    """No healthy run, no baseline to grade against: exit 1 with the reason, no card, 'latest' not moved."""
    engine = tmp_path / "broken_engine.py"
    engine.write_text("raise SystemExit(3)\n")
    proc = grade("--engine", f"python {engine}", "--world-sizes", "2", reports=tmp_path / "reports", timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the engine's healthy run at world size 2 is no baseline" in proc.stderr, proc.stderr
    assert not list((tmp_path / "reports").glob("*/grade.md")) and not (tmp_path / "reports" / "latest").exists()


def test_a_hang_whose_peers_own_timeout_fired_says_so() -> None:
    # An outside engineer's engine had a 5 s process-group timeout: rank 0 ended on it, rank 1 (parked in the
    # injected hang) never exited, and the card said "no timeout fires within 8 s". The card tells the two apart.
    from harness.grade.card import sentence
    from harness.grade.plan import Row

    row = Row(world_size=2, op="all_reduce", action="hang", fault="collective.all_reduce=hang@rank=1,call=3", rank=1,
              call=3)
    none = sentence(row, "HUNG", ttc=None, deadline=8.0, named=[], reason="")
    peer = sentence(row, "HUNG", ttc=None, deadline=8.0, named=[], reason="", ended=(0,))
    assert none.endswith("your engine hangs (no timeout fires within 8 s)"), none
    assert peer.endswith("your engine hangs (rank 0 ended on its own (its timeout fired), but the other ranks never "
                         "exited within 8 s)"), peer


def test_a_row_whose_last_rank_left_long_after_the_first_failure_shows_both() -> None:
    from harness.grade.card import markdown

    def row(key: str, ttc: float, first: float) -> dict:
        return {"key": key, "world_size": 2, "op": "all_reduce", "call": 3, "fault": key, "outcome": "CRASHED",
                "time_to_crash_s": ttc, "first_failure_s": first, "named_ranks": [], "root_cause_rank": 1,
                "first_divergent": None, "sentence": "s"}

    doc = {"graded": "python engine.py", "written": "now", "delta": {}, "settings": {"world_sizes": [2]},
           "rows": [row("slow-teardown", 9.2, 3.01), row("fast", 0.31, 0.3)]}
    text = markdown(doc)
    assert "| 9.200 s (first failure 3.010 s) |" in text and "| 0.310 s |" in text, text


def test_a_collective_that_carries_no_data_has_no_corrupt_row() -> None:
    calls = plan.op_calls(["all_reduce", "barrier", "all_reduce", "barrier"])
    rows = plan.engine_rows(2, calls, ops=None, actions=("hang", "corrupt"), rank=1, call=None)
    assert sorted((r.op, r.action) for r in rows) == [("all_reduce", "corrupt"), ("all_reduce", "hang"),
                                                      ("barrier", "hang")], rows
