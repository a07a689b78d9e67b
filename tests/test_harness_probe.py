"""The questions the harness asks the rank command before any rank starts are bounded, and leave nothing behind."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.launch import lifetime, probe

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"

# A wrapper as clusters write them: it starts a helper in a session of its own (which keeps the wrapper's
# stdout and stderr open), then runs the TP path.
DETACHING = textwrap.dedent("""
    import os, runpy

    if os.fork() == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", "300"])
    runpy.run_module("fake_tp", run_name="__main__", alter_sys=True)
""")

# A command that never answers, and starts a detached helper first.
SILENT = textwrap.dedent("""
    import os, threading

    if os.fork() == 0:
        os.setsid()
        os.execvp("sleep", ["sleep", "300"])
    threading.Event().wait()
""")


def _kill_marked(marker: str) -> list[int]:
    """Whatever carries ``marker`` (a failing run's leftovers): kill it, and say what it was."""
    left = lifetime.marked(lifetime.RUN_ENV, marker)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


@pytest.mark.parametrize("launch", ["subprocess", "zygote"])
def test_a_wrapper_that_leaves_a_detached_child_neither_hangs_the_run_nor_outlives_it(tmp_path, launch) -> None:
    (tmp_path / "detaching_tp.py").write_text(DETACHING)
    marker = f"test-probe-{secrets.token_hex(6)}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), str(RANKS)]),
           lifetime.RUN_ENV: marker}
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "harness", "run", "--fault", "fake.chunk=raise@rank=0,chunk=1", "--expect",
             "crash", "--tp-command", "python -m detaching_tp", "--launch", launch, "--report-dir", "reports"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150, check=False)
        took = time.monotonic() - started
        left = lifetime.marked(lifetime.RUN_ENV, marker)
    finally:
        leftovers = _kill_marked(marker)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "observed CRASHED" in proc.stdout, proc.stdout
    assert left == [], f"left behind:\n{lifetime.describe(left)}"
    # Waiting on the helper's pipe instead took the probe's whole bound (120 s), then its helper's 300 s.
    assert leftovers == [] and took < probe.PROBE_TIMEOUT_S, took


def test_a_question_never_answered_is_killed_at_its_deadline_with_what_it_started(tmp_path, monkeypatch) -> None:
    script = tmp_path / "silent.py"
    script.write_text(SILENT)
    monkeypatch.setattr(probe, "PROBE_TIMEOUT_S", 2.0)
    marker = f"test-probe-{secrets.token_hex(6)}"
    monkeypatch.setenv(lifetime.RUN_ENV, marker)
    started = time.monotonic()
    try:
        with pytest.raises(probe.Refused) as refused:
            probe.check((sys.executable, str(script)), world_sizes=[2])
        took = time.monotonic() - started
        left = lifetime.marked(lifetime.RUN_ENV, marker)
    finally:
        _kill_marked(marker)
    assert "did not answer --check-* within 2 s; it was killed with every process it started" in str(refused.value)
    assert left == [], f"left behind:\n{lifetime.describe(left)}"
    assert took < 2.0 + 15, took  # the deadline, then SIGKILL and reaping, on a loaded box


def test_the_list_of_codes_is_read_when_the_command_exits_not_when_its_helper_does(tmp_path) -> None:
    (tmp_path / "detaching_tp.py").write_text(DETACHING)
    marker = f"test-probe-{secrets.token_hex(6)}"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO), str(RANKS)]), lifetime.RUN_ENV: marker}
    started = time.monotonic()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            mp.chdir(tmp_path)
            codes = probe.exit_codes.__wrapped__((sys.executable, "-m", "detaching_tp"))
        took = time.monotonic() - started
        left = lifetime.marked(lifetime.RUN_ENV, marker)
    finally:
        _kill_marked(marker)
    assert codes is not None and codes["FAKE_ERROR"] == 40, codes
    assert left == [], f"left behind:\n{lifetime.describe(left)}"
    assert took < 30, took
