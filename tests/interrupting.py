"""Interrupt a run as a user does: Ctrl-C once its first scenario has written its result."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path


def interrupt_after_first_result(proc: subprocess.Popen, reports: Path, pattern: str, *,
                                 within_s: float = 60.0) -> tuple[str, str]:
    """SIGINT ``proc`` once ``reports`` holds a file matching ``pattern``; its (stdout, stderr). Reaped always."""
    try:
        give_up_at = time.monotonic() + within_s
        while not list(reports.glob(pattern)):  # the first scenario's result file is the event
            assert time.monotonic() < give_up_at and proc.poll() is None, "the first scenario never finished"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=within_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
