"""Zero-touch mode against a real third-party engine: ``fixtures/engines/dtensor_engine.py``, unmodified.

Real ranks (plain processes, torchrun's env), real gloo process groups, DTensor's own collectives: the
bootstrap on ``PYTHONPATH`` is the only thing the harness adds. Each run costs a few seconds of a rank's
start-up (torch, DTensor), so the cases share one report run.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import psutil
import pytest

from harness.declare import adhoc
from harness.engine.run import run_engine
from harness.pipeline.runner import RunConfig
from harness.supervise import logs

ROOT = Path(__file__).resolve().parents[1]
ENGINE = (sys.executable, str(ROOT / "fixtures" / "engines" / "dtensor_engine.py"))
SEQ_OF_THIRD_ALL_REDUCE = 18
"""The engine's collectives on the default group: 15 weight scatters (distribute_tensor), the prompt's
broadcast, then the first layer's all_reduces: its third all_reduce is seq 15 + 1 + 2 = 18."""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> RunConfig:
    # Deadlines with room for a loaded 2-core box: a healthy rank spends seconds importing torch and DTensor.
    return RunConfig(run_dir=tmp_path_factory.mktemp("engine"), world_size=2, launch="subprocess",
                     tp_command=ENGINE, deadline_s=60.0, run_timeout_s=180.0, startup_deadline_s=120.0, cwd=ROOT)


def _run(config: RunConfig, fault: str, expect: str, world_size: int | None = None):
    scenario = adhoc.scenario(faults=[fault] if fault else [], expect=expect, signatures=[], env=[])
    scenario = dataclasses.replace(scenario, world_size=world_size)
    result = run_engine(scenario, config)
    pids = [r.pid for r in result.ranks if r.pid]
    assert pids, result.reason
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"ranks left behind: {alive}"
    assert not result.leftovers, result.leftovers
    return result


def _traces(result) -> dict[int, dict]:
    return {r: json.loads((Path(result.dir) / f"flight_rank{r}.json").read_text()) for r in range(result.world_size)
            if (Path(result.dir) / f"flight_rank{r}.json").exists()}


def test_a_healthy_run_is_clean_and_matches_the_healthy_output(config: RunConfig) -> None:
    result = _run(config, "", "clean")
    assert result.observed == "CLEAN", result.reason
    assert result.digests.get("rank0_final") == result.digests.get("baseline") is not None


def test_sigkill_of_rank_1_at_its_third_all_reduce_is_a_crash(config: RunConfig) -> None:
    result = _run(config, "collective.all_reduce=kill(SIGKILL)@rank=1,call=3", "crash")
    assert result.observed == "CRASHED", result.reason
    ranks = {r.rank: r for r in result.ranks}
    assert ranks[1].returncode == -9
    assert ranks[0].code == "UNCAUGHT_EXCEPTION", ranks[0].log_tail  # gloo's error, as one structured line
    assert result.root_cause and result.root_cause.get("rank") == 1, result.root_cause


def test_under_torchrun_the_rank_its_agent_ends_after_a_sigkill_has_its_own_exit_status(config: RunConfig) -> None:
    # The agent SIGTERMs the survivor as soon as rank 1 dies: either that, or gloo's error, ends rank 0 first.
    result = _run(dataclasses.replace(config, launch="torchrun"), "collective.all_reduce=kill(SIGKILL)@rank=1,call=3",
                  "crash")
    assert result.observed == "CRASHED", result.reason
    ranks = {r.rank: r for r in result.ranks}
    assert ranks[1].returncode == -9 and ranks[0].returncode in (1, -15), result.reason
    assert "no exit status" not in result.reason


def test_under_torchrun_a_rank_the_harness_reaps_has_the_exit_status_it_gave_it(config: RunConfig) -> None:
    # The frozen rank's shell dies with it in the reaping's SIGKILL, so no status file is written: the harness
    # knows what it sent. Rank 0's own 3 s timeout ends it first (a CRASHED run, rank 1 reaped when alone).
    scenario = adhoc.scenario(faults=["collective.all_reduce=kill(SIGSTOP)@rank=1,call=3"], expect="crash",
                              signatures=[], env=["ENGINE_PG_TIMEOUT_S=3"])
    result = run_engine(scenario, dataclasses.replace(config, launch="torchrun"))
    assert result.observed == "CRASHED", result.reason
    ranks = {r.rank: r for r in result.ranks}
    assert ranks[1].returncode == -9 and ranks[1].frozen and ranks[1].reaped, result.reason
    assert "no exit status" not in result.reason and result.root_cause["rank"] == 1, result.reason


def test_under_torchrun_2node_the_ranks_pids_are_known_and_a_hang_is_proven_from_traces(config: RunConfig) -> None:
    # The pids arrive from pid files after the supervisor starts: a copy taken then said "pid None", sent no
    # stack request and left the hang to the deadline.
    result = _run(dataclasses.replace(config, launch="torchrun-2node"), "collective.all_reduce=hang@rank=1,call=3",
                  "hang")
    assert result.observed == "HUNG" and all(r.pid for r in result.ranks), result.reason
    assert result.hang_verdict_s is not None and result.hang_verdict_s < 30, result.reason
    assert "pid None" not in result.reason


def test_raise_in_rank_1s_all_reduce_is_a_crash_named_by_one_fatal_line(config: RunConfig) -> None:
    result = _run(config, "collective.all_reduce=raise@rank=1,call=3", "crash")
    assert result.observed == "CRASHED", result.reason
    text = logs.read_text(Path(result.dir) / "rank1.log")
    fatal = [ln for ln in logs.contract_lines(text) if ln.kind == "TP-FATAL"]
    assert len(fatal) == 1 and fatal[0].fields["code"] == "UNCAUGHT_EXCEPTION" and fatal[0].fields["rank"] == "1"
    assert fatal[0].fields["type"] == "InjectedFault", fatal[0].raw


def test_a_hang_in_rank_1s_third_all_reduce_is_hung_at_that_collective(config: RunConfig) -> None:
    result = _run(config, "collective.all_reduce=hang@rank=1,call=3", "hang")
    assert result.observed == "HUNG", result.reason
    assert result.divergence and result.divergence["seq"] == SEQ_OF_THIRD_ALL_REDUCE, result.divergence
    assert "rank 1 never entered it" in result.divergence["line"]
    for rank in result.ranks:  # every hung rank's stack, read with the GIL held (no SIGUSR1 death)
        assert rank.stack and "Thread 0x" in rank.stack, (rank.rank, rank.stack_note)
    assert "_breakit_faults.py" in next(r.stack for r in result.ranks if r.rank == 1)


def test_a_skipped_all_reduce_hangs_and_the_traces_part_where_it_was_skipped(config: RunConfig) -> None:
    result = _run(config, "collective.all_reduce=skip@rank=1,call=3", "hang")
    assert result.observed == "HUNG", result.reason
    traces = _traces(result)
    at = {r: next(e for e in doc["entries"] if e["seq"] == SEQ_OF_THIRD_ALL_REDUCE) for r, doc in traces.items()}
    # The same op and shape at that seq on both ranks, but not the same call: rank 1 skipped its third.
    assert at[0]["op"] == at[1]["op"] == "all_reduce"
    assert (at[0]["site"], at[1]["site"]) == ("all_reduce call 3", "all_reduce call 4")
    for rank in result.ranks:
        assert rank.stack, (rank.rank, rank.stack_note)


def test_an_extra_all_reduce_hangs_and_the_traces_part_where_it_was_repeated(config: RunConfig) -> None:
    result = _run(config, "collective.all_reduce=extra@rank=1,call=3", "hang")
    assert result.observed == "HUNG", result.reason
    traces = _traces(result)
    sites = {r: {e["seq"]: e["site"] for e in doc["entries"]} for r, doc in traces.items()}
    seq = SEQ_OF_THIRD_ALL_REDUCE
    assert sites[0][seq] == sites[1][seq] == "all_reduce call 3"
    assert (sites[0][seq + 1], sites[1][seq + 1]) == ("all_reduce call 4", "all_reduce call 3")


def test_at_world_size_4_a_hang_in_rank_1_leaves_every_peer_in_that_collective(config: RunConfig) -> None:
    result = _run(config, "collective.all_reduce=hang@rank=1,call=3", "hang", world_size=4)
    assert result.observed == "HUNG", result.reason
    assert result.divergence and result.divergence["seq"] == SEQ_OF_THIRD_ALL_REDUCE, result.divergence
    for peer in (0, 2, 3):
        assert f"rank {peer} in seq {SEQ_OF_THIRD_ALL_REDUCE} all_reduce" in result.reason
    assert all(rank.stack for rank in result.ranks), [(r.rank, r.stack_note) for r in result.ranks]
