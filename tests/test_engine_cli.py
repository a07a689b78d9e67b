"""``python -m harness run --engine``: every input is refused in one line before any rank starts."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args, words", [
    (("--fault", "collective.all_reduc=hang", "--expect", "hang"), ["no such failpoint", "--fault"]),
    (("--fault", "collective.all_reduce=hang"), ["--fault needs --expect"]),
    (("--launch", "zygote"), ["launch mode 'zygote'", "subprocess"]),
    (("--output-regex", "(unclosed"), ["invalid --output-regex"]),
    (("--tp-command", "python -m tp"), ["--tp-command", "belong to a contract TP path"]),
    (("FM-01",), ["not scenario ids"]),
    (("--fault", "collective.all_reduce=raise@rank=5", "--expect", "crash"),
     ["rank 5 does not exist at world size 2; ranks are 0..1"]),
])
def test_a_bad_engine_run_is_refused_before_any_rank_starts(tmp_path: Path, args: tuple, words: list[str]) -> None:
    marker = tmp_path / "engine_ran"
    engine = f"python -c 'open({str(marker)!r}, \"w\")'"
    proc = cli("--engine", engine, "--report-dir", str(tmp_path / "reports"), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for word in words:
        assert word in proc.stderr
    assert not marker.exists(), "the engine was started"


@pytest.mark.parametrize("command", ["run", "explore"])
def test_an_output_regex_without_an_engine_is_refused(tmp_path: Path, command: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "harness", command, "--output-regex", "x", "--report-dir",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--output-regex names an engine's output: it needs --engine" in proc.stderr


def test_the_engine_command_runs_as_given_with_nothing_appended(tmp_path: Path) -> None:
    """A stand-in engine that prints its argv and an output digest: one clean run and its healthy baseline."""
    engine = tmp_path / "engine.py"
    engine.write_text("import json, os, sys\n"
                      "if os.environ['RANK'] == '0':\n"
                      "    print(json.dumps({'argv': sys.argv[1:], 'output_digest': 'abc'}), flush=True)\n")
    proc = cli("--engine", f"python {engine} --mine", "--report-dir", str(tmp_path / "reports"), "--world-size", "1",
               "--deadline", "60", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASS adhoc (ws1): expected CLEAN, observed CLEAN"), proc.stdout
    logs = list((tmp_path / "reports").glob("*/adhoc-ws1/rank0.log"))
    assert '"argv": ["--mine"]' in logs[0].read_text()


@pytest.mark.parametrize("expect, env, verdict", [("clean", "SALT=", "observed CLEAN"),
                                                  ("diverge", "SALT=x", "observed DIVERGED")])
def test_output_regex_names_the_output_a_clean_run_must_reproduce(tmp_path: Path, expect: str, env: str,
                                                                  verdict: str) -> None:
    """The engine prints no output_digest: rank 0's ``tokens: ...`` line is its output, compared with the
    healthy run's (which gets no ``--env``): the same tokens are CLEAN, other tokens DIVERGED."""
    engine = tmp_path / "engine.py"
    engine.write_text("import os\nprint('loading', flush=True)\n"
                      "print('tokens: [4, 41, 34]' + os.environ.get('SALT', ''), flush=True)\nprint('bye')\n")
    proc = cli("--engine", f"python {engine}", "--output-regex", r"tokens: (\[.*)", "--expect", expect, "--env", env,
               "--report-dir", str(tmp_path / "reports"), "--world-size", "1", "--deadline", "60", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verdict in proc.stdout.splitlines()[0], proc.stdout


def test_without_a_deadline_an_engine_gets_a_multiple_of_its_healthy_run(tmp_path: Path) -> None:
    """An engine whose healthy run outlasts the default deadline is CLEAN, not HUNG: its deadline is measured.

    The stand-in's work is a 2.5 s sleep (its workload, not synchronisation); the floor is 1 s, so a fixed
    deadline calls it HUNG while it works, and the measured one (3 x its healthy run) lets it finish.
    """
    from harness.declare.scenario import Expect, Scenario
    from harness.engine import run as engine_run
    from harness.pipeline.runner import RunConfig

    engine = tmp_path / "slow_engine.py"
    engine.write_text("import json, time\nimport torch.distributed as dist\n"
                      "dist.init_process_group('gloo')\n"  # the bootstrap's init event: the deadline counts from it
                      "time.sleep(2.5)\ndist.barrier()\n"
                      "print(json.dumps({'output_digest': 'ab12'}), flush=True)\ndist.destroy_process_group()\n")
    config = RunConfig(run_dir=tmp_path / "run", world_size=2, deadline_s=1.0, launch="subprocess",
                       tp_command=(sys.executable, str(engine)), cwd=tmp_path)
    scenario = Scenario(id="slow", fm="control", title="a healthy engine slower than the floor", proves="control",
                        expect=Expect.clean())
    result = engine_run.run_engine(scenario, config)
    assert result.observed == "CLEAN" and result.passed, result.reason
    fixed = engine_run.run_engine(scenario, config, deadline_s=1.0)
    assert fixed.observed == "HUNG", f"a given deadline is the bound, measured or not: {fixed.reason}"


def test_an_engine_that_gloo_aborts_on_a_desync_has_crashed(tmp_path: Path) -> None:
    """An unmodified engine promised no contract: its own SIGABRT after the fault fired is how it crashed.

    Rank 1 skips its first all_reduce, so its second (4096 floats) meets rank 0's first (4): gloo's size
    check aborts the smaller receiver. Judged as a contract TP path, that SIGABRT would be HARNESS_ERROR.
    Rank 1 nearly always errors at once on its dead peer's socket; once in CI it sat in its all_reduce for the
    whole 60 s (gloo missed the close), so the engine has a 10 s group timeout of its own: a crash either way.
    """
    engine = tmp_path / "abort_engine.py"
    engine.write_text("import datetime, json, torch, torch.distributed as dist\n"
                      "dist.init_process_group('gloo', timeout=datetime.timedelta(seconds=10))\n"
                      "dist.all_reduce(torch.ones(4))\ndist.all_reduce(torch.ones(4096))\n"
                      "print(json.dumps({'output_digest': 'same'}), flush=True)\ndist.destroy_process_group()\n")
    proc = cli("--engine", f"python {engine}", "--fault", "collective.all_reduce=skip@rank=1,call=1",
               "--expect", "crash", "--deadline", "60", "--report-dir", str(tmp_path / "reports"), cwd=tmp_path)
    assert proc.returncode == 0 and "observed CRASHED" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    assert "SIGABRT" in proc.stdout


TINY_ENGINE = ("import torch, torch.distributed as dist\ndist.init_process_group('gloo')\n"
               "x = torch.ones(4)\nfor _ in range(3):\n    dist.all_reduce(x)\n"
               "if dist.get_rank() == 0:\n    print('tokens:', x.tolist(), flush=True)\n"
               "dist.destroy_process_group()\n")
"""A stand-in engine: three all_reduces, rank 0 prints its tokens (no output_digest: --output-regex names them)."""


def test_an_engine_run_prints_a_rerun_line_that_runs_verbatim_from_a_new_shell(tmp_path: Path) -> None:
    """The line carries the whole run (engine, fault, expect, world size, launch, output regex, deadline): pasted
    into a new shell elsewhere, it gives the same verdict."""
    (tmp_path / "eng").mkdir()
    (tmp_path / "eng" / "engine.py").write_text(TINY_ENGINE)
    proc = cli("--engine", "python engine.py", "--fault", "collective.all_reduce=raise@rank=1,call=2", "--expect",
               "crash", "--output-regex", r"tokens: (.*)", "--world-size", "2", "--deadline", "60",
               "--report-dir", str(tmp_path / "reports"), cwd=tmp_path / "eng")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    verdict, rerun = proc.stdout.splitlines()[:2]
    assert verdict.startswith("PASS adhoc (ws2): expected CRASHED, observed CRASHED"), proc.stdout
    assert rerun.startswith(f"rerun with: cd {shlex.quote(str(tmp_path / 'eng'))} && python -m harness run "), rerun
    line = rerun.removeprefix("rerun with: ")
    words = shlex.split(line.partition(" && ")[2])
    given = dict(zip(words[4::2], words[5::2], strict=True))
    assert given == {"--engine": "python engine.py", "--fault": "collective.all_reduce=raise@rank=1,call=2",
                     "--expect": "crash", "--world-size": "2", "--launch": "subprocess",
                     "--output-regex": "tokens: (.*)", "--deadline": "60",
                     "--report-dir": str((tmp_path / "reports").resolve())}, line
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    again = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0].startswith("PASS adhoc (ws2): expected CRASHED, observed CRASHED"), again.stdout
    assert again.stdout.splitlines()[1] == rerun, "the rerun reruns the same run"


def test_engine_runs_compare_only_with_runs_of_the_same_faults() -> None:
    # Every ad-hoc run's id is "adhoc": a delta keyed on the engine alone compared a SIGSTOP run with a SIGKILL one
    # ("time-to-crash regression") and a healthy run with a crash ("CRASHED -> CLEAN").
    import argparse

    from harness.engine.run import _asked

    def asked(*faults: str, expect: str = "crash") -> str:
        return _asked(argparse.Namespace(engine="python e.py", fault=list(faults), expect=expect, env=[]))

    kill, stop = asked("collective.all_reduce=kill(SIGKILL)@rank=1"), asked("collective.all_reduce=kill(SIGSTOP)@rank=1")
    assert len({kill, stop, asked(expect="clean")}) == 3
    assert kill == asked("collective.all_reduce=kill(SIGKILL)@rank=1")


@pytest.mark.parametrize("command", ["run", "explore", "grade"])
def test_an_engine_script_that_does_not_exist_is_refused_before_any_rank_starts(tmp_path: Path, command: str) -> None:
    # Every rank would exit 2 ("can't open file"), which the verdict took for a TP path rejecting its config.
    proc = subprocess.run([sys.executable, "-m", "harness", command, "--engine", "python nope.py", "--report-dir",
                           str(tmp_path / "r")], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"its script 'nope.py' does not exist (looked in {tmp_path}): every rank would fail to start" in proc.stderr
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("2*"))
