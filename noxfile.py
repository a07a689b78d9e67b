"""Sessions: ``breakit`` (the break-it suite), ``tests`` (unit + plugin tests),
``lint`` (ruff), ``bench`` (speed numbers, see benchmarks/), ``mutate`` (semantic
mutants, see mutate/; nightly, not in CI: it takes minutes).

torch is installed from constraints/cpu.txt (the CPU build) so a fresh clone
never downloads a multi-GB CUDA build. GPU runners set ``BREAKIT_SYSTEM_TORCH=1``
to use the CUDA torch already on the machine instead.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["breakit", "tests"]
nox.options.reuse_existing_virtualenvs = True

SYSTEM_TORCH = os.environ.get("BREAKIT_SYSTEM_TORCH") == "1"
VENV_PARAMS = ["--system-site-packages"] if SYSTEM_TORCH else []


def _install(session: nox.Session) -> None:
    if not SYSTEM_TORCH:
        session.install("-c", "constraints/cpu.txt", "torch")
    session.install("-r", "requirements/test.txt")


@nox.session(venv_params=VENV_PARAMS)
def breakit(session: nox.Session) -> None:
    """Run every failure-mode scenario and the controls; writes reports/latest."""
    _install(session)
    # Two workers: the guardrail-off proofs spend most of their time waiting out a hang deadline.
    session.run("python", "-m", "pytest", "scenarios", "-m", "breakit", "-p", "no:randomly", "-n", "2", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def tests(session: nox.Session) -> None:
    """Unit tests of tp/ and harness/, plugin and CLI black-box tests."""
    _install(session)
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "tp", "harness", "scenarios", "tests", "benchmarks", "mutate", "noxfile.py")


@nox.session(venv_params=VENV_PARAMS)
def bench(session: nox.Session) -> None:
    """Speed numbers side by side: writes reports/bench/bench.json and bench.md."""
    _install(session)
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def mutate(session: nox.Session) -> None:
    """Apply each mutant of mutate/mutants.toml in a scratch copy: writes reports/mutate/mutate.json and .md."""
    _install(session)
    session.run("python", "-m", "mutate", *session.posargs)
