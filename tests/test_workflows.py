"""Every ``run:`` line of every GitHub workflow is executed here, on CPU, so a rename that breaks the nightly
job breaks this test first.

Nothing else runs the nightly GPU job's lines before the night does: a moved import once broke it and nothing
noticed. Each step is run verbatim, or with its GPU parts swapped for their CPU equivalents (written out in
``CPU_EQUIVALENTS``, so a reader sees exactly what differs), or skipped by name with the reason; a step this file
does not name fails the test, so a new step must say how CI runs it. A ``nox -s NAME`` a skipped or swapped
step names must still be a session of noxfile.py.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
STEP_TIMEOUT_S = 300.0
"""Correctness bound on one step (the explore swap runs one schedule; the others take seconds)."""

SKIPPED = {
    "Check GPUs and torch": "needs nvidia-smi and CUDA GPUs",
    "Install nox": "installs nox, as .ci/run already did for this run",
    "One-GPU checks (dtype tables, outputs, suite on CUDA tensors, device digests; docs/GPU.md)":
        "nox -s gpu refuses without a CUDA GPU; tests/test_gpu_cpu_side.py runs its CPU side",
    "Mutation run": "minutes of pytest runs in scratch copies; tests/test_mutate.py runs the machinery",
    "HTML report in a real browser": "needs Chromium (nox -s report); tests/test_harness_html.py checks the page",
}
"""Step name -> why it is not run on CPU."""

CPU_EQUIVALENTS = {
    "Break-it suite on NCCL": (
        ("python -m nox -s breakit --", "python -m pytest scenarios -m breakit -p no:randomly --collect-only -q"),
        ("--breakit-backend nccl", "--breakit-backend gloo"),
        ("reports/junit/breakit-nccl.xml", '"$BREAKIT_SCRATCH/breakit-nccl.xml"'),
    ),
    "Explore random fault schedules on NCCL (seeded by the date, so each night explores new ones)": (
        ("python -m nox -s explore --", "python -m harness explore"),
        ("--budget 900", '--runs 1 --max-shrink 0 --report-dir "$BREAKIT_SCRATCH"'),
        ("--backend nccl", "--backend gloo"),
    ),
    "Score PyTorch's Flight Recorder analyzer against injected faults on NCCL (docs/ATTRIBUTION.md on GPUs)": (
        ("python -m nox -s attribution --", "python -m harness.attribution"),
        ("--backend nccl", "--backend gloo"),
        ("--explore 6", "--explore 0 --only FM-15/off"),
        ("reports/attribution", '"$BREAKIT_SCRATCH/attribution"'),
    ),
}
"""Step name -> (text, CPU text) swaps, each of which must apply: the session's options are those its pytest or
harness command takes (noxfile.py passes them through), so collect-only / one schedule checks they still parse."""


def _steps() -> list[tuple[str, str, dict]]:
    out = []
    for path in WORKFLOWS:
        doc = yaml.safe_load(path.read_text())
        for job_name, job in doc.get("jobs", {}).items():
            for step in job.get("steps", []):
                if "run" in step:
                    out.append((f"{path.name}:{job_name}:{step.get('name', step['run'][:40])}", step["run"],
                                {**job.get("env", {}), **step.get("env", {})}))
    return out


def _nox_sessions() -> set[str]:
    tree = ast.parse((REPO / "noxfile.py").read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)
            and any("session" in ast.unparse(d) for d in node.decorator_list)}


STEPS = _steps()


def test_the_workflows_have_run_steps():
    assert len(STEPS) >= 8, f"expected the nightly workflow's run steps, found {[s[0] for s in STEPS]}"


def test_every_nox_session_a_workflow_names_exists():
    sessions = _nox_sessions()
    named = {m for _, run, _ in STEPS for m in re.findall(r"nox (?:-R )?-s (\w+)", run)}
    assert named and named <= sessions, f"workflows name nox sessions {sorted(named - sessions)} that noxfile.py lacks"


@pytest.mark.parametrize(("where", "run", "env"), STEPS, ids=[s[0] for s in STEPS])
def test_workflow_step_runs_on_cpu(where, run, env, tmp_path):
    name = where.split(":", 2)[2]
    if name in SKIPPED:
        pytest.skip(f"GPU/installer step, by name: {SKIPPED[name]}")
    for old, new in CPU_EQUIVALENTS.get(name, ()):
        assert old in run, f"{where}: the CPU swap {old!r} no longer applies; update CPU_EQUIVALENTS with the step"
        run = run.replace(old, new)
    assert not re.search(r"(--breakit-backend|--backend) nccl|nvidia-smi", run), f"{where}: a GPU part is left in the CPU run:\n{run}\n" \
                                                      f"name the step in SKIPPED or CPU_EQUIVALENTS"
    github_env, summary = tmp_path / "github_env", tmp_path / "step_summary"
    scoped = {k: str(v) for k, v in env.items() if "${{" not in str(v)}
    scoped.setdefault("WORLD_SIZE_INPUT", "2")
    scoped.pop("BREAKIT_SYSTEM_TORCH", None)  # this venv's CPU torch is the system torch here
    proc_env = {**os.environ, **scoped, "GITHUB_ENV": str(github_env), "GITHUB_STEP_SUMMARY": str(summary),
                "BREAKIT_SCRATCH": str(tmp_path), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-eo", "pipefail", "-c", run], cwd=REPO, env=proc_env, capture_output=True,
                          text=True, timeout=STEP_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{where} exited {proc.returncode} on CPU:\n$ {run}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
