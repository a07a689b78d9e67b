"""A rank's life is tied to its supervisor: nothing outlives a killed harness, zygote or exiting rank.

Every wait is on an event with a deadline: a pid file appearing (written by
rename), a rank's exit reported by the zygote, pidfds becoming readable.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness.launch import lifetime, wait_gone
from harness.launch.zygote import Zygote

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"


def _wait_for(directory: Path, pattern: str, count: int, timeout_s: float) -> list[int]:
    give_up_at = time.monotonic() + timeout_s
    while time.monotonic() < give_up_at:
        files = sorted(directory.glob(pattern))
        if len(files) >= count:
            return [int(f.read_text()) for f in files]
        time.sleep(0.02)
    raise AssertionError(f"no {count} x {pattern} in {directory} within {timeout_s} s: {sorted(directory.iterdir())}")


def _kill(pids: list[int]) -> None:
    for pid in pids:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _procs(pids: list[int]) -> list[psutil.Process]:
    """The processes still there (one already gone is what the tests want)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    return procs


# -- die_with_parent ------------------------------------------------------------------------

def _in_fork(fn) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_child_whose_parent_is_already_gone_exits_at_once() -> None:
    # The parent it expects is not its parent: exactly what it sees if the parent died before prctl.
    assert _in_fork(lambda: lifetime.die_with_parent(os.getppid() + 1)) == lifetime.ORPHAN_EXIT


def test_a_child_of_a_live_parent_gets_sigkill_as_its_parent_death_signal() -> None:
    def child() -> None:
        lifetime.die_with_parent(os.getppid())
        os._exit(0 if lifetime.parent_death_signal() == signal.SIGKILL else 3)

    assert _in_fork(child) == 0


# -- the zygote: pdeathsig in every rank, subreaper for what they leave -----------------------

def _zygote_spawn(zygote: Zygote, tmp_path: Path, mode: str, on_exit=lambda *a: None) -> int:
    env = {**os.environ, "ORPHAN_DIR": str(tmp_path), "ORPHAN_MODE": mode, "PYTHONPATH": str(RANKS)}
    return zygote.spawn(module="orphan_rank", argv=[], env=env, cwd=str(RANKS), log=str(tmp_path / "rank.log"),
                        on_exit=on_exit, timeout_s=30)


def test_ranks_die_with_a_sigkilled_zygote_even_when_stopped(tmp_path: Path) -> None:
    zygote = Zygote(preload=())
    pids: list[int] = []
    try:
        pids = [_zygote_spawn(zygote, tmp_path, "block") for _ in range(2)]
        _wait_for(tmp_path, "*.pid", 2, timeout_s=30)  # both run past die_with_parent
        procs = _procs(pids)
        os.kill(pids[1], signal.SIGSTOP)  # a frozen rank (FM-14/frozen)
        zygote._proc.kill()  # like an OOM killer: no cleanup runs in the zygote
        assert wait_gone(procs, timeout_s=10) == [], "ranks outlived their zygote"
    finally:
        _kill(pids)
        zygote.close()


def test_the_zygote_kills_what_an_exiting_rank_leaves_in_another_session(tmp_path: Path) -> None:
    zygote = Zygote(preload=())
    exited = threading.Event()
    grandchild: list[int] = []
    try:
        _zygote_spawn(zygote, tmp_path, "leave", on_exit=lambda *a: exited.set())
        assert exited.wait(30), "the rank did not exit"
        grandchild = _wait_for(tmp_path, "*.child", 1, timeout_s=5)
        assert wait_gone(_procs(grandchild), timeout_s=10) == [], "a setsid grandchild outlived its rank"
    finally:
        _kill(grandchild)
        zygote.close()


# -- the whole harness SIGKILLed during a run with a frozen rank ------------------------------

TEST_MODULE = textwrap.dedent("""
    from harness import Expect, Fault, Scenario

    SCENARIO = Scenario(
        id="FM-14/frozen", fm="FM-14", title="a worker hangs", proves="watchdog", expect=Expect.hang(),
        deadline_s=120, faults=(Fault(site="fake.chunk", action="hang", rank=1, chunk=1),),
        env={{"FAKE_PIDFILE_DIR": {pids!r}}},
    )

    def test_frozen(breakit):
        breakit.check(SCENARIO)
""")


@pytest.mark.parametrize("launch", ["zygote", "subprocess"])
def test_no_rank_survives_a_sigkilled_harness_and_zygote(tmp_path: Path, launch: str) -> None:
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    (tmp_path / "test_frozen.py").write_text(TEST_MODULE.format(pids=str(pids_dir)))
    marker = f"test-{secrets.token_hex(6)}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(RANKS)]), lifetime.RUN_ENV: marker}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "harness.plugin", "-p", "no:cacheprovider", "-q",
         "--breakit-tp-command", "python -m fake_tp", f"--breakit-launch={launch}",
         f"--breakit-report-dir={tmp_path / 'reports'}", "test_frozen.py"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    ranks: list[int] = []
    try:
        ranks = _wait_for(pids_dir, "rank*.pid", 2, timeout_s=60)
        procs = _procs(ranks)
        assert set(ranks) <= set(lifetime.marked(lifetime.RUN_ENV, marker)), "a rank does not carry the run marker"
        os.kill(ranks[1], signal.SIGSTOP)
        zygotes = [c for c in psutil.Process(proc.pid).children() if "harness.launch.zygote" in " ".join(c.cmdline())]
        assert len(zygotes) == (1 if launch == "zygote" else 0)
        proc.send_signal(signal.SIGSTOP)  # the harness cannot react to the zygote's death: no cleanup anywhere
        for z in zygotes:
            z.kill()
        proc.kill()
        proc.wait(timeout=30)
        assert wait_gone(procs, timeout_s=10) == [], "ranks outlived the harness"
        assert wait_gone(_procs(lifetime.marked(lifetime.RUN_ENV, marker)), timeout_s=10) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill(ranks + lifetime.marked(lifetime.RUN_ENV, marker))


# -- finding a run's processes by marker (.ci/run) --------------------------------------------

# .ci/run checks for leftovers with the interpreter on its PATH, which has neither psutil nor torch: the check
# must run there (a package __init__ that imported the launch machinery once turned every CI run red).
BARE = ("import runpy, sys; sys.modules['psutil'] = sys.modules['torch'] = None; "
        "runpy.run_module('harness.launch.lifetime', run_name='__main__')")


def _check(marker: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BARE, marker], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def test_leftovers_are_found_by_marker_and_listed(tmp_path: Path) -> None:
    marker = f"test-{secrets.token_hex(6)}"
    env = {**os.environ, lifetime.RUN_ENV: marker}
    sleeper = subprocess.Popen(["sleep", "600"], env=env, start_new_session=True)
    try:
        check = _check(marker, env)
        assert check.returncode == 1 and f"{sleeper.pid} sleep 600" in check.stderr, check.stderr
    finally:
        sleeper.kill()
        sleeper.wait()
    check = _check(marker, env)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("mode", ["subprocess", "zygote"])
def test_closing_a_launch_kills_what_its_rank_left_in_another_session(tmp_path: Path, mode: str) -> None:
    from harness.launch import Launch, LaunchSpec

    spec = LaunchSpec(command=(sys.executable, "-m", "orphan_rank"), world_size=1, log_dir=tmp_path / "logs",
                      env={"ORPHAN_DIR": str(tmp_path), "ORPHAN_MODE": "leave", "PYTHONPATH": str(RANKS)},
                      mode=mode, cwd=RANKS)
    launch = Launch(spec)
    grandchild: list[int] = []
    try:
        launch.start()
        kind, rank, code, _ = launch.events.get(timeout=60)
        assert (kind, rank, code) == ("exit", 0, 0), (tmp_path / "logs" / "rank0.log").read_text()
        grandchild = _wait_for(tmp_path, "*.child", 1, timeout_s=5)
        procs = _procs(grandchild)
        launch.close()
        assert wait_gone(procs, timeout_s=10) == [], "a setsid grandchild outlived its launch"
    finally:
        launch.close()
        _kill(grandchild)
