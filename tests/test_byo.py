"""README's "Bring your own TP path" commands, verbatim, against a stand-in TP path outside the repo.

The commands are parsed out of README.md, so the doc and this test cannot drift.
They run in a temporary directory holding only the stand-in package ``mypkg``
(fixtures/ranks/fake_tp.py as ``mypkg/serve.py``) and ``my_scenarios/`` (no conftest,
no ini), with tp-breakit installed into a fresh virtualenv the way a user installs it.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from installed import REPO, Installed

STAND_IN = REPO / "fixtures" / "ranks" / "fake_tp.py"
SCENARIOS = textwrap.dedent("""
    import pytest

    from harness import Expect, Fault, Scenario

    SCENARIOS = [
        Scenario(id="CTL-mine", fm="control", title="healthy run of my TP path", proves="control",
                 expect=Expect.clean()),
        Scenario(id="FM-01", fm="FM-01", title="a raise on rank 0 ends every rank", proves="watchdog",
                 faults=(Fault(site="fake.chunk", action="raise", rank=0, chunk=1),),
                 expect=Expect.crash({0: "code=FAKE_ERROR", "others": "PEER_ABORT .*cause_rank=0"})),
    ]


    @pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
    def test_mine(breakit, scenario):
        breakit.check(scenario)
""")


def readme_commands() -> list[list[str]]:
    """The command lines of the README's bring-your-own code block, split as a shell would (comments dropped)."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Bring your own TP path\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [words for block in blocks for line in block.splitlines() if (words := shlex.split(line, comments=True))]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: their TP path as a package, their scenarios beside it, nothing else."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    shutil.copy(STAND_IN, tmp_path / "mypkg" / "serve.py")
    (tmp_path / "my_scenarios").mkdir()
    (tmp_path / "my_scenarios" / "test_mine.py").write_text(SCENARIOS)
    (tmp_path / "pids").mkdir()
    return tmp_path


def _run(words: list[str], project: Path, installed: Installed) -> subprocess.CompletedProcess:
    env = {**installed.env, "FAKE_PIDFILE_DIR": str(project / "pids")}
    return subprocess.run(words, cwd=project, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_readme_has_the_commands_this_test_runs() -> None:
    commands = readme_commands()
    assert [c[:2] for c in commands] == [["breakit", "run"], ["breakit", "run"], ["pytest", "my_scenarios"]], commands
    assert all("python -m mypkg.serve" in c for c in commands), commands


def test_readme_commands_run_the_users_tp_path(project: Path, installed: Installed) -> None:
    whole, one, under_pytest = readme_commands()

    proc = _run(whole, project, installed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^PASS CTL-mine \(ws2\)", proc.stdout, re.M), proc.stdout
    assert re.search(r"^PASS FM-01 \(ws2\): .*rank 0 exit 40 \(FAKE_ERROR, root cause\)", proc.stdout, re.M)
    assert "PASS: 2 run, 0 failed" in proc.stdout
    # The stand-in's own failpoint site and pid files: the ranks ran mypkg.serve, not the built-in tp.
    assert {p.name for p in (project / "pids").iterdir()} >= {"rank0.pid", "rank1.pid"}

    proc = _run(one, project, installed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.findall(r"^(PASS|FAIL) (\S+)", proc.stdout, re.M) == [("PASS", "FM-01")], proc.stdout

    proc = _run(under_pytest, project, installed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank command '" in proc.stdout and "-m mypkg.serve' (from --breakit-tp-command)" in proc.stdout
    assert re.search(r"test_mine\[CTL-mine\] PASSED|2 passed", proc.stdout), proc.stdout
    assert "breakit PASS: 2 scenarios, 0 failed" in proc.stdout
    latest = json.loads((project / "reports" / "latest" / "summary.json").read_text())
    assert sorted(row["id"] for row in latest["scenarios"]) == ["CTL-mine", "FM-01"]


def test_a_wrong_stand_in_fails_every_readme_command_in_one_line(project: Path, installed: Installed) -> None:
    (project / "mypkg" / "serve.py").rename(project / "mypkg" / "server.py")  # the command names a module that is not there
    for words in readme_commands():
        proc = _run(words, project, installed)
        assert proc.returncode == (4 if words[0] == "pytest" else 2), (words, proc.stdout, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]  # pytest ends its ERROR line with a blank one
        assert len(lines) == 1, (words, proc.stderr)
        assert "cannot start: No module named mypkg.serve" in lines[0], lines[0]
        assert list((project / "pids").iterdir()) == [], words
        assert not list((project / "reports").glob("*/*/result.json")), words
