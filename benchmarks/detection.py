"""How fast hangs and frozen peers are called, how much the flight trace costs, and whether a loaded box
raises false alarms.

* ``flight``: the flight trace's cost per chunk: ``enter`` + ``leave`` timed op by op, times the
  collectives a steady-state chunk really issues (counted from a real run's trace), over that run's
  median chunk latency. End to end the box's run-to-run noise (~20 %) would drown 0.2 %.
* ``hang``: every guardrail-off proof that may end HUNG, run repeatedly through ``run_scenario``; the
  fault (``TP-FAULT``, or the first init) to HUNG-verdict time (stacks and traces in hand) from each
  result. Anchor: the fixed hang deadline the proofs used to wait out.
* ``false_alarm``: healthy runs while busy processes oversubscribe the cores; a ``PEER_LOST`` in any
  rank's log is a false alarm of the adaptive peer timeout.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.stats import summary
from harness.declare.scenario import Expect, Scenario, load_catalog
from harness.declare.verdicts import Outcome
from harness.pipeline.runner import RunConfig, run_scenario
from harness.supervise import stall

TRACE_TARGET_PCT = 0.2
HANG_TARGET_S = 1.5
OLD_HANG_DEADLINE_S = 4.0
"""The fixed deadline every hang proof waited out before stall verdicts (``harness.declare.scenario.HANG_DEADLINE_S``)."""


def flight(*, iters: int, cwd: Path, say) -> dict:
    """The ``flight`` section: per-collective trace cost and its share of a chunk."""
    import torch

    from tp import flight as fl

    rec = fl.Recorder(rank=0, world_size=2, ctx={"chunk": 0, "call_id": 0})
    t = torch.zeros(48, 64, dtype=torch.float64)
    batches = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(iters):
            rec.leave(rec.enter("all_reduce", t, fl.GENERATOR_SITE))
        batches.append((time.perf_counter() - start) / iters * 1e6)
    per_op_us = statistics.median(batches)
    start = time.perf_counter()
    json.dumps(rec.document("exit"))
    dump_ms = (time.perf_counter() - start) * 1e3
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TP_REPORT_DIR": tmp, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "tp", "--world-size", "2", "--chunks", "12"], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=120, check=True)
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        doc = json.loads((Path(tmp) / "flight_rank0.json").read_text())
    per_chunk: dict[int, int] = {}
    for e in doc["entries"]:
        per_chunk[e["chunk"]] = per_chunk.get(e["chunk"], 0) + 1
    steady = [n for c, n in per_chunk.items() if c % 4 not in (0,) and c >= 0]  # chunks after a reset recompute
    collectives = statistics.median(steady) if steady else max(per_chunk.values())
    chunk_ms = statistics.median(run["chunk_latency_ms"][2:])
    cost_us = per_op_us * collectives
    pct = cost_us / 1e3 / chunk_ms * 100
    say(f"flight: {per_op_us:.2f} us per collective x {collectives:g} per chunk = {cost_us:.1f} us of a "
        f"{chunk_ms:.1f} ms chunk ({pct:.3f} %); one dump {dump_ms:.1f} ms")
    return {"per_collective_us": round(per_op_us, 3), "collectives_per_chunk": collectives,
            "chunk_ms": round(chunk_ms, 3), "cost_per_chunk_us": round(cost_us, 2), "cost_pct": round(pct, 4),
            "dump_ms": round(dump_ms, 2), "ring_entries": doc["capacity"], "iters": iters,
            "measured": "Recorder.enter+leave timed op by op (median of 7 batches) x rank 0's collectives per "
                        "steady-state chunk of a real 12-chunk ws2 run, over that run's median chunk latency",
            "target_pct": TRACE_TARGET_PCT}


def hang_proofs(catalog: list[Scenario]) -> list[Scenario]:
    return [s for s in catalog if Outcome.HUNG in s.expect.outcomes]


def hang(*, runs: int, world_size: int, run_dir: Path, cwd: Path, say, limit: int | None = None) -> dict:
    """The ``hang`` section: fault -> HUNG verdict per hang proof (the first ``limit`` of them)."""
    config = RunConfig(run_dir=run_dir, world_size=world_size, launch="zygote", cwd=cwd)
    rows = []
    for scenario in hang_proofs(load_catalog())[:limit]:
        times, outcomes, failed, by_stall = [], {}, [], 0
        for _ in range(runs):
            result = run_scenario(scenario, config)
            outcomes[result.observed] = outcomes.get(result.observed, 0) + 1
            if result.observed == Outcome.HUNG.value and result.hang_verdict_s is not None:
                times.append(result.hang_verdict_s)
                by_stall += stall.PROVEN in result.reason
            if not result.passed:
                failed.append(f"{result.dir}: {result.reason}")
        stats = summary(times)
        p95 = stats["p95"]
        rows.append({"id": scenario.id, "runs": runs, "verdict_s": stats, "outcomes": outcomes, "stall_verdicts": by_stall,
                     "failed_runs": len(failed), "failures": failed[:3],
                     "old_deadline_over_p95": round(OLD_HANG_DEADLINE_S / p95, 2) if p95 else None})
        say(f"hang: {scenario.id:<16} fault->HUNG median {stats['median']} s  p95 {p95} s  outcomes {outcomes}")
    return {"world_size": world_size, "runs_per_scenario": runs, "target_s": HANG_TARGET_S,
            "old_deadline_s": OLD_HANG_DEADLINE_S, "stall_s": config.stall_s, "scenarios": rows,
            "measured": "result.hang_verdict_s: TP-FAULT (or first init) -> HUNG decided with stacks and traces"}


def false_alarm(*, runs: int, busy: int, world_size: int, run_dir: Path, cwd: Path, say) -> dict:
    """The ``false_alarm`` section: healthy runs under ``busy`` spinning processes; PEER_LOST counted."""
    healthy = Scenario(id="CTL-healthy/oversubscribed", fm="control", title="healthy run on an oversubscribed box",
                       proves="control", expect=Expect.clean())
    config = RunConfig(run_dir=run_dir, world_size=world_size, launch="zygote", cwd=cwd)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    peer_lost, not_clean, durations = [], [], []
    try:
        for i in range(runs):
            result = run_scenario(healthy, config)
            durations.append(result.duration_s or 0.0)
            if any(r.code == "PEER_LOST" for r in result.ranks):
                peer_lost.append(result.dir)
            if result.observed != Outcome.CLEAN.value:
                not_clean.append(f"{result.dir}: {result.observed}")
            if (i + 1) % 25 == 0:
                say(f"false_alarm: {i + 1}/{runs} runs, {len(peer_lost)} PEER_LOST")
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    say(f"false_alarm: {runs} healthy runs with {busy} busy processes on {os.cpu_count()} CPUs: "
        f"{len(peer_lost)} PEER_LOST, {len(not_clean)} not CLEAN")
    return {"runs": runs, "busy_processes": busy, "cpus": os.cpu_count(), "peer_lost": len(peer_lost),
            "peer_lost_runs": peer_lost[:5], "not_clean": len(not_clean), "not_clean_runs": not_clean[:5],
            "run_duration_s": summary(durations, digits=3), "issue_asks_runs": 500}
