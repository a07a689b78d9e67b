"""``python -m harness``, run as a user would: in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"

CATALOG = textwrap.dedent("""
    from harness import Expect, Fault, Scenario

    SCENARIOS = [
        Scenario(id="FM-01", fm="FM-01", title="meta cannot be encoded", proves="preflight",
                 faults=(Fault(site="fake.chunk", action="raise", rank=0, chunk=1),),
                 expect=Expect.crash({0: "code=FAKE_ERROR", "others": "PEER_ABORT"})),
        Scenario(id="FM-01/off", fm="FM-01", title="preflight off", proves="preflight",
                 guardrails="all,-preflight", faults=(Fault(site="fake.chunk", action="exit(3)", chunk=1),),
                 expect=Expect.crash()),
    ]
""")


@pytest.fixture
def cli(tmp_path: Path):
    (tmp_path / "pids").mkdir()
    (tmp_path / "test_catalog.py").write_text(CATALOG)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(RANKS)]),
           "FAKE_PIDFILE_DIR": str(tmp_path / "pids")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", *args], check=False, cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    return run


FAKE = ("--tp-command", "python -m fake_tp", "--report-dir", "reports")
CAT = ("--catalog", "test_catalog.py")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "FM-99", *CAT), "unknown scenario 'FM-99'; known: FM-01, FM-01/off"),
        (("run", "--fault", "garbage", "--expect", "crash"), "malformed failpoint 'garbage' in --fault; expected SITE=ACTION"),
        (("run", "--fault", "a.b=raise@rank=x", "--expect", "crash"), "bad trigger 'rank=x'"),
        (("run", "--expect", "crash", "--deadline", "5x"), "invalid deadline '5x' from --deadline"),
        (("run", "--expect", "crash", "--deadline", "0"), "invalid deadline '0' from --deadline"),
        (("run", "--expect", "crash", "--world-size", "0"), "invalid world size '0' from --world-size"),
        (("run", "FM-01", *CAT, "--world-size", "-3"), "invalid world size '-3' from --world-size"),
        (("run", "--expect", "crash", "--launch", "foo"), "invalid launch mode 'foo' from --launch"),
        (("run", "--expect", "crash", "--guardrails", "all,preflight"), "guardrails 'all,preflight' is not valid"),
        (("run", "--expect", "crash", "--signature", "0:("), "not a valid regex"),
        (("run", "--expect", "crash", "--chunks", "0"), "invalid chunks '0' from --chunks"),
        (("run", "--fault", "a.b=raise"), "--fault needs --expect"),
        (("run", "FM-01", *CAT, "--expect", "crash"), "not both"),
        (("run", "FM-01", "test_catalog.py"), "'test_catalog.py' is a file, not a scenario id"),
        (("run", "--catalog", "pids"), "scenario module not found: pids"),
        (("run", "FM-01", "--catalog", "missing.py"), "scenario module not found: missing.py"),
        (("run", "--expect", "sideways"), "invalid choice: 'sideways'"),
        (("report", "nowhere"), "nowhere holds no summary.md"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_starts_no_rank(cli, tmp_path, args, message) -> None:
    proc = cli(*args, *(FAKE if args[0] == "run" else ()))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert list((tmp_path / "pids").iterdir()) == []
    assert not (tmp_path / "reports").exists()


def test_list_shows_id_guardrail_and_expectation(cli) -> None:
    proc = cli("list", *CAT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(r"ID\s+PROVES\s+EXPECT\s+GUARDRAILS\s+TITLE", lines[0])
    assert re.match(r"FM-01\s+preflight\s+CRASHED\s+all\s+meta cannot be encoded", lines[1])
    assert re.match(r"FM-01/off\s+preflight\s+CRASHED\s+all,-preflight\s+preflight off", lines[2])


def test_failpoints_are_asked_from_the_tp_path(cli) -> None:
    proc = cli("failpoints", "--tp-command", "python -m fake_tp")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^fake\.chunk\s+start of every chunk$", proc.stdout, re.MULTILINE)
    proc = cli("failpoints", "--tp-command", "python -c 'import sys; sys.exit(\"no such option\")'")
    assert proc.returncode == 1 and "exited 1: no such option" in proc.stderr


def test_run_by_id_prefix_then_report(cli, tmp_path) -> None:
    proc = cli("run", "FM-01", *CAT, *FAKE, "-q")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^PASS FM-01 \(ws2\): expected CRASHED, observed CRASHED", proc.stdout, re.MULTILINE)
    assert re.search(r"^PASS FM-01/off \(ws2\): expected CRASHED", proc.stdout, re.MULTILINE)
    assert "PASS: 2 run, 0 failed; report: reports/" in proc.stdout
    report = cli("report", "reports")
    assert report.returncode == 0
    assert "| FM-01 (ws2) | meta cannot be encoded | CRASHED | CRASHED |" in report.stdout
    assert "| preflight | FM-01 (ws2, PASS) | FM-01/off (ws2, PASS) |" in report.stdout


def test_adhoc_run_exit_code_is_the_verdict(cli) -> None:
    ok = cli("run", "--fault", "fake.chunk=raise@rank=0,chunk=2", "--expect", "crash",
             "--signature", "0:code=FAKE_ERROR", "--signature", "others:PEER_ABORT", *FAKE)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "signatures matched: rank 0 /code=FAKE_ERROR/, rank 1 /PEER_ABORT/" in ok.stdout
    bad = cli("run", "--fault", "fake.chunk=raise@rank=0,chunk=2", "--expect", "clean", "--world-size", "1", *FAKE)
    assert bad.returncode == 1
    assert "FAIL adhoc (ws1): expected CLEAN, observed CRASHED" in bad.stdout
    assert "--- rank 0 (exit 40), last lines of" in bad.stderr


def test_harness_imports_neither_tp_nor_torch_up_front() -> None:
    code = "import sys, harness.plugin, harness.cli.main; print('torch' in sys.modules, 'tp' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["False", "False"]
    for path in (REPO / "harness").rglob("*.py"):
        assert not re.search(r"^\s*(import tp\b|from tp\b)", path.read_text(), re.MULTILINE), path


def test_public_surface_changes_only_on_purpose() -> None:
    """Snapshot: CLI commands and flags, pytest options, ini keys, markers, outcomes."""
    import harness
    from harness import plugin
    from harness.cli.parser import build as _parser
    from harness.declare.verdicts import Outcome
    from harness.pipeline import options

    subparsers = next(a for a in _parser()._actions if a.dest == "command")
    cli = {name: sorted(s for a in p._actions for s in a.option_strings if s not in ("-h", "--help"))
           for name, p in subparsers.choices.items()}
    assert cli == {
        "list": ["--catalog"],
        "failpoints": ["--tp-command"],
        "run": ["--backend", "--baseline", "--catalog", "--chunks", "--deadline", "--device", "--engine", "--env", "--expect",
                "--fault", "--guardrails", "--launch", "--output-regex", "--quiet", "--report-dir", "--signature", "--stall",
                "--startup-deadline", "--tp-command", "--world-size", "-q"],
        "explore": ["--backend", "--budget", "--deadline", "--device", "--engine", "--env", "--faults-per-run", "--jobs",
                    "--launch", "--max-shrink", "--output-regex", "--report-dir", "--runs", "--seed", "--sites", "--stall",
                    "--tp-command", "--world-size", "--world-sizes"],
        "report": ["--baseline"],
        "grade": ["--actions", "--call", "--engine", "--env", "--hang-after", "--ops", "--output-regex", "--quiet", "--rank",
                  "--report-dir", "--tp-command", "--world-sizes", "-q"],
    }
    assert [o.pytest_flag for o in options.OPTIONS.values()] == [
        "--breakit-deadline", "--breakit-world-size", "--breakit-backend", "--breakit-device", "--breakit-launch",
        "--breakit-report-dir", "--breakit-tp-command", "--breakit-stall", "--breakit-startup-deadline"]
    assert [o.ini for o in options.OPTIONS.values()] == [
        "breakit_deadline", "breakit_world_size", "breakit_backend", "breakit_device", "breakit_launch",
        "breakit_report_dir",
        "breakit_tp_command", "breakit_stall", "breakit_startup_deadline"]
    from harness.plugin import engine as pytest_door

    assert [(o.pytest_flag, o.ini) for o in pytest_door.OPTIONS] == [("--breakit-engine", "breakit_engine"),
                                                                  ("--breakit-output-regex", "breakit_output_regex")]
    assert sorted(s for a in _parser()._actions for s in a.option_strings) == ["--help", "--version", "-h"]
    assert plugin.PLUGIN_NAME == "breakit"
    assert plugin.FM_MARKERS == tuple(f"fm{n:02d}" for n in range(1, 17))
    assert plugin.MARKER_KEYS == ("deadline", "world_size", "launch")
    assert [o.name for o in Outcome] == ["CLEAN", "CRASHED", "HUNG", "DIVERGED", "HARNESS_ERROR"]
    assert sorted(harness.__all__) == ["Blocked", "DESYNC", "Expect", "Fault", "Interrupt", "Outcome", "Scenario",
                                       "load_catalog", "peers_follow"]


def test_version_names_the_distribution(cli) -> None:
    import harness

    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"python -m harness {harness.__version__} (tp-breakit)"


def test_run_without_ids_runs_the_whole_catalog_and_catalog_repeats(cli, tmp_path) -> None:
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "test_more.py").write_text(CATALOG.replace('"FM-01', '"FM-02'))
    proc = cli("run", "--catalog", "test_catalog.py", "--catalog", "more", "--world-size", "1", *FAKE)
    assert re.findall(r"^(?:PASS|FAIL) (\S+)", proc.stdout, re.M) == ["FM-01", "FM-01/off", "FM-02", "FM-02/off"]
    assert "4 run" in proc.stdout, proc.stdout + proc.stderr
