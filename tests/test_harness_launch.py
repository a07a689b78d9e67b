"""Real ranks (fixtures/ranks/fake_tp.py) through launch, supervise and judge."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness import Expect, Fault, Interrupt, Scenario
from harness.launch import Launch, LaunchSpec, reap_all, torchrun
from harness.pipeline.runner import RunConfig, run_scenario

RANKS = Path(__file__).resolve().parent.parent / "fixtures" / "ranks"
FAKE = (sys.executable, "-m", "fake_tp")


def _config(tmp_path: Path, **kw) -> RunConfig:
    kw.setdefault("deadline_s", 1.0)
    return RunConfig(run_dir=tmp_path / "run", tp_command=FAKE, cwd=RANKS, **kw)


def _scenario(expect: Expect, **kw) -> Scenario:
    kw.setdefault("id", "t")
    kw.setdefault("deadline_s", 1.0)  # a hang here is the fake rank's: no need for Expect.hang's default
    return Scenario(fm="FM-14", title="test", proves="watchdog", expect=expect, **kw)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _pids(directory: Path) -> list[int]:
    return [int(p.read_text()) for p in sorted(directory.glob("*.pid"))]


@pytest.mark.parametrize("mode", ["zygote", "subprocess"])
def test_hung_rank_is_reported_with_its_stack_and_the_whole_tree_is_reaped(tmp_path, mode) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    scenario = _scenario(
        Expect.hang({1: r"line \d+ in failpoint"}),
        faults=(Fault(site="fake.chunk", action="hang", rank=1, chunk=1),),
        env={"FAKE_PIDFILE_DIR": str(pids), "FAKE_CHILD": "session"},
    )
    result = run_scenario(scenario, _config(tmp_path, launch=mode))
    assert result.observed == "HUNG" and result.passed, result.reason
    assert "deadline 1 s after TP-FAULT passed with rank 0" in result.reason
    assert "in failpoint" in result.ranks[1].stack and "in collective" in result.ranks[0].stack
    assert f"stack of rank 1 (pid {result.ranks[1].pid})" in result.failure_text()
    assert all(r.reaped for r in result.ranks)
    started = _pids(pids)
    assert len(started) == 4  # two ranks, each with a grandchild in a session of its own
    assert [pid for pid in started if not _gone(pid)] == []


def test_crash_names_root_cause_and_collateral(tmp_path) -> None:
    scenario = _scenario(
        Expect.crash({0: r"TP-FATAL .*code=FAKE_ERROR", "others": r"code=PEER_ABORT rank=\d+ cause_rank=0"}),
        faults=(Fault(site="fake.chunk", action="raise", rank=0, chunk=2),),
    )
    result = run_scenario(scenario, _config(tmp_path, world_size=3))
    assert result.observed == "CRASHED" and result.passed, result.reason
    assert result.root_cause["rank"] == 0 and result.abort["code"] == "FAKE_ERROR"
    assert [r.exit for r in result.ranks] == ["exit 40", "exit 51", "exit 51"]
    assert result.time_to_crash_s is not None and result.time_to_crash_s < 1.0
    assert json.loads((Path(result.dir) / "result.json").read_text())["verdict"] == "PASS"


def test_stopped_rank_is_named_and_reaped(tmp_path) -> None:
    scenario = _scenario(Expect.hang(), faults=(Fault(site="fake.chunk", action="kill(SIGSTOP)", rank=1, chunk=1),))
    result = run_scenario(scenario, _config(tmp_path))
    assert result.observed == "HUNG", result.reason
    assert "rank 1 (pid" in result.reason and "is stopped (SIGSTOP)" in result.reason
    assert result.ranks[1].stack is None and result.ranks[0].stack
    assert all(_gone(r.pid) for r in result.ranks)


def test_rank_without_faulthandler_and_run_timeout_without_anchor(tmp_path) -> None:
    scenario = _scenario(Expect.hang(), world_size=1, run_timeout_s=1.0,
                         env={"FAKE_HANG_AT_START": "1", "FAKE_NO_FAULTHANDLER": "1"})
    result = run_scenario(scenario, _config(tmp_path))
    assert result.observed == "HUNG", result.reason
    assert "run timeout 1 s passed with rank 0" in result.reason
    assert "has no SIGUSR1 handler installed (SigCgt in /proc/" in result.reason
    assert result.ranks[0].exit == "SIGKILL" and result.ranks[0].reaped  # never killed by the stack request


def test_clean_and_diverged_runs_share_one_cached_baseline(tmp_path) -> None:
    config = _config(tmp_path)
    clean = run_scenario(_scenario(Expect.clean(), id="clean"), config)
    assert clean.observed == "CLEAN" and clean.passed, clean.reason
    assert clean.digests["rank0_final"] == clean.digests["baseline"]
    one_rank = run_scenario(_scenario(Expect.diverge(), id="one", rank_env={1: {"FAKE_SALT": "x"}}), config)
    assert one_rank.observed == "DIVERGED" and "ranks' result digests differ" in one_rank.reason
    every = run_scenario(_scenario(Expect.diverge(), id="every", env={"FAKE_SALT": "x"}), config)
    assert every.observed == "DIVERGED" and "differs from the healthy run's" in every.reason
    assert len(json.loads((config.run_dir / "baseline.json").read_text())) == 1
    assert len(list((config.run_dir / "_baseline").iterdir())) == 1


def test_interrupt_is_sent_once_the_rank_reports_the_chunk(tmp_path) -> None:
    scenario = _scenario(Expect.clean(), chunks=300, interrupt=Interrupt(rank=0, signal="SIGTERM", after_chunk=2),
                         env={"FAKE_GRACEFUL": "1", "FAKE_CHUNK_S": "0.01"})
    result = run_scenario(scenario, _config(tmp_path))
    assert result.observed == "CLEAN" and result.passed, result.reason
    assert f"sent SIGTERM to rank 0 (pid {result.ranks[0].pid}) at chunk" in result.interrupt
    final = json.loads(result.ranks[0].log_tail[-1])
    assert 2 <= final["chunks"] < 300


def test_config_rejected_by_the_rank_is_a_harness_error(tmp_path) -> None:
    scenario = _scenario(Expect.crash(), world_size=1, faults=(Fault(site="fake.nope", action="raise"),))
    result = run_scenario(scenario, _config(tmp_path))
    assert result.observed == "HARNESS_ERROR" and not result.passed
    assert "no such failpoint 'fake.nope' in TP_FAILPOINTS; known: fake.call, fake.chunk, fake.init" in result.reason


@pytest.mark.parametrize(
    ("mode", "command", "message"),
    [
        ("subprocess", ("/nonexistent/tp-binary",), "cannot start rank 0"),
        ("zygote", ("/nonexistent/tp-binary",), "use launch mode 'subprocess'"),
    ],
)
def test_launch_failure_is_a_harness_error(tmp_path, mode, command, message) -> None:
    config = RunConfig(run_dir=tmp_path / "run", tp_command=command, launch=mode)
    result = run_scenario(_scenario(Expect.clean(), world_size=1), config)
    assert result.observed == "HARNESS_ERROR" and message in result.reason


def test_parallel_launches_use_their_own_ports(tmp_path) -> None:
    results = {}

    def run(name: str) -> None:
        results[name] = run_scenario(_scenario(Expect.crash(), id=name,
                                               faults=(Fault(site="fake.chunk", action="exit(3)", chunk=3),)),
                                     _config(tmp_path / name))

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results) == ["a", "b"]
    ports = set()
    for result in results.values():
        assert result.observed == "CRASHED", result.reason
        init = json.loads(next(ln for ln in result.ranks[0].log_tail if '"init"' in ln).split(" ", 1)[1])
        ports.add(init["master_port"])
    assert len(ports) == 2


def test_reap_all_kills_every_live_launch(tmp_path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = LaunchSpec(command=(*FAKE, "--chunks", "3"), world_size=2, log_dir=tmp_path, cwd=RANKS,
                      env={"FAKE_PIDFILE_DIR": str(pids), "FAKE_HANG_AT_START": "1", "FAKE_CHILD": "group"})
    launch = Launch(spec)
    launch.start()
    ranks = list(launch.pids.values())
    wait_until = time.monotonic() + 30
    while len(_pids(pids)) < 4 and time.monotonic() < wait_until:  # ranks write pid files once started
        time.sleep(0.01)
    assert len(_pids(pids)) == 4 and all(not _gone(pid) for pid in ranks)
    reap_all()
    assert all(_gone(pid) for pid in ranks)
    assert all(_gone(pid) for pid in _pids(pids))


def test_zygote_death_is_a_harness_error_and_orphans_are_reaped(tmp_path, monkeypatch) -> None:
    from harness.launch import zygote

    private = zygote.Zygote()
    monkeypatch.setattr(zygote, "_SHARED", private)
    pids = tmp_path / "pids"
    pids.mkdir()
    scenario = _scenario(Expect.hang(), deadline_s=60, env={"FAKE_PIDFILE_DIR": str(pids)},
                         faults=(Fault(site="fake.chunk", action="hang", rank=1, chunk=1),))
    results = []
    runner = threading.Thread(target=lambda: results.append(run_scenario(scenario, _config(tmp_path))))
    runner.start()
    wait_until = time.monotonic() + 30
    while len(_pids(pids)) < 2 and time.monotonic() < wait_until:  # ranks write pid files once started
        time.sleep(0.01)
    ranks = _pids(pids)
    private._proc.kill()
    runner.join(timeout=30)
    private.close()
    assert results and results[0].observed == "HARNESS_ERROR", results
    assert "the zygote that forked it exited" in results[0].reason
    assert all(_gone(pid) for pid in ranks)


def test_store_host_death_is_a_harness_error_not_the_ranks_verdict(tmp_path, monkeypatch) -> None:
    # Under the zygote the ranks' store is the harness's: losing it makes every rank fail (PEER_LOST,
    # STORE_LOST) for a reason that is not the TP path's, and a crash proof would have passed on it.
    from harness.launch import store_host, zygote

    private = zygote.Zygote()
    monkeypatch.setattr(zygote, "_SHARED", private)
    monkeypatch.setattr(store_host, "_HOST", None)
    scenario = Scenario(id="FM-13/t", title="test", proves="watchdog", expect=Expect.crash(), chunks=100_000)
    config = RunConfig(run_dir=tmp_path / "run", tp_command=(sys.executable, "-m", "tp"),
                       cwd=Path(__file__).resolve().parent.parent, deadline_s=60)
    results = []
    runner = threading.Thread(target=lambda: results.append(run_scenario(scenario, config)))
    runner.start()
    try:
        wait_until = time.monotonic() + 60
        while not any('"event": "chunk"' in log.read_text() for log in config.run_dir.glob("*/rank0.log")):
            assert time.monotonic() < wait_until, "rank 0 ran no chunk within 60 s"
            time.sleep(0.01)  # polls a file the rank writes, bounded: the ranks are past the handshake
        psutil.Process(store_host._HOST.pid).kill()
        runner.join(timeout=30)
    finally:
        store_host.close_host()
        private.close()
    assert results and results[0].observed == "HARNESS_ERROR", results
    assert re.search(r"the store host \(pid \d+\) exited \(-?9\) while the ranks used its store", results[0].reason), \
        results[0].reason


def test_ranks_resolve_with_a_one_second_dns_timeout_unless_the_env_says_otherwise(tmp_path, monkeypatch) -> None:
    # c10d reverse-looks-up every store peer; glibc's default 5 s per dropped query stalled whole runs.
    from harness.launch.spec import base_env

    spec = LaunchSpec(command=FAKE, world_size=2, log_dir=tmp_path)
    monkeypatch.delenv("RES_OPTIONS", raising=False)
    assert base_env(spec)["RES_OPTIONS"] == "timeout:1 attempts:1"
    monkeypatch.setenv("RES_OPTIONS", "timeout:3")
    assert base_env(spec)["RES_OPTIONS"] == "timeout:3"


def test_a_rank_torchruns_agent_signals_still_reports_the_exit_status_it_had(tmp_path) -> None:
    """When a sibling fails, torchrun's agent ``killpg``s each surviving worker's session with SIGTERM: the rank's
    shell (what the agent started) must outlive the rank to write how it ended, or the report has no status."""
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    worker = subprocess.Popen(["sh", "-c", torchrun._WRAPPER, "harness-rank", *sleeper], start_new_session=True,
                              env={**os.environ, "HARNESS_LOG_DIR": str(tmp_path), "RANK": "0"})
    exits: queue.Queue = queue.Queue()
    try:
        torchrun.follow_ranks(tmp_path, 1, [worker], on_pid=lambda rank, pid: os.killpg(worker.pid, signal.SIGTERM),
                              on_exit=lambda rank, code: exits.put(code))
        assert exits.get(timeout=30) == -signal.SIGTERM
        assert worker.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
