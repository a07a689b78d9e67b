"""Apply each mutant in a scratch copy of the repository and run the tests that must kill it.

The working tree is never edited: every mutant gets a fresh copy (sources
only: no .git, .nox, reports or bytecode) in a temporary directory, and
pytest runs there with the copy as its working directory, so ``tp`` and
``harness`` are imported from the copy. Before any mutant, the union of all
selections runs once on an unmutated copy: a selection that already fails
would "kill" every mutant it is asked to.

A mutant is *killed* when its selection fails (pytest exit 1) or runs past
the per-mutant bound (a hang is a failure too), *survived* when it passes,
*stale* when its snippet is no longer found exactly once, and *error* when
pytest could not run the selection (exit 2..5: collection error, bad node id,
nothing collected). With ``fallback`` a survivor is run against the whole
suite before it is called a survivor.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.launch import lifetime
from mutate.mutants import Mutant

REPO = Path(__file__).resolve().parent.parent
PYTEST_ARGS = ("-q", "-x", "-p", "no:randomly", "-n", "0")
WHOLE_SUITE = ("tests", "scenarios")
SKIP_IN_COPY = (".git", ".nox", ".venv", "reports", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache")
_FAILED = re.compile(r"^(FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)  # node ids may hold spaces


@dataclass(kw_only=True)
class Verdict:
    """What happened to one mutant."""

    id: str
    """The mutant's id."""
    status: str
    """``killed``, ``survived``, ``stale`` or ``error``."""
    how: str = ""
    """``selection``, ``timeout``, ``fallback`` (killed by the whole suite), or why it is stale / an error."""
    failed: list[str] = field(default_factory=list)
    """The first tests that failed with the mutant applied (what killed it)."""
    wall_s: float = 0.0
    """Seconds spent on this mutant."""
    description: str = ""
    """The mutant's description."""
    kill: list[str] = field(default_factory=list)
    """Its selection."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """How to run the mutants."""

    root: Path = REPO
    """Repository to copy (never edited)."""
    fallback: bool = False
    """Run a survivor against the whole suite before calling it a survivor (slow)."""
    timeout_s: float = 300.0
    """Bound on one pytest run; past it the run is killed and the mutant counts as killed (a hang)."""
    baseline: bool = True
    """Run the union of all selections unmutated first and refuse to judge if it fails."""


def scratch_copy(root: Path, into: Path) -> Path:
    """Copy the repository's sources to ``into/repo``."""
    dest = into / "repo"
    shutil.copytree(root, dest, ignore=shutil.ignore_patterns(*SKIP_IN_COPY), symlinks=True)
    return dest


def _env() -> dict[str, str]:
    # A fresh pytest, not a worker of whichever pytest started us.
    drop = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST", "PYTEST_ADDOPTS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return env | {"PYTHONDONTWRITEBYTECODE": "1"}


def pytest(copy: Path, selection: tuple[str, ...], timeout_s: float, *, extra: tuple[str, ...] = PYTEST_ARGS
           ) -> tuple[int | None, str]:
    """Run pytest in ``copy``; ``(exit status or None on timeout, output)``. Nothing outlives the call.

    Killing pytest's process group is not enough: tests start ranks in sessions of their own. Every
    process of the run carries a fresh ``BREAKIT_RUN`` marker, and whatever still carries it is killed.
    """
    marker = f"mutate-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *extra, *selection], cwd=copy,
                            env=_env() | {lifetime.RUN_ENV: marker}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_marked(marker)


def _kill_marked(marker: str) -> None:
    for pid in lifetime.marked(lifetime.RUN_ENV, marker):
        for sig in (signal.SIGCONT, signal.SIGKILL):  # a stopped rank must not stay stopped and alive
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break


def mutated_modules(mutants: list[Mutant]) -> list[str]:
    """Top-level modules the mutants edit (``tp``, ``harness``): they must be imported from the copy."""
    return sorted({Path(e.file).parts[0].removesuffix(".py") for m in mutants for e in m.edits})


def check_imports_from(copy: Path, modules: list[str]) -> None:
    """Each of ``modules`` imported in ``copy`` must come from the copy, not from an installed package."""
    code = "import importlib, sys\nfor name in sys.argv[1:]: print(importlib.import_module(name).__file__)"
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=copy, env=_env(), capture_output=True,
                          text=True, timeout=120)
    paths = proc.stdout.split()
    inside = [Path(p).resolve().is_relative_to(copy.resolve()) for p in paths]
    if proc.returncode != 0 or len(paths) != len(modules) or not all(inside):
        raise RuntimeError(f"in the scratch copy {copy}, {', '.join(modules)} are not all imported from the copy: "
                           f"{proc.stdout.strip() or proc.stderr.strip()[-500:]}")


def _failed(output: str) -> list[str]:
    return [m.group(2) for m in _FAILED.finditer(output)][:3]


def judge_one(mutant: Mutant, settings: Settings) -> Verdict:
    """Apply ``mutant`` in a fresh copy, run its selection (and maybe the whole suite)."""
    t0 = time.monotonic()
    verdict = Verdict(id=mutant.id, status="error", description=mutant.description, kill=list(mutant.kill))
    stale = mutant.stale_reason(settings.root)
    if stale:
        verdict.status, verdict.how = "stale", stale
        return verdict
    with tempfile.TemporaryDirectory(prefix=f"mutate-{mutant.id}-") as tmp:
        copy = scratch_copy(settings.root, Path(tmp))
        mutant.apply(copy)
        code, out = pytest(copy, mutant.kill, settings.timeout_s)
        if code == 0 and settings.fallback:
            code, out = pytest(copy, WHOLE_SUITE, settings.timeout_s * 4,
                               extra=("-q", "-x", "-p", "no:randomly", "-n", "2"))
            verdict.how = "fallback"
        _classify(verdict, code, out)
    verdict.wall_s = round(time.monotonic() - t0, 2)
    return verdict


def _classify(verdict: Verdict, code: int | None, out: str) -> None:
    if code is None:
        verdict.status, verdict.how = "killed", "timeout"
    elif code == 1:
        verdict.status, verdict.how = "killed", verdict.how or "selection"
        verdict.failed = _failed(out)
    elif code == 0:
        verdict.status, verdict.how = "survived", verdict.how or "selection"
    else:
        tail = " | ".join(out.strip().splitlines()[-3:])[:400]
        verdict.status, verdict.how = "error", f"pytest exit {code}: {tail}"


def baseline(mutants: list[Mutant], settings: Settings) -> tuple[bool, str, float]:
    """Run the union of every selection on an unmutated copy: ``(passed, detail, seconds)``."""
    t0 = time.monotonic()
    union = tuple(dict.fromkeys(k for m in mutants for k in m.kill))
    with tempfile.TemporaryDirectory(prefix="mutate-baseline-") as tmp:
        copy = scratch_copy(settings.root, Path(tmp))
        check_imports_from(copy, mutated_modules(mutants))
        code, out = pytest(copy, union, settings.timeout_s * 4, extra=("-q", "-p", "no:randomly", "-n", "0"))
    detail = out.strip().splitlines()[-1] if out.strip() else "(no output)"
    if code != 0:
        failed = ", ".join(_failed(out)) or detail
        detail = f"pytest exit {code}: {failed}"
    return code == 0, detail, round(time.monotonic() - t0, 2)


def run_all(mutants: list[Mutant], settings: Settings, say: Callable[[str], None] = print) -> list[Verdict]:
    verdicts = []
    for i, mutant in enumerate(mutants, 1):
        verdict = judge_one(mutant, settings)
        say(f"[{i}/{len(mutants)}] {mutant.id:<6} {verdict.status:<8} {verdict.wall_s:6.1f} s  "
            f"{verdict.how}{'  ' + verdict.failed[0] if verdict.failed else ''}")
        verdicts.append(verdict)
    return verdicts
