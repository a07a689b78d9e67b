"""Never a false green: a verdict needs evidence, and bad input is refused before any rank starts.

Black-box through ``python -m harness`` with the stand-in rank (fixtures/ranks/fake_tp.py) wherever the
real TP path is not needed; the few refusals that only the TP path can make ask the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import interrupting
import psutil
import pytest
from interrupting import interrupt_when_parked

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"
FAKE = ("--tp-command", "python -m fake_tp", "--report-dir", "reports")
CRASH = ("--fault", "fake.chunk=raise@rank=0,chunk=1", "--expect", "crash")


def _env(tmp_path: Path, **extra: str) -> dict:
    (tmp_path / "pids").mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(RANKS)]),
            "FAKE_PIDFILE_DIR": str(tmp_path / "pids"), **extra}


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], check=False, cwd=tmp_path,
                          env=_env(tmp_path, **env), capture_output=True, text=True, timeout=120)


def _result(tmp_path: Path) -> dict:
    (path,) = (tmp_path / "reports").glob("2*/adhoc-ws*/result.json")  # not through 'latest'
    return json.loads(path.read_text())


# ---------------------------------------------------------------- evidence for a crash


@pytest.mark.parametrize(
    ("args", "env", "why"),
    [
        (("--tp-command", "false", "--launch", "subprocess"), {}, "rank 0 exit 1 without a TP-FATAL line"),
        # Not 'python -m MODULE': the default zygote gives way to plain subprocesses.
        (("--tp-command", "false"), {}, "rank 0 exit 1 without a TP-FATAL line"),
        (("--tp-command", "python -m fake_tp"), {"FAKE_CLOSE_STDOUT": "1"}, "rank 0 exit 1 without a TP-FATAL"),
    ],
    ids=["false", "false-default-launch", "closes-stdout"],
)
def test_a_broken_rank_command_is_never_a_proven_crash(tmp_path, args, env, why) -> None:
    proc = _cli(tmp_path, "run", *CRASH, "--report-dir", "reports", *args, **env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = proc.stdout.splitlines()[0]
    # Why first: the fault never fired, whatever the rank command did besides.
    assert line.startswith("FAIL adhoc (ws2): the fault never fired: no rank printed a TP-FAULT line for "), line
    assert "expected CRASHED, observed HARNESS_ERROR" in line, line
    assert "no rank printed a TP-FAULT line, so the fault never fired" in line and why in line, line
    assert "--- rank 0 (exit 1), last lines of" in proc.stderr
    assert _result(tmp_path)["observed"] == "HARNESS_ERROR"


def test_exits_the_fault_caused_are_evidence(tmp_path) -> None:
    """kill(SIG) or exit(N) from the rank's own fault is inside the contract."""
    for fault, exit_shown in (("kill(SIGKILL)", "rank 0 SIGKILL"), ("exit(7)", "rank 0 exit 7")):
        proc = _cli(tmp_path, "run", "--fault", f"fake.chunk={fault}@rank=0,chunk=1", "--expect", "crash",
                    "--world-size", "1", *FAKE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "observed CRASHED" in proc.stdout and exit_shown in proc.stdout


# ---------------------------------------------------------------- refused before any rank starts


def _refused(tmp_path: Path, proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert len(proc.stderr) < 2000
    assert not list((tmp_path / "pids").iterdir()), "a rank started"
    assert not [p for p in (tmp_path / "reports").glob("*") if p.is_dir()], "a run directory was made"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # What an action's argument may be is tp.failpoints.parse's (test_tp_specs.py holds exit(256), set(),
        # sleep(inf) ...); here: its refusal reaches the user as one line before any rank (no zygote needed).
        (("--fault", "fake.chunk=exit(999999)", "--launch", "subprocess"),
         "the TP path refuses TP_FAILPOINTS 'fake.chunk=exit(999999)': exit needs an integer code 0..255"),
        (("--fault", "fake.chunk=raise@rank=2"), "faults[0] 'fake.chunk=raise@rank=2' names rank 2, but it runs at "
                                                 "world size 2"),
        (("--fault", "fake." + "x" * 120_000 + "=raise"), "a failpoint name has at most 200"),
        (("--fault", "fake.chunk=raise", "--tp-command", "nosuchcommand", "--launch", "subprocess"),
         "'nosuchcommand' is not an executable on PATH"),
        (("--fault", "fake.chunk=raise", "--tp-command", "false", "--launch", "zygote"),
         "launch mode 'zygote' forks 'python -m MODULE' in this interpreter"),
        (("--fault", "fake.chunk=raise", "--tp-command", "python -m nosuchmodule"),
         "cannot start: No module named nosuchmodule"),
        (("--fault", "fake.chunk=raise", "--tp-command", "python -m nosuchmodule", "--launch", "subprocess"),
         "cannot start: No module named nosuchmodule"),
        (("--fault", "fake.chunk=raise", "--startup-deadline", "inf"), "invalid start-up deadline 'inf'"),
    ],
    ids=["exit-999999", "rank-2-of-2", "120KB-site", "no-such-command", "zygote-needs-module",
         "no-such-module-zygote", "no-such-module-subprocess", "startup-inf"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message) -> None:
    _refused(tmp_path, _cli(tmp_path, "run", "--expect", "crash", *FAKE, *args), message)


@pytest.mark.parametrize("where", ["file", "/proc/nope"])
def test_unwritable_report_dir_is_refused_before_the_zygote(tmp_path, where) -> None:
    target = str(tmp_path / "a-file") if where == "file" else where
    (tmp_path / "a-file").write_text("")
    proc = _cli(tmp_path, "run", *CRASH, "--tp-command", "python -m fake_tp", "--report-dir", target)
    _refused(tmp_path, proc, f"report dir {target!r} (--report-dir) is not writable")


def test_the_tp_path_refuses_what_only_it_knows(tmp_path) -> None:
    """Sites, guardrail names, world size and backend are the TP path's own lists: it is asked (as a plain
    subprocess: a zygote would only add a second import of torch to each refusal)."""
    quick = ("--report-dir", "reports", "--launch", "subprocess")
    cases = [
        (("--fault", "generator.cal=raise"), "no such failpoint 'generator.cal' in TP_FAILPOINTS; known: "),
        (("--fault", "fake.chunk=raise", "--guardrails", "all,-preflite", "--tp-command", "python -m fake_tp"),
         "unknown guardrail 'preflite' in TP_GUARDRAILS; known: preflight,"),
        (("--fault", "generator.call=raise", "--world-size", "12", "--backend", "nccl"),
         "the TP path refuses world size '12'"),
    ]
    for args, message in cases:
        _refused(tmp_path, _cli(tmp_path, "run", "--expect", "crash", *quick, *args), message)
    (tmp_path / "test_env.py").write_text(textwrap.dedent("""
        from harness import Expect, Scenario
        SCENARIOS = [Scenario(id="CTL-env", fm="control", title="a heartbeat that never beats", proves="control",
                              expect=Expect.clean(), rank_env={1: {"TP_HEARTBEAT_S": "inf"}})]
    """))
    proc = _cli(tmp_path, "run", "CTL-env", "--catalog", "test_env.py", *quick)
    _refused(tmp_path, proc, "the TP path refuses env '{\"TP_HEARTBEAT_S\": \"inf\"}': invalid TP_HEARTBEAT_S 'inf'")
    (tmp_path / "test_proves.py").write_text(textwrap.dedent("""
        from harness import Expect, Scenario
        SCENARIOS = [Scenario(id="FM-13/typo", title="a guardrail nobody has", proves="watchdgo",
                              expect=Expect.clean())]
    """))
    proc = _cli(tmp_path, "run", "FM-13/typo", "--catalog", "test_proves.py", *quick, "--tp-command",
                "python -m fake_tp")
    _refused(tmp_path, proc, "the TP path refuses proves='watchdgo' of scenario FM-13/typo (asked as TP_GUARDRAILS "
                             "'none,+watchdgo'): unknown guardrail 'watchdgo'")


def test_a_command_that_cannot_answer_is_checked_for_syntax_only(tmp_path) -> None:
    proc = _cli(tmp_path, "run", *CRASH, *FAKE, FAKE_NO_CHECKS="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checked for syntax only: " in proc.stderr and "does not answer --check-*" in proc.stderr


def test_catalog_that_exits_at_import_is_an_error(tmp_path) -> None:
    (tmp_path / "test_exits.py").write_text("import sys\nsys.exit(0)\n")
    for command in (("list",), ("run", "FM-01", *FAKE)):
        proc = _cli(tmp_path, *command, "--catalog", "test_exits.py")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "test_exits.py called sys.exit(0) while being imported" in proc.stderr


def test_a_rank_that_never_starts_ends_at_the_startup_deadline(tmp_path) -> None:
    began = time.monotonic()
    proc = _cli(tmp_path, "run", "--expect", "clean", "--startup-deadline", "1", "--world-size", "1", *FAKE,
                FAKE_HANG_AT_START="1")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "observed HARNESS_ERROR" in proc.stdout
    assert "start-up deadline: rank 0 (pid" in proc.stdout and "within 1 s of launch" in proc.stdout
    assert time.monotonic() - began < 30  # the 60 s run timeout did not decide it
    (pidfile,) = (tmp_path / "pids").glob("rank0.pid")
    assert not psutil.pid_exists(int(pidfile.read_text())), "the silent rank was left running"


# ---------------------------------------------------------------- bounded logs


def test_a_flooding_rank_cannot_flood_the_report(tmp_path) -> None:
    proc = _cli(tmp_path, "run", "--fault", "fake.chunk=raise@rank=0,chunk=1", "--expect", "clean", *FAKE,
                FAKE_FLOOD_LINE_MB="40")
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(proc.stdout) + len(proc.stderr) < 200_000
    (path,) = (tmp_path / "reports").glob("2*/adhoc-ws2/result.json")
    assert path.stat().st_size < 200_000
    doc = json.loads(path.read_text())
    assert doc["observed"] == "CRASHED"  # the contract lines after the flood were still read
    assert any("[truncated: " in line for line in doc["ranks"][0]["log_tail"])


# ---------------------------------------------------------------- partial runs


CATALOG = textwrap.dedent("""
    from harness import Expect, Fault, Scenario

    SCENARIOS = [
        Scenario(id="CTL-0", fm="control", title="healthy", proves="control", expect=Expect.clean()),
        # Parks rank 1 until the run is interrupted: the test waits on that, not on a race with the run.
        Scenario(id="CTL-1", fm="control", title="parked", proves="control", expect=Expect.clean(),
                 deadline_s=300, run_timeout_s=300, faults=(Fault(site="fake.chunk", action="hang", rank=1, chunk=1),)),
        Scenario(id="CTL-2", fm="control", title="healthy", proves="control", expect=Expect.clean()),
    ]
""")


def test_an_interrupted_cli_run_is_incomplete_and_latest_stays(tmp_path) -> None:
    (tmp_path / "test_cat.py").write_text(CATALOG)
    proc = interrupting.start([sys.executable, "-m", "harness", "run", "CTL-0", "CTL-1", "CTL-2", "--catalog",
                               "test_cat.py", *FAKE], cwd=tmp_path, env=_env(tmp_path),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = interrupt_when_parked(proc, tmp_path / "reports", "*/CTL-1-ws2/rank1.log")
    assert proc.returncode == 130, out + err
    assert "INCOMPLETE (1 of 3 ran" in err and "'latest' not moved" in err, err
    assert not (tmp_path / "reports" / "latest").exists()
    (run_dir,) = [p for p in (tmp_path / "reports").iterdir() if p.is_dir()]
    doc = json.loads((run_dir / "summary.json").read_text())
    assert (doc["overall"], doc["total"], doc["planned"]) == ("INCOMPLETE", 1, 3)
    assert "Overall: **INCOMPLETE** (1 of 3 ran" in (run_dir / "summary.md").read_text()
    shown = _cli(tmp_path, "report", str(run_dir))
    assert shown.returncode == 1 and "is INCOMPLETE, not PASS" in shown.stderr
