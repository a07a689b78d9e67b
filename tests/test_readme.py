"""The README is a newcomer's five minutes, and what it shows works as written.

Its "Selecting scenarios" and "Break your own engine" lines run here: ``python -m harness`` lines verbatim, ``nox -s breakit -- ARGS`` as the
pytest selection nox hands those ARGS to (``--collect-only``: each must select something). The bring-your-own
lines run in tests/test_byo.py. Every relative link in README.md and docs/ names a file that exists.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_LINES = 200
"""A page a newcomer reads in five minutes; the rest is docs/GUIDE.md."""


def _section_lines(title: str) -> list[str]:
    section = README.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for block in blocks for line in block.splitlines() if shlex.split(line, comments=True)]


SELECTING = _section_lines("Selecting scenarios") + _section_lines("Break your own engine")


def test_the_readme_is_short_and_shows_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"README.md has {len(text.splitlines())} lines; move detail to docs/"
    assert "nox -s breakit" in text and "nox -s tests" in text


@pytest.mark.parametrize("path", [README, *sorted((REPO / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_every_relative_link_names_a_file_that_exists(path):
    missing = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target and not (path.parent / target).exists():
            missing.append(target)
    assert not missing, f"{path.name} links to files that do not exist: {missing}"


@pytest.mark.parametrize("line", SELECTING, ids=lambda line: shlex.split(line, comments=True)[-1][:30])
def test_every_selecting_line_works_as_written(line, tmp_path):
    words = shlex.split(line, comments=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TP_", "PYTEST_"))}
    if words[:4] == ["nox", "-s", "breakit", "--"]:
        # noxfile.py's breakit session: pytest scenarios -m breakit ... + these ARGS.
        cmd = [sys.executable, "-m", "pytest", "scenarios", "-m", "breakit", "-p", "no:randomly", "--collect-only",
               "-q", *words[4:]]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and re.search(r"^\d+ tests? collected|^\d+/\d+ tests collected", proc.stdout, re.M), \
            f"{line!r} selects nothing:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return
    assert words[:3] == ["python", "-m", "harness"], f"README shows {line!r}: say here how to run it"
    if words[3] == "run":
        words += ["-q", "--report-dir", str(tmp_path)]
    proc = subprocess.run([sys.executable, *words[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, f"{line!r} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    assert proc.stdout.strip(), f"{line!r} printed nothing"
