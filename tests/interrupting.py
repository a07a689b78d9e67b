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


def start(argv: list[str], *, env: dict, **popen) -> subprocess.Popen:
    """Start the process a test will Ctrl-C, as a user's terminal would run it, and ready to explain itself.

    SIGINT is set back to its default in the child: a child inherits an ignored SIGINT, and Python then
    installs no KeyboardInterrupt handler, so a test run from a background job of a non-interactive shell
    (bash ignores SIGINT for ``cmd &``) saw the harness sit out every Ctrl-C, which it is right to do there
    (``nohup`` means exactly that). faulthandler is on, so a run that outlives its interrupt can be asked
    for every thread's stack (``communicate_or_explain``)."""
    return subprocess.Popen(argv, env={**env, "PYTHONFAULTHANDLER": "1"}, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen)


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
        return communicate_or_explain(proc, within_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def communicate_or_explain(proc: subprocess.Popen, within_s: float) -> tuple[str, str]:
    """``proc.communicate``; if it outlives ``within_s``, fail with where it was stuck: its process tree and, when
    begun by ``start``, every thread's Python stack (faulthandler's dump on SIGABRT)."""
    try:
        return proc.communicate(timeout=within_s)
    except subprocess.TimeoutExpired:
        tree = _tree(proc.pid)
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"the interrupted process did not exit within {within_s:g} s of SIGINT; its tree:\n"
                             f"{tree}\nits output and stacks:\n{(out or '')[-4000:]}\n{(err or '')[-8000:]}") from None


def _tree(pid: int) -> str:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return "(gone)"
    lines = []
    for p in procs:
        try:
            lines.append(f"{p.pid} ppid={p.ppid()} {p.status()} {' '.join(p.cmdline())[:160]}")
        except psutil.Error:
            continue
    return "\n".join(lines)
