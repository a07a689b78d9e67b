"""Interrupt a run as a user does: Ctrl-C while a rank is parked in a ``hang`` fault.

A test that interrupts "after the first result" races the rest of the run: on a
starved box the scenarios after it can all finish before the signal lands. A
rank parked in a ``hang`` fault stays parked until someone ends it, so the
interrupt lands in the state the test means, however slow the box.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

PARKED = "TP-FAULT site=fake.chunk action=hang"
"""What a stand-in rank prints as it parks in a ``hang`` fault (fixtures/ranks/fake_tp.py)."""


def wait_for_line(proc: subprocess.Popen, reports: Path, pattern: str, text: str, *, within_s: float) -> Path:
    """The first file under ``reports`` matching ``pattern`` that holds ``text``; fails if ``proc`` exits first."""
    give_up_at = time.monotonic() + within_s
    while True:
        for path in reports.glob(pattern):
            try:
                if text in path.read_text(errors="replace"):
                    return path
            except OSError:  # rotated or not yet there
                continue
        assert proc.poll() is None, f"the run exited ({proc.returncode}) before {pattern} showed {text!r}"
        assert time.monotonic() < give_up_at, f"{pattern} did not show {text!r} within {within_s:g} s"
        time.sleep(0.05)


def interrupt_when_parked(proc: subprocess.Popen, reports: Path, log_pattern: str, *,
                          within_s: float = 90.0) -> tuple[str, str]:
    """SIGINT ``proc`` once a rank log matching ``log_pattern`` shows the rank parked; (stdout, stderr). Reaped always."""
    try:
        wait_for_line(proc, reports, log_pattern, PARKED, within_s=within_s)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=within_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
