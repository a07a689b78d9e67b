"""What zero-touch mode costs an unmodified engine, and how fast it calls a hang (issue #27).

* ``engine_cost``: ``fixtures/engines/c10d_ops.py`` (each c10d collective ``OPS_REPEAT`` times; rank 0 prints
  its timed collectives' wall and process CPU seconds) at each world size, with no bootstrap, the bootstrap
  disarmed (``PYTHONPATH`` + ``BREAKIT_ENGINE_BOOT=1``) and armed with a fault that never fires, runs
  interleaved; per repetition the ratio to the same repetition's ``none`` run. Then whole healthy runs of the
  fixture engine (``dtensor_engine.py``, ws 2) with and without the bootstrap, interleaved: the end-to-end
  overhead (start-up included), and the per-collective cost times the collectives one run issues, as % of
  the run's CPU time (the issue's goal: <= 2 %).
* ``engine_hang``: ``run_engine`` on a fixture engine with ``collective.all_reduce=hang@rank=1,call=K``,
  expect HUNG; each result's ``hang_verdict_s`` (the fault's TP-FAULT line -> HUNG decided).

Ranks are plain processes with torchrun's env on a free port, reaped in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.stats import spread, summary
from harness.declare import adhoc
from harness.engine.env import boot_env
from harness.engine.run import run_engine
from harness.pipeline.runner import RunConfig

COST_TARGET_PCT = 2.0
HANG_TARGET_S = 1.5
CONFIGS = ("none", "disarmed", "armed")
NEVER_FIRES = "collective.barrier=hang@rank=1,call=999999"
COUNT_FAULT = "collective.any=sleep(0)"
"""Changes nothing, prints one TP-FAULT line per collective: how many one engine run issues."""
FIXTURES = Path("fixtures") / "engines"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(config: str, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BREAKIT_", "TP_", "TORCH_FR"))}
    env.update({"MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1", **extra})
    if config != "none":
        env.update(boot_env())
    if config == "armed":
        env["TP_FAILPOINTS"] = NEVER_FIRES
    elif config == "count":
        env["TP_FAILPOINTS"] = COUNT_FAULT
    return env


def launch(script: Path, ws: int, config: str, *, cwd: Path, extra: dict[str, str] | None = None,
           timeout_s: float = 300.0) -> dict:
    """One run of ``script`` at ``ws`` ranks: its wall time, each rank's CPU seconds (rusage), rank 0's stdout."""
    port = _free_port()
    procs: list[subprocess.Popen] = []
    cpu: dict[int, float] = {}
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        try:
            for rank in range(ws):
                env = _env(config, {**(extra or {}), "MASTER_PORT": str(port), "WORLD_SIZE": str(ws),
                                    "RANK": str(rank)})
                procs.append(subprocess.Popen([sys.executable, str(script)], cwd=cwd, env=env,
                                              stdout=out if rank == 0 else subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            _reap(procs, cpu, start + timeout_s)
            wall = time.perf_counter() - start
        finally:
            for p in procs:
                if p.returncode is None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
        out.seek(0)
        stdout = out.read()
    bad = {r: p.returncode for r, p in enumerate(procs) if p.returncode != 0}
    if bad:
        raise RuntimeError(f"{script.name} ws{ws} {config}: ranks exited {bad}")
    return {"wall_s": wall, "cpu_s": cpu, "stdout": stdout}


def _reap(procs: list[subprocess.Popen], cpu: dict[int, float], deadline: float) -> None:
    """Wait for every rank with ``wait4`` (its own CPU seconds); TimeoutError past ``deadline``."""
    while any(p.returncode is None for p in procs):
        for rank, p in enumerate(procs):
            if p.returncode is None:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    cpu[rank] = usage.ru_utime + usage.ru_stime
        if time.perf_counter() > deadline:
            raise TimeoutError(f"ranks still running: {[p.pid for p in procs if p.returncode is None]}")
        time.sleep(0.01)


def _rank0_json(stdout: str, key: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{") and key in line:
            return json.loads(line)
    raise RuntimeError(f"no JSON line with {key!r} in rank 0's output")


def _paired(xs: list[float], base: list[float], f, digits: int) -> dict:
    """``f(x, base)`` per repetition (the runs of one repetition ran back to back), as a spread."""
    return spread([f(a, b) for a, b in zip(xs, base, strict=True)], digits=digits)


def per_collective(*, plan: dict[int, tuple[int, int]], cwd: Path, say) -> dict:
    """c10d_ops.py per world size: µs per collective (rank 0's CPU and wall), configurations interleaved."""
    out = {}
    for ws, (reps, repeat) in plan.items():
        us: dict[str, dict[str, list[float]]] = {c: {"cpu": [], "wall": []} for c in CONFIGS}
        for rep in range(reps):
            order = CONFIGS if rep % 2 == 0 else CONFIGS[::-1]  # neither config always runs first
            for config in order:
                run = _rank0_json(launch(cwd / FIXTURES / "c10d_ops.py", ws, config, cwd=cwd,
                                         extra={"OPS_REPEAT": str(repeat)})["stdout"], "collectives")
                us[config]["cpu"].append(run["cpu_seconds"] / run["collectives"] * 1e6)
                us[config]["wall"].append(run["seconds"] / run["collectives"] * 1e6)
            say(f"engine_cost: ws{ws} rep {rep + 1}/{reps}: CPU µs/collective "
                + ", ".join(f"{c} {us[c]['cpu'][-1]:.0f}" for c in CONFIGS))
        row = {"reps": reps, "ops_repeat": repeat, "collectives_per_run": repeat * (7 + (ws > 1))}
        for c in CONFIGS:
            row[c] = {"cpu_us": spread(us[c]["cpu"], digits=1), "wall_us": spread(us[c]["wall"], digits=1)}
        for c in CONFIGS[1:]:
            row[f"{c}_over_none"] = {k: _paired(us[c][k], us["none"][k], lambda a, b: a / b, 3)
                                     for k in ("cpu", "wall")}
            row[f"{c}_minus_none_cpu_us"] = _paired(us[c]["cpu"], us["none"]["cpu"], lambda a, b: a - b, 1)
        out[str(ws)] = row
    return out


def whole_run(*, runs: int, cwd: Path, say) -> dict | None:
    """The fixture engine's healthy run at ws 2, without and with the bootstrap (disarmed), interleaved."""
    if runs < 1:
        return None
    script = cwd / FIXTURES / "dtensor_engine.py"
    counted = launch(script, 2, "count", cwd=cwd)["stdout"]
    collectives = sum(1 for line in counted.splitlines() if line.startswith("TP-FAULT"))
    vals: dict[str, dict[str, list[float]]] = {c: {"wall": [], "cpu0": []} for c in CONFIGS[:2]}
    for rep in range(runs):
        for config in CONFIGS[:2] if rep % 2 == 0 else CONFIGS[1::-1]:
            run = launch(script, 2, config, cwd=cwd)
            vals[config]["wall"].append(run["wall_s"])
            vals[config]["cpu0"].append(run["cpu_s"][0])
        say(f"engine_cost: dtensor_engine ws2 rep {rep + 1}/{runs}: "
            + ", ".join(f"{c} {vals[c]['wall'][-1]:.2f} s wall, {vals[c]['cpu0'][-1]:.2f} s rank-0 CPU"
                        for c in CONFIGS[:2]))
    row = {"runs": runs, "collectives_rank0": collectives}
    for c in CONFIGS[:2]:
        row[c] = {"wall_s": spread(vals[c]["wall"], digits=3), "cpu0_s": spread(vals[c]["cpu0"], digits=3)}
    row["overhead_pct"] = {k: _paired(vals["disarmed"][k], vals["none"][k], lambda a, b: (a / b - 1) * 100, 2)
                           for k in ("wall", "cpu0")}
    return row


def cost(*, plan: dict[int, tuple[int, int]], engine_runs: int, cwd: Path, say) -> dict:
    """The ``engine_cost`` section."""
    ops = per_collective(plan=plan, cwd=cwd, say=say)
    engine = whole_run(runs=engine_runs, cwd=cwd, say=say)
    result = {"per_collective": ops, "engine": engine, "target_pct": COST_TARGET_PCT, "armed_fault": NEVER_FIRES,
              "measured": "c10d_ops.py: rank 0's process CPU (time.process_time) and wall (perf_counter) over "
                          "its timed collectives; dtensor_engine.py: launch -> last rank's exit, and rank 0's "
                          "CPU seconds from its rusage"}
    if engine is not None and "2" in ops:
        diff = ops["2"]["disarmed_minus_none_cpu_us"]
        per_us, run_cpu_s = diff["median"], engine["none"]["cpu0_s"]["median"]

        def pct(us: float) -> float:
            return round(us * engine["collectives_rank0"] / 1e6 / run_cpu_s * 100, 3)

        result["derived_pct"] = pct(per_us)
        result["derived_pct_ci95"] = [pct(x) for x in diff["ci95"]]  # the per-collective difference's CI, scaled
        say(f"engine_cost: disarmed {per_us:+.1f} µs CPU/collective x {engine['collectives_rank0']} collectives "
            f"= {result['derived_pct']:+.3f} % of a {run_cpu_s:.2f} s rank-0 CPU run; end to end "
            f"{engine['overhead_pct']['cpu0']['median']:+.2f} % CPU, "
            f"{engine['overhead_pct']['wall']['median']:+.2f} % wall")
    return result


def hang(*, runs: int, fixture: str, call: int, run_dir: Path, cwd: Path, say) -> dict:
    """The ``engine_hang`` section: zero-touch fault -> HUNG verdict on ``fixture`` at ws 2."""
    fault = f"collective.all_reduce=hang@rank=1,call={call}"
    config = RunConfig(run_dir=run_dir, world_size=2, launch="subprocess",
                       tp_command=(sys.executable, str(cwd / FIXTURES / fixture)), deadline_s=60.0,
                       run_timeout_s=180.0, startup_deadline_s=120.0, cwd=cwd)
    scenario = adhoc.scenario(faults=[fault], expect="hang", signatures=[], env=[])
    times, outcomes, failed, walls = [], {}, [], []
    for _ in range(runs):
        start = time.perf_counter()
        result = run_engine(scenario, config, deadline_s=60.0)  # given: no healthy run to measure a deadline from
        walls.append(time.perf_counter() - start)
        outcomes[result.observed] = outcomes.get(result.observed, 0) + 1
        if result.observed == "HUNG" and result.hang_verdict_s is not None:
            times.append(result.hang_verdict_s)
        if not result.passed:
            failed.append(f"{result.dir}: {result.reason}")
    stats = summary(times)
    say(f"engine_hang: {fixture} {fault}: fault->HUNG median {stats['median']} s, p95 {stats['p95']} s, "
        f"outcomes {outcomes}")
    return {"fixture": fixture, "fault": fault, "world_size": 2, "runs": runs, "verdict_s": stats,
            "outcomes": outcomes, "failed_runs": len(failed), "failures": failed[:3], "stall_s": config.stall_s,
            "run_wall_s": summary(walls, digits=2), "target_s": HANG_TARGET_S,
            "measured": "run_engine's result.hang_verdict_s: the fault's TP-FAULT line -> HUNG decided "
                        "(stacks and Flight Recorder traces in hand); launch subprocess, deadline given (60 s)"}
