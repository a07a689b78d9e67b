"""The zero-touch bootstrap (harness/engine/boot) on its own, and the fixture engine without the harness.

Real interpreters started with the bootstrap on ``PYTHONPATH``, as the harness starts an engine's ranks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.engine import BOOT_DIR, boot_env
from harness.engine.boot import _breakit_faults as faults
from harness.launch.store import free_port

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "fixtures" / "engines" / "dtensor_engine.py"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "TP_FAILPOINTS", "TP_REPORT_DIR")}
    env.update(boot_env(), RANK="0", WORLD_SIZE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _wait_for(path: Path, proc: subprocess.Popen, text: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("spec, words", [
    ("collective.all_reduc=hang", ["no such failpoint 'collective.all_reduc'", "collective.all_reduce"]),
    ("collective.all_reduce=flip", ["unknown failpoint action 'flip'", "skip"]),
    ("collective.all_reduce=hang@call=0", ["bad trigger 'call=0'", "from 1"]),
    ("collective.any=kill(SIGNOPE)", ["kill needs a signal name"]),
    ("collective.barrier=sleep(-1)", ["sleep needs seconds"]),
])
def test_a_bad_spec_is_refused_naming_the_part_and_the_choices(spec: str, words: list[str]) -> None:
    with pytest.raises(faults.FaultSpecError) as info:
        faults.parse(spec, where="--fault")
    for word in words:
        assert word in str(info.value)
    assert "--fault" in str(info.value)


def test_a_good_spec_parses_into_its_triggers() -> None:
    (entry,) = faults.parse("collective.all_reduce=kill(SIGKILL)@rank=1,call=3")
    assert (entry.site, entry.action.name, entry.action.arg, entry.triggers) == (
        "collective.all_reduce", "kill", "SIGKILL", {"rank": 1, "call": 3})


def test_a_rank_with_a_bad_spec_exits_2_before_the_engine_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "print('engine ran')"], env=_env(TP_FAILPOINTS="collective.x=hang"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "engine ran" not in proc.stdout
    assert "TP_FAILPOINTS" in proc.stderr and "no such failpoint" in proc.stderr


def test_an_existing_sitecustomize_still_runs(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("import os\nos.environ['THEIRS_RAN'] = '1'\n")
    env = _env()
    env["PYTHONPATH"] = f"{BOOT_DIR}{os.pathsep}{theirs}"
    proc = subprocess.run([sys.executable, "-c", "import os, sys; print(os.environ.get('THEIRS_RAN'), "
                           "'_breakit_rank' in sys.modules)"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[0].split() == ["1", "True"], proc.stderr


def test_sigusr1_is_answered_with_stacks_and_a_trace_and_the_rank_lives_on(tmp_path: Path) -> None:
    """Without the bootstrap SIGUSR1's default action kills the process (the case the judge must not blame)."""
    log = tmp_path / "rank0.log"
    script = "import sys, threading\nprint('ready', flush=True)\nthreading.Event().wait(60)\n"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", script], env=_env(TP_REPORT_DIR=str(tmp_path)), stdout=fh,
                                stderr=subprocess.STDOUT)
    try:
        assert "ready" in _wait_for(log, proc, "ready")
        proc.send_signal(signal.SIGUSR1)
        flight = tmp_path / "flight_rank0.json"
        deadline = time.monotonic() + 30
        while not flight.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, f"the rank died of SIGUSR1: {proc.returncode}"
        doc = json.loads(flight.read_text())
        assert doc["schema"] == "tp-flight/1" and doc["reason"] == "SIGUSR1" and doc["entries"] == []
        assert "Thread 0x" in log.read_text() and "in wait" in log.read_text()
    finally:
        proc.kill()
        proc.wait()


def test_an_uncaught_exception_is_one_fatal_line_then_the_engines_own_exit(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", "raise ValueError('bad \"shard\"\\nsecond line')"],
                          env=_env(TP_REPORT_DIR=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    fatal = [ln for ln in proc.stdout.splitlines() if ln.startswith("TP-FATAL ")]
    assert len(fatal) == 1, proc.stdout
    assert "code=UNCAUGHT_EXCEPTION rank=0" in fatal[0] and "type=ValueError" in fatal[0]
    assert 'detail="ValueError: bad \\"shard\\" second line"' in fatal[0]
    assert "Traceback" in proc.stderr  # the engine's own excepthook still runs
    events = [json.loads(ln.split(" ", 1)[1]) for ln in proc.stdout.splitlines() if ln.startswith("TP-EVENT ")]
    assert events[-1]["event"] == "exit" and events[-1]["code"] == 1
    assert json.loads((tmp_path / "flight_rank0.json").read_text())["reason"] == "TP-FATAL UNCAUGHT_EXCEPTION"


def test_the_fixture_engine_decodes_the_same_tokens_at_world_sizes_1_2_and_4(tmp_path: Path) -> None:
    outputs = {}
    for ws in (1, 2, 4):
        port = free_port()
        procs = []
        try:
            for rank in range(ws):
                env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TP_FAILPOINTS")}
                env.update(RANK=str(rank), WORLD_SIZE=str(ws), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port), OMP_NUM_THREADS="1")
                procs.append(subprocess.Popen([sys.executable, str(ENGINE)], env=env, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True))
            out = procs[0].communicate(timeout=240)[0]
            codes = [p.wait(timeout=60) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        assert codes == [0] * ws, (ws, codes, out)
        outputs[ws] = json.loads(out.strip().splitlines()[-1])
    assert {ws: o["world_size"] for ws, o in outputs.items()} == {1: 1, 2: 2, 4: 4}
    assert len({o["output_digest"] for o in outputs.values()}) == 1, outputs
    assert len(outputs[1]["tokens"]) == 8


def test_every_collective_is_seen_once_whichever_api_issued_it_and_the_trace_names_each_call(tmp_path: Path) -> None:
    """c10d API and functional collectives alike; a fault on every call (``sleep(0)``) prints one line per call."""
    port, procs = free_port(), []
    try:
        for rank in range(2):
            env = _env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port), TP_FAILPOINTS="collective.any=sleep(0)",
                       TP_REPORT_DIR=str(tmp_path), OMP_NUM_THREADS="1")
            with (tmp_path / f"rank{rank}.log").open("w") as fh:
                procs.append(subprocess.Popen([sys.executable, str(ROOT / "fixtures" / "engines" / "c10d_ops.py")],
                                              env=env, stdout=fh, stderr=subprocess.STDOUT))
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    texts = {r: (tmp_path / f"rank{r}.log").read_text() for r in range(2)}
    assert codes == [0, 0], texts
    common = ["all_reduce", "broadcast", "all_gather_into_tensor", "all_gather", "reduce_scatter_tensor", "barrier",
              "all_reduce"]  # the last: torch.distributed._functional_collectives.all_reduce, DTensor's path
    for rank, p2p in ((0, "send"), (1, "recv")):
        ops = [ln.split(" op=")[1].split()[0] for ln in texts[rank].splitlines() if ln.startswith("TP-FAULT ")]
        assert ops == [*common[:6], p2p, common[6]] * 2, ops  # a warm-up set, then the timed one
        trace = json.loads((tmp_path / f"flight_rank{rank}.json").read_text())
        sites = [e["site"].rpartition(" call ")[0] for e in trace["entries"]]
        assert sites == common * 2, sites  # gloo's recorder keeps no p2p op: the rest still line up


def test_an_exit_the_bootstrap_did_not_see_has_no_code_in_its_exit_event(tmp_path: Path) -> None:
    """``raise SystemExit("...")`` skips sys.exit and the excepthook: the event must not claim exit 0."""
    proc = subprocess.run([sys.executable, "-c", "raise SystemExit('world size 3 does not divide 8 heads')"],
                          env=_env(TP_REPORT_DIR=str(tmp_path)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "does not divide" in proc.stderr
    events = [json.loads(ln.split(" ", 1)[1]) for ln in proc.stdout.splitlines() if ln.startswith("TP-EVENT ")]
    assert events[-1]["event"] == "exit" and events[-1]["code"] is None, events[-1]
