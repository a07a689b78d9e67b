"""``python -m harness explore``: the generator, the invariant checker, the shrinker, and a planted bug found.

Only the last test runs ranks (a handful of short runs); the rest is pure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from harness.declare.fault import Fault
from harness.explore import invariant
from harness.explore import schedules as explore
from harness.judge.result import RankResult, Result
from tp import failpoints

REPO = Path(__file__).resolve().parent.parent
SITES = [failpoints.declared(site) for site in failpoints.SITES]  # what `python -m tp --list-failpoints` prints


def _schedules(seed: int, n: int = 30, sizes=(2, 4), per_run=(1, 3)) -> list[explore.Schedule]:
    return [explore.generate(seed, i, SITES, world_sizes=sizes, faults_per_run=per_run) for i in range(n)]


def test_the_same_seed_gives_the_same_schedules_and_another_seed_others() -> None:
    assert _schedules(7) == _schedules(7)
    assert _schedules(7) != _schedules(8)
    # Schedule i is a function of (seed, i) alone: replaying one needs none of the others.
    assert explore.generate(7, 12, SITES, world_sizes=(2, 4), faults_per_run=(1, 3)) == _schedules(7)[12]


def test_generated_faults_are_valid_for_the_tp_path_and_stay_within_the_options() -> None:
    schedules = _schedules(3, n=200)
    by_site = {s["site"]: s for s in SITES}
    for s in schedules:
        assert s.world_size in (2, 4) and 1 <= len(s.faults) <= 3
        failpoints.parse(";".join(f.spec() for f in s.faults))  # raises on anything the TP path would refuse
        for f in s.faults:
            ranks = by_site[f.site]["ranks"]
            assert f.rank is not None and 0 <= f.rank < s.world_size
            assert (ranks != "driver" or f.rank == 0) and (ranks != "workers" or f.rank >= 1)
    passes = len(SITES) * max(len(site["actions"]) for site in SITES)  # deck_pair: every pair within these
    first_actions = {(s.faults[0].site, s.faults[0].action.partition("(")[0]) for s in schedules[:passes]}
    assert len(first_actions) == len(explore.pairs(SITES)), f"{passes} schedules' first faults cover every pair"


def test_the_first_pass_of_the_deck_starts_one_schedule_at_every_site_placed_where_it_fires() -> None:
    by_site = {s["site"]: s for s in SITES}
    for seed in (1, 2, 3):
        schedules = _schedules(seed, n=3 * len(SITES))
        assert {s.faults[0].site for s in schedules[:len(SITES)]} == set(by_site)
        for s in schedules:
            first, site = s.faults[0], by_site[s.faults[0].site]
            action = next(a for a in site["actions"] if a["action"] == first.action.partition("(")[0])
            assert first.call is None and first.hit in (1, None)
            if site["chunked"]:  # a chunk where the site is passed and the action means what it says
                assert explore.first_chunk(site, action) <= first.chunk < s.chunks
            for later in s.faults[1:]:  # after the first fault, never before it: it cannot pre-empt it
                assert later.chunk is not None and later.chunk > (first.chunk if first.chunk is not None else -1)
    replay = next(s for s in _schedules(1, n=200) if s.faults[0].action == "flip"
                  and s.faults[0].site in ("driver.late_result", "worker.replay"))
    assert replay.chunks == 5 and replay.faults[0].chunk == 4, "a late result needs the hard cut at chunk 4"


def test_the_reproducer_is_one_run_command_holding_the_whole_schedule() -> None:
    s = explore.Schedule(world_size=4, faults=(Fault(site="driver.idle", action="kill(SIGSTOP)", rank=0, chunk=1),
                                                Fault(site="generator.call", action="sleep(0.2)", rank=3, hit=1)),
                         env=(("TP_EXTRA", "x"),), knobs=(("TP_PROGRESS_TIMEOUT_S", "1"),))
    line = s.reproducer()
    assert line.startswith("python -m harness run --fault 'driver.idle=kill(SIGSTOP)@rank=0,chunk=1' ")
    assert "--fault 'generator.call=sleep(0.2)@rank=3,hit=1'" in line and "--expect crash --world-size 4" in line
    assert "--env TP_PROGRESS_TIMEOUT_S=1" in line and "--env TP_EXTRA=x" in line
    assert s.expect().frozen == {0}
    assert explore.Schedule(world_size=2, faults=(Fault(site="generator.call", action="sleep(0.2)", rank=1),)
                            ).reproducer().count("--expect clean") == 1


def test_shrinking_finds_the_smallest_schedule_that_still_violates() -> None:
    culprit = Fault(site="envelope.after_recv", action="corrupt(last)", rank=3, chunk=3, hit=3)
    noise = (Fault(site="generator.call", action="sleep(0.2)", rank=2, chunk=2, hit=1),
             Fault(site="driver.idle", action="raise", rank=0, call=9, hit=2))
    big = explore.Schedule(world_size=4, faults=(noise[0], culprit, noise[1]))
    runs = []

    def violates(s: explore.Schedule) -> bool:
        runs.append(s)
        return any(f.site == "envelope.after_recv" and f.action == "corrupt(last)" for f in s.faults)

    small, tries = explore.shrink(big, violates, max_runs=200)
    assert small == explore.Schedule(world_size=2, faults=(replace(culprit, rank=1, chunk=0, hit=1),))
    assert tries == len(runs) < 200
    assert explore.shrink(big, violates, max_runs=2)[1] == 2


def _result(observed: str, exits: list[tuple[int | None, str | None]], **kw) -> Result:
    ranks = [RankResult(rank=r, pid=100 + r, exit=str(rc), returncode=rc, code=code, frozen=kw.pop(f"frozen{r}", False))
             for r, (rc, code) in enumerate(exits)]
    base = dict(id="explore/0000", fm="adhoc", title="t", proves="adhoc", guardrails="all", faults=[],
                world_size=len(exits), chunks=4, backend="gloo", launch="zygote", deadline_s=8.0, expected=[],
                observed=observed, passed=True, reason="r", time_to_crash_s=0.3, ranks=ranks,
                root_cause={"rank": 0, "code": "FAULT_INJECTED", "line": "TP-FATAL ..."})
    return Result(**{**base, **kw})


KILL1 = (Fault(site="generator.call", action="kill(SIGKILL)", rank=1, chunk=1),)


@pytest.mark.parametrize(("result", "faults", "broken"), [
    (_result("CRASHED", [(50, "PEER_LOST"), (-9, None)]), KILL1, ""),
    (_result("CRASHED", [(50, "PEER_LOST"), (-15, None)]), KILL1, "rank 1 SIGTERM|-15 outside the crash-only"),
    (_result("CRASHED", [(1, None), (-9, None)], root_cause={"rank": 0, "code": None, "line": "exit 1"}), KILL1,
     "outside the crash-only contract"),
    (_result("CRASHED", [(50, "PEER_LOST"), (0, None)]), (), "exited 0 while its peers crashed"),
    (_result("CRASHED", [(51, "PEER_ABORT"), (-9, None)], frozen1=True),
     (Fault(site="driver.idle", action="kill(SIGSTOP)", rank=1),), ""),
    (_result("CRASHED", [(50, "PEER_LOST"), (-9, None)], time_to_crash_s=9.5), KILL1, "deadline 8"),
    (_result("HUNG", [(None, None), (None, None)]), KILL1, "observed HUNG"),
    (_result("DIVERGED", [(0, None), (0, None)]), KILL1, "observed DIVERGED"),
    (_result("CLEAN", [(0, None), (0, None)], digests={"rank0_final": "a", "baseline": "a"}), KILL1, ""),
    (_result("CRASHED", [(47, "FAULT_INJECTED"), (51, "PEER_ABORT")]),
     (Fault(site="generator.call", action="sleep(0.2)", rank=0),), "rule short-sleep"),
    (_result("CLEAN", [(0, None), (0, None)], leftovers=["pid 7"]), KILL1, "left behind: pid 7"),
    (_result("CRASHED", [(0, None), (-9, None)], digests={"rank0_final": "b", "baseline": "a"}), KILL1,
     "rank 0 first served output b, not the healthy run's a"),
    (_result("CRASHED", [(0, None), (-9, None)], digests={"rank0_final": "a", "baseline": "a"}), KILL1,
     "exited 0 while its peers crashed"),
])
def test_the_invariant_checker(result: Result, faults: tuple, broken: str) -> None:
    found = invariant.check(result, faults, progress_timeout_s=1.0)
    if not broken:
        assert found == []
    else:
        assert found and any(part in " ".join(found) for part in broken.split("|")), found


def test_rules_narrow_the_outcome_only_when_every_fault_is_benign_and_cite_the_one_table() -> None:
    sleep = Fault(site="generator.call", action="sleep(0.2)", rank=1)
    late = Fault(site="driver.late_result", action="flip", rank=0, chunk=2)
    long_sleep = Fault(site="generator.call", action="sleep(1.5)", rank=1)
    allowed, rules = invariant.allowed_outcomes((sleep, late), progress_timeout_s=1.0)
    assert allowed == {"CLEAN"} and rules == ["fenced-late-result", "short-sleep"]
    assert set(rules) <= set(invariant.RULES)
    assert invariant.allowed_outcomes((sleep, long_sleep), progress_timeout_s=1.0) == ({"CLEAN", "CRASHED"}, [])
    assert invariant.allowed_outcomes((sleep, *KILL1), progress_timeout_s=1.0) == ({"CLEAN", "CRASHED"}, [])


def _first_seed_planting(action: str) -> int:
    """The first seed whose schedule 0, over envelope.after_recv alone, is the one fault ``action`` at ws 2."""
    sites = [s for s in SITES if s["site"] == "envelope.after_recv"]
    for seed in range(1000):
        s = explore.generate(seed, 0, sites, world_sizes=(2,), faults_per_run=(1, 1))
        f = s.faults[0]
        if f.action == action and f.hit in (1, None) and f.chunk is not None:
            return seed
    raise AssertionError(f"no seed below 1000 draws {action}")


def _planted_tp(tmp_path: Path) -> Path:
    """A scratch copy of tp/ whose digest guardrail hashes only the first byte of what it compares (the bug
    explore must find). The product has no switch for it: the mutation lives in this copy only."""
    root = tmp_path / "planted"
    shutil.copytree(REPO / "tp", root / "tp", ignore=shutil.ignore_patterns("__pycache__"))
    envelope = root / "tp" / "envelope.py"
    text = envelope.read_text()
    anchor = "    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), \"little\") >> 1\n"
    assert text.count(anchor) == 1, "tp.envelope.digest changed shape: update the planted bug"
    envelope.write_text(text.replace(anchor, "    data = data[:1]\n" + anchor))
    return root


@pytest.mark.timeout(240)
def test_a_planted_guardrail_bug_is_found_shrunk_and_reproduced_alone(tmp_path: Path) -> None:
    """The digest guardrail made to compare only the first byte (in a scratch copy of tp/): explore reports a
    violation, and its reproducer, run alone there, fails the same way (DIVERGED where the guardrail crashes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    planted = _planted_tp(tmp_path)
    seed = _first_seed_planting("corrupt(last)")
    cmd = [sys.executable, "-m", "harness", "explore", "--seed", str(seed), "--runs", "1", "--world-size", "2",
           "--faults-per-run", "1", "--sites", "envelope.after_recv", "--max-shrink", "2",
           "--report-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=planted, env=env, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 violations" in proc.stdout and "explore: 1 runs" in proc.stderr
    run_dir = next(tmp_path.glob("2*"))
    doc = json.loads((run_dir / "explore.json").read_text())
    (violation,) = doc["violations"]
    assert violation["observed"] == "DIVERGED" and (run_dir / "violations" / "0000.json").is_file()
    assert doc["runs"][0]["fired"] == ["envelope.after_recv=corrupt"]
    line = violation["reproducer"]
    assert line in proc.stdout

    rerun = line.replace("python -m", f"{sys.executable} -m", 1)
    alone = subprocess.run(["bash", "-c", rerun + f" -q --report-dir {tmp_path / 'alone'}"],
                           cwd=planted, env=env, capture_output=True, text=True, timeout=120)
    assert alone.returncode == 1 and "observed DIVERGED" in alone.stdout, alone.stdout + alone.stderr
    # With the product's own tp/ the same schedule keeps the invariant: the violation is the planted bug, nothing else.
    healthy = subprocess.run(["bash", "-c", rerun + f" -q --report-dir {tmp_path / 'healthy'}"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert healthy.returncode == 0 and "observed CRASHED" in healthy.stdout, healthy.stdout + healthy.stderr


def test_the_report_counts_coverage_and_the_time_to_crash_distribution() -> None:
    from harness.explore import report as explore_report

    sites = [{"site": "a.b", "actions": [{"action": "raise"}, {"action": "hang"}]},
             {"site": "c.d", "actions": [{"action": "flip"}]}]
    runs = [{"schedule": {"faults": ["a.b=raise@rank=0", "c.d=flip@rank=1,chunk=2"]}, "fired": ["a.b=raise"]},
            {"schedule": {"faults": ["a.b=raise@rank=1"]}, "fired": ["a.b=raise"]}]
    cov = explore_report.coverage(runs, sites)
    assert cov["pairs"]["a.b=raise"] == {"scheduled": 2, "fired": 2}
    assert cov["never_fired"] == ["c.d=flip"] and cov["never_scheduled"] == ["a.b=hang"]
    assert cov["per_site"]["a.b"] == {"scheduled": 2, "fired": 2} and cov["sites_fired"] == ["a.b"]
    assert cov["per_action"]["flip"] == {"scheduled": 1, "fired": 0}
    dist = explore_report.distribution([3.0, 1.0, 2.0, 10.0])
    assert dist == {"count": 4, "min": 1.0, "median": 2.5, "p90": 10.0, "max": 10.0}
    assert explore_report.distribution([]) == {"count": 0}


@pytest.mark.timeout(300)
def test_the_first_pass_fires_every_site_with_two_runs_at_a_time(tmp_path: Path) -> None:
    """Real ranks: 16 schedules, two at a time, start at the 16 sites and each first fault fires; the report
    lists them in schedule order, each the schedule its index generates alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    cmd = [sys.executable, "-m", "harness", "explore", "--seed", "1", "--runs", str(len(SITES)), "--jobs", "2",
           "--report-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(next(tmp_path.glob("2*/explore.json")).read_text())
    assert doc["meta"]["jobs"] == 2 and [r["index"] for r in doc["runs"]] == list(range(len(SITES)))
    for r in doc["runs"]:
        first = explore.generate(1, r["index"], SITES, world_sizes=(2, 4), faults_per_run=(1, 3)).faults[0]
        assert r["schedule"]["faults"][0] == first.spec()
        assert f"{first.site}={first.action.partition('(')[0]}" in r["fired"], r
    assert doc["coverage"]["sites_fired"] == sorted(s["site"] for s in SITES)


def test_jobs_default_to_the_cores_and_stay_one_where_a_rank_serves_the_store() -> None:
    assert 1 <= explore.jobs_for(None, "zygote") <= 4 and explore.jobs_for(3, "subprocess") == 3
    assert explore.jobs_for(None, "srun") == 1 and explore.jobs_for(1, "torchrun") == 1
    for bad, launch in ((2, "srun"), (0, "zygote")):
        with pytest.raises(ValueError, match="--jobs"):
            explore.jobs_for(bad, launch)


def test_explore_tunes_only_the_knobs_the_tp_path_declares() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "fixtures" / "ranks")])}
    assert explore.tuned((sys.executable, "-m", "tp"), env) == (("TP_PROGRESS_TIMEOUT_S", "1"),
                                                                 ("TP_HANDSHAKE_TIMEOUT_S", "3"),
                                                                 ("TP_STARTUP_TIMEOUT_S", "6"))
    assert explore.tuned((sys.executable, "-m", "fake_tp"), env) == ()  # it declares none (no --list-env)
    plain = explore.Schedule(world_size=2, faults=(Fault(site="fake.chunk", action="raise", rank=0),))
    assert "--env" not in plain.reproducer() and plain.rank_env() == {}


def test_a_reproducer_carries_the_run_and_reruns_verbatim_from_a_new_shell(tmp_path: Path) -> None:
    from harness.pipeline.runner import RunConfig

    config = RunConfig(run_dir=tmp_path / "run", tp_command=(sys.executable, "-m", "fake_tp"),
                       cwd=REPO / "fixtures" / "ranks", launch="subprocess", deadline_s=5.0)
    schedule = explore.Schedule(world_size=3, chunks=3,
                                faults=(Fault(site="fake.chunk", action="raise", rank=2, chunk=1),))
    line = schedule.reproducer(config=config)
    assert line.startswith(f"cd {REPO / 'fixtures' / 'ranks'} && python -m harness run "), line
    assert "--tp-command 'python -m fake_tp'" in line and "--launch subprocess" in line, line
    assert "--world-size 3" in line and "--deadline 5" in line, line
    # A new shell with this interpreter first on PATH, anywhere: the line alone says how the run ran.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    proc = subprocess.run(["bash", "-c", line + f" -q --report-dir {tmp_path / 'reports'}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "observed CRASHED" in proc.stdout, proc.stdout + proc.stderr
    assert len(list((tmp_path / "reports").glob("2*/adhoc-ws3/result.json"))) == 1  # at the world size it ran


def test_explore_md_says_what_env_the_engine_ran_with() -> None:
    from harness.explore import report as explore_report

    given = explore_report.ran_with({"engine": "python e.py", "env": {"MY_PG_TIMEOUT_S": "3"}})
    assert given == "engine `python e.py` started as given, with --env MY_PG_TIMEOUT_S=3 and no env of explore's own."
    assert explore_report.ran_with({"engine": "python e.py"}).endswith("as given, no env of explore's own.")
