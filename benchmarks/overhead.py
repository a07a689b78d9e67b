"""Guardrail overhead per chunk on the healthy path: ``TP_GUARDRAILS=all`` vs ``none``.

Bring-up mode exchanges digests every chunk (``TP_DIGEST_EVERY=1``),
optimised mode every 8th. With ``none`` the digest is off, so one ``none``
configuration is the baseline of both modes. Every run is a healthy scenario
(expect CLEAN, judged against the healthy baseline) launched by the harness in
zygote mode; the number is rank 0's final JSON ``chunk_latency_ms`` without
the first ``WARMUP`` chunks, reduced to its median (and its p10, see ``LOW_Q``).

The box is noisy, so configurations are interleaved: each repetition runs
every configuration once, in an order rotated from one repetition to the
next, and the overhead is taken per repetition (``all`` over the ``none`` run
next to it), then summarised with its spread.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks.stats import percentile, spread, summary
from harness.declare.scenario import Expect, Scenario
from harness.declare.verdicts import Outcome
from harness.pipeline.runner import RunConfig, run_scenario
from harness.supervise import logs

WARMUP = 2
"""Chunks dropped from the start of every run (first-touch allocations, cache fill)."""
LOW_Q = 10
"""A run's p10 chunk latency: the chunks nothing else on the box got in the way of.

Reported beside the median: on a shared 2-core box a chunk's latency is mostly
who else ran, and the low quantile isolates what the guardrails add."""


@dataclass(frozen=True, kw_only=True)
class Config:
    """One measured configuration."""

    name: str
    """Key in bench.json: ``none``, ``all/bring-up``, ``all/optimised``..."""
    guardrails: str
    """``TP_GUARDRAILS``."""
    digest_every: int
    """``TP_DIGEST_EVERY``."""


BASELINE = Config(name="none", guardrails="none", digest_every=1)
MODES = {
    "bring-up": Config(name="all/bring-up", guardrails="all", digest_every=1),
    "optimised": Config(name="all/optimised", guardrails="all", digest_every=8),
}
TARGET_PCT = {"bring-up": 3.0, "optimised": 1.0}


def scenario(config: Config, *, world_size: int, chunks: int) -> Scenario:
    """The healthy scenario that runs ``config``."""
    return Scenario(id="bench/overhead/" + re.sub(r"[^A-Za-z0-9._-]+", "-", config.name), fm="control", proves="control",
                    title=f"healthy run, TP_GUARDRAILS={config.guardrails} TP_DIGEST_EVERY={config.digest_every}",
                    expect=Expect.clean(), guardrails=config.guardrails,
                    env={"TP_DIGEST_EVERY": str(config.digest_every)}, world_size=world_size, chunks=chunks)


def chunk_latencies(config: Config, run: RunConfig, *, world_size: int, chunks: int) -> list[float]:
    """One healthy run; rank 0's per-chunk latencies in ms after the warm-up."""
    result = run_scenario(scenario(config, world_size=world_size, chunks=chunks), run)
    if result.observed != Outcome.CLEAN.value:
        raise RuntimeError(f"overhead run {config.name} at world size {world_size} was not CLEAN: {result.reason}")
    final = logs.final_json(logs.read_text(Path(result.dir) / "rank0.log"), "chunk_latency_ms")
    if final is None:
        raise RuntimeError(f"overhead run {config.name}: rank 0 printed no chunk_latency_ms (in {result.dir})")
    return [float(x) for x in final["chunk_latency_ms"][WARMUP:]]


def run(*, plan: dict[int, tuple[int, int]], run_dir: Path, cwd: Path, extra: tuple[Config, ...] = (),
        say, backend: str = "gloo", device: str = "auto") -> dict:
    """The ``overhead`` section of bench.json; ``plan`` maps world size -> (repetitions, chunks per run)."""
    configs = [BASELINE, *MODES.values(), *extra]
    run_cfg = RunConfig(run_dir=run_dir, launch="zygote", cwd=cwd, backend=backend, device=device)
    out = {"warmup_chunks": WARMUP, "launch": "zygote", "backend": backend, "device": device, "plan": {str(ws): {"reps": r, "chunks": c}
                                                                  for ws, (r, c) in plan.items()},
           "measured": "rank 0 chunk_latency_ms (chunks after warm-up), median per run; overhead = all/none - 1",
           "targets_pct": TARGET_PCT, "low_quantile": LOW_Q, "world_sizes": {}}
    for ws, (reps, chunks) in plan.items():
        medians: dict[str, list[float]] = {c.name: [] for c in configs}
        lows: dict[str, list[float]] = {c.name: [] for c in configs}
        pooled: dict[str, list[float]] = {c.name: [] for c in configs}
        for rep in range(reps):
            shift = rep % len(configs)
            for config in configs[shift:] + configs[:shift]:
                lat = chunk_latencies(config, run_cfg, world_size=ws, chunks=chunks)
                medians[config.name].append(statistics.median(lat))
                lows[config.name].append(percentile(lat, LOW_Q))
                pooled[config.name].extend(lat)
            say(f"overhead: ws{ws} rep {rep + 1}/{reps}: " + "  ".join(
                f"{name} {values[-1]:.2f} ms" for name, values in medians.items()))
        out["world_sizes"][str(ws)] = _compare(configs, medians, lows, pooled)
    return out


def _per_rep_pct(values: list[float], base: list[float]) -> list[float]:
    return [(v / b - 1.0) * 100.0 for v, b in zip(values, base, strict=True)]


def _compare(configs: list[Config], medians: dict[str, list[float]], lows: dict[str, list[float]],
             pooled: dict[str, list[float]]) -> dict:
    rows = {}
    for config in configs:
        guarded = config is not BASELINE
        rows[config.name] = {
            "guardrails": config.guardrails,
            "digest_every": config.digest_every,
            "run_median_ms": spread(medians[config.name], digits=3),
            f"run_p{LOW_Q}_ms": spread(lows[config.name], digits=3),
            "chunk_ms": summary(pooled[config.name], digits=3),
            "overhead_pct": spread(_per_rep_pct(medians[config.name], medians[BASELINE.name])) if guarded else None,
            f"overhead_p{LOW_Q}_pct": spread(_per_rep_pct(lows[config.name], lows[BASELINE.name])) if guarded else None,
            "overhead_pooled_pct": round((statistics.median(pooled[config.name])
                                          / statistics.median(pooled[BASELINE.name]) - 1) * 100, 2) if guarded else None,
        }
    return rows
