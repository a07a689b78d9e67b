"""A pytest run with hung ranks is interrupted: no rank, no grandchild survives it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from interrupting import PARKED, communicate_or_explain, start, wait_for_line

from harness.launch import wait_gone

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"

TEST_MODULE = textwrap.dedent("""
    from harness import Expect, Fault, Scenario

    SCENARIO = Scenario(
        id="FM-14/hang", fm="FM-14", title="a worker hangs", proves="watchdog", expect=Expect.hang(),
        deadline_s=120, faults=(Fault(site="fake.chunk", action="hang", rank=1, chunk=1),),
        env={{"FAKE_PIDFILE_DIR": {pids!r}, "FAKE_CHILD": {child!r}}},
    )

    def test_hang(breakit):
        breakit.check(SCENARIO)
""")


def _wait_for_files(directory: Path, count: int, timeout_s: float) -> list[int]:
    """Ranks write pid files once started: wait for them (a file is the event)."""
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        files = sorted(directory.glob("*.pid"))
        if len(files) >= count:
            return [int(f.read_text()) for f in files]
        time.sleep(0.02)
    raise AssertionError(f"ranks did not start within {timeout_s} s: {sorted(directory.iterdir())}")


@pytest.mark.parametrize(
    ("sig", "launch", "child"),
    [
        (signal.SIGINT, "zygote", "session"),
        (signal.SIGTERM, "subprocess", "session"),
        # A SIGKILLed harness runs no cleanup: the zygote sees its stdin close and kills every rank's
        # process group. (Its store gone, a rank may exit first; a grandchild that left the rank's
        # session is then an orphan nobody can find, so this case keeps it in the group.)
        (signal.SIGKILL, "zygote", "group"),
    ],
    ids=["SIGINT-zygote", "SIGTERM-subprocess", "SIGKILL-zygote"],
)
def test_interrupted_pytest_leaves_no_rank_alive(tmp_path: Path, sig: signal.Signals, launch: str, child: str) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    (tmp_path / "test_hang.py").write_text(TEST_MODULE.format(pids=str(pids), child=child))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(RANKS)])}
    proc = start(
        [sys.executable, "-m", "pytest", "-p", "harness.plugin", "-p", "no:cacheprovider", "-q",
         "--breakit-tp-command", "python -m fake_tp", f"--breakit-launch={launch}",
         f"--breakit-report-dir={tmp_path / 'reports'}", "test_hang.py"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        started = _wait_for_files(pids, 4, timeout_s=60)  # 2 ranks + their grandchildren
        procs = [psutil.Process(pid) for pid in started]
        # The state the test interrupts: the ranks up and rank 1 parked in its hang (not still starting).
        wait_for_line(proc, tmp_path / "reports", "*/FM-14_hang-ws2/rank1.log", PARKED, within_s=60)
        proc.send_signal(sig)
        out, _ = communicate_or_explain(proc, 60)  # Ctrl-C ignored would be forever; 60 s is a starved box
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    if sig == signal.SIGTERM:
        assert "harness received SIGTERM" in out, out
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in out, out
    assert wait_gone(procs, timeout_s=10) == [], out
