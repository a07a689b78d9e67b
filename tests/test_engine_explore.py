"""``python -m harness explore --engine``: zero-touch schedules over the collectives an engine really issues.

The pure tests build schedules from discovery counts; the last ones run real ranks of a stand-in engine (real
gloo process groups, the bootstrap's real faults).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.declare.fault import Fault
from harness.engine import schedules
from harness.judge.result import Baseline
from harness.report.rows import shorten

COUNTS = {2: {0: {"all_reduce": 6, "broadcast": 2, "scatter": 3}, 1: {"all_reduce": 6, "scatter": 3}},
          4: {r: {"all_reduce": 6, "scatter": 3} for r in range(4)}}
"""What a discovery run could count: rank 1 never broadcasts at ws 2, nobody does at ws 4."""
OPS = ["all_reduce", "broadcast", "scatter"]


def _schedules(seed: int, n: int = 60) -> list[schedules.EngineSchedule]:
    return [schedules.generate(seed, i, COUNTS, ops=OPS, faults_per_run=(1, 3)) for i in range(n)]


def test_schedules_are_seeded_and_fault_only_calls_a_rank_really_makes() -> None:
    assert _schedules(5) == _schedules(5) != _schedules(6)
    assert schedules.generate(5, 17, COUNTS, ops=OPS, faults_per_run=(1, 3)) == _schedules(5)[17]
    for s in _schedules(5, n=200):
        assert 1 <= len(s.faults) <= 3 and s.env == ()
        for f in s.faults:
            op = f.site.partition(".")[2]
            assert 0 <= f.rank < s.world_size and 1 <= f.call <= COUNTS[s.world_size][f.rank][op], (s, f)
            assert f.action in schedules.ACTIONS
    pairs = len(OPS) * len(schedules.ACTIONS)
    firsts = {(s.faults[0].site, s.faults[0].action) for s in _schedules(5, n=pairs)}
    assert len(firsts) == pairs, "one pass of the deck starts a schedule at every (op, action)"


def test_a_schedule_is_supervised_and_reproduced_as_run_engine_would() -> None:
    hang = schedules.EngineSchedule(world_size=2, faults=(Fault.parse("collective.all_reduce=skip@rank=1,call=3"),))
    # What check() accepts is what the run is judged with: its own verdict is PASS exactly when it keeps the rule.
    assert hang.expect() == "clean,crash,hang" and hang.scenario("x").world_size == 2
    assert {o.value for o in hang.scenario("x").expect.outcomes} == {"CLEAN", "CRASHED", "HUNG"}
    straggler = schedules.EngineSchedule(world_size=2, faults=(Fault.parse("collective.scatter=sleep(0.2)@rank=0"),))
    assert straggler.expect() == "clean,crash" and straggler.straggler
    line = hang.rerun(("python", "e.py"), output_regex="tok: (.*)", deadline_s=12.5, launch="subprocess").line()
    assert shlex.split(line) == ["python", "-m", "harness", "run", "--engine", "python e.py", "--fault",
                                 "collective.all_reduce=skip@rank=1,call=3", "--expect", "clean,crash,hang", "--world-size", "2",
                                 "--launch", "subprocess", "--output-regex", "tok: (.*)", "--deadline", "12.5"]


def test_shrinking_tries_fewer_faults_a_smaller_world_and_earlier_calls_a_rank_makes() -> None:
    s = schedules.EngineSchedule(world_size=4, faults=(Fault.parse("collective.all_reduce=raise@rank=3,call=6"),
                                                       Fault.parse("collective.scatter=hang@rank=2,call=1")))
    cands = schedules.shrink_candidates(s, COUNTS)
    assert [len(c.faults) for c in cands[:2]] == [1, 1]
    smaller = cands[2]
    assert smaller.world_size == 2 and [f.rank for f in smaller.faults] == [1, 1]
    assert all(c.world_size == 4 and len(c.faults) == 2 for c in cands[3:])
    assert {c.faults[0].call for c in cands[3:]} == {1, 3, 5}


def test_the_healthy_output_must_be_the_same_at_every_world_size() -> None:
    same = [(1, Baseline(ok=True, digest="ab")), (2, Baseline(ok=True, digest="ab"))]
    assert schedules.same_output(same) == []
    (broken,) = schedules.same_output([*same, (4, Baseline(ok=True, digest="cd"))])
    assert "ws 4: cd" in broken and "same-output-at-every-world-size" in broken


def test_the_discovery_counts_are_said_per_rank_and_op() -> None:
    assert schedules.per_rank(COUNTS[4]) == "9 collectives per rank (all_reduce 6, scatter 3)"
    assert schedules.per_rank(COUNTS[2]) == ("collectives per rank: rank 0: 11 (all_reduce 6, broadcast 2, scatter 3); "
                                             "rank 1: 9 (all_reduce 6, scatter 3)")


def test_a_long_reason_is_cut_at_a_word_and_marked_only_when_cut() -> None:
    reason = "DIVERGED: the engine finished but served another answer"
    assert shorten(reason, 100) == reason
    assert shorten(reason, 21) == shorten(reason, 24) == "DIVERGED: the engine…"  # never "the engine fi…"
    assert shorten("x" * 50, 10) == "x" * 9 + "…"  # one word longer than the room is cut where it must be


ENGINE = ("import json, os, torch, torch.distributed as dist\ndist.init_process_group('gloo')\n"
          "x = torch.ones(4)\nfor _ in range(3):\n    dist.all_reduce(x)\n    x /= dist.get_world_size()\n"
          "if dist.get_rank() == 0:\n"
          "    print('env:', json.dumps(sorted(k for k in os.environ if k.startswith('TP_'))), flush=True)\n"
          "    print('tokens:', x.tolist(), flush=True)\n"
          "dist.destroy_process_group()\n")
"""A stand-in engine with no check of its own: a corrupted all_reduce serves a wrong answer (DIVERGED)."""
CORRUPT_SEED = next(seed for seed in range(1, 100) if schedules.deck_pair(seed, 0, ["all_reduce"])[1] == "corrupt")


def _harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=280)


@pytest.mark.timeout(300)
def test_explore_engine_finds_a_wrong_answer_and_its_reproducer_reruns_it_from_a_new_shell(tmp_path: Path) -> None:
    (tmp_path / "eng").mkdir()
    (tmp_path / "eng" / "engine.py").write_text(ENGINE)
    proc = _harness("explore", "--engine", "python engine.py", "--output-regex", r"tokens: (.*)", "--seed",
                    str(CORRUPT_SEED), "--runs", "1", "--world-sizes", "2", "--faults-per-run", "1", "--sites",
                    "collective.all_reduce", "--max-shrink", "0", "--jobs", "1", "--report-dir",
                    str(tmp_path / "r"), cwd=tmp_path / "eng")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(next((tmp_path / "r").glob("2*/explore.json")).read_text())
    (violation,) = doc["violations"]
    assert violation["observed"] == "DIVERGED" and doc["runs"][0]["fired"] == ["collective.all_reduce=corrupt"]
    line = violation["reproducer"]
    assert f"VIOLATION (run 0, DIVERGED): {line}" in proc.stdout
    assert re.search(r"explore: world size 2: healthy in .* s, deadline .* s, 3 collectives per rank "
                     r"\(all_reduce 3\)\n", proc.stderr), proc.stderr
    said = re.search(r"explore: run 0 broke the invariant \((.*)\); shrinking", proc.stderr)[1]
    full = violation["violations"][0]
    assert said.endswith("…") and len(said) <= 120 and full.startswith(said[:-1]) and full[len(said) - 1] == " ", said
    words = shlex.split(line.partition(" && ")[2])
    for flag, value in (("--engine", "python engine.py"), ("--world-size", "2"), ("--launch", "subprocess"),
                        ("--output-regex", "tokens: (.*)"), ("--fault", violation["shrunk"]["faults"][0]),
                        ("--report-dir", str((tmp_path / "r").resolve()))):
        assert words[words.index(flag) + 1] == value, line
    run_dir = Path(doc["dir"])
    # Explore set no env of its own (no TP_*_TIMEOUT_S knob): only the faults and where to write traces.
    assert 'env: ["TP_FAILPOINTS", "TP_REPORT_DIR"]' in (run_dir / "explore_0000-ws2" / "rank0.log").read_text()
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    before = set((tmp_path / "r").glob("2*"))
    again = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200)
    assert "observed DIVERGED" in again.stdout.splitlines()[0], again.stdout + again.stderr
    assert len(set((tmp_path / "r").glob("2*")) - before) == 1, "verbatim, it writes where the explore did"
    assert again.returncode == 1, "the reproducer expects what the invariant allows: it fails while the bug stands"


@pytest.mark.parametrize("args, words", [
    (("--tp-command", "python -m tp"), ["belong to a contract TP path"]),
    (("--launch", "zygote"), ["launch mode 'zygote'", "subprocess"]),
    (("--sites", "collective.al_reduce"), ["--sites: collective.al_reduce is no collective site"]),
    (("--output-regex", "(x"), ["explore --engine"]),
])
def test_a_bad_explore_engine_is_refused_before_any_rank_starts(tmp_path: Path, args: tuple, words: list) -> None:
    marker = tmp_path / "engine_ran"
    proc = _harness("explore", "--engine", f"python -c 'open({str(marker)!r}, \"w\")'", "--report-dir",
                    str(tmp_path / "r"), *args, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr
    assert not marker.exists()


SLEEP_SEED = next(seed for seed in range(1, 100)
                  if schedules.deck_pair(seed, 0, ["all_reduce"])[1].startswith("sleep"))


@pytest.mark.timeout(300)
def test_explore_engine_checks_the_healthy_output_is_the_same_at_every_world_size(tmp_path: Path) -> None:
    """The stand-in without its normalisation sums ranks: its answer depends on the world size. One benign
    schedule runs (a straggler, CLEAN); the one violation is the world-size rule, reproduced size by size."""
    (tmp_path / "engine.py").write_text(ENGINE.replace("    x /= dist.get_world_size()\n", ""))
    proc = _harness("explore", "--engine", "python engine.py", "--output-regex", r"tokens: (.*)", "--seed",
                    str(SLEEP_SEED), "--runs", "1", "--world-sizes", "1,2", "--faults-per-run", "1", "--sites",
                    "collective.all_reduce", "--jobs", "1", "--report-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = json.loads(next((tmp_path / "r").glob("2*/explore.json")).read_text())
    assert doc["verdicts"] == {"CLEAN": 1}, doc["runs"]
    (violation,) = doc["violations"]
    assert "healthy output differs between world sizes" in violation["violations"][0]
    runs = violation["reproducer"].split(" && cd ")
    assert len(runs) == 2 and "--world-size 1" in runs[0] and "--world-size 2" in runs[1], violation["reproducer"]
    assert f"VIOLATION (run world sizes, CLEAN): {violation['reproducer']}" in proc.stdout
