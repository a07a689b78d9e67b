"""Time to crash of every guarded scenario, over many runs, next to what users live with today.

A guarded scenario is one whose expectation is CRASHED: the FM's own id
(``FM-03``) and the variants that prove another guardrail turns the same
fault into a crash (``FM-03/skip``, ``FM-13/frozen``). Each run goes through
``harness.pipeline.runner.run_scenario``, the code path the pytest plugin uses, in the
default zygote launch mode; ``time_to_crash_s`` is read from its result (last
rank's exit minus the ``TP-FAULT`` instant). Runs are serial: parallel runs
on a small box would measure each other.

Reference rows rerun the frozen-peer scenarios with a shorter watchdog peer
timeout, to show which setting bounds their time to crash.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from benchmarks.stats import summary
from harness.declare.scenario import Scenario, load_catalog
from harness.declare.verdicts import Outcome
from harness.pipeline.runner import RunConfig, run_scenario

ANCHORS_S = {
    "nccl_collective_timeout": 600.0,
    "gloo_collective_timeout": 1800.0,
    "serving_watchdog": 300.0,
    "hang_detector": 60.0,
}
"""What a hang costs without the guardrails: PyTorch's default collective timeouts and typical watchdogs."""

REFERENCE_PEER_TIMEOUT_S = "0.5"
"""``TP_PEER_TIMEOUT_S`` of the reference rows (the default is 2.0)."""


def guarded(catalog: list[Scenario], *, variants: bool = True) -> list[Scenario]:
    """Scenarios expected to crash; without ``variants`` only the FM's own id (no ``/``)."""
    out = [s for s in catalog if s.expect.outcomes == frozenset({Outcome.CRASHED})]
    return out if variants else [s for s in out if "/" not in s.id]


def reference_variants(catalog: list[Scenario]) -> list[Scenario]:
    """The frozen-peer scenarios with a short watchdog peer timeout (bench-only ids)."""
    out = []
    for s in catalog:
        if s.expect.frozen and s.expect.outcomes == frozenset({Outcome.CRASHED}):
            out.append(dataclasses.replace(
                s, id=f"{s.id}/peer-timeout-{REFERENCE_PEER_TIMEOUT_S}",
                env={**s.env, "TP_PEER_TIMEOUT_S": REFERENCE_PEER_TIMEOUT_S}))
    return out


def measure(scenario: Scenario, config: RunConfig, runs: int) -> dict:
    """Run ``scenario`` ``runs`` times; the distribution of its time to crash."""
    ttcs: list[float] = []
    outcomes: dict[str, int] = {}
    failed: list[str] = []
    durations: list[float] = []
    for _ in range(runs):
        result = run_scenario(scenario, config)
        outcomes[result.observed] = outcomes.get(result.observed, 0) + 1
        if result.observed == Outcome.CRASHED.value and result.time_to_crash_s is not None:
            ttcs.append(result.time_to_crash_s)
        if result.duration_s is not None:
            durations.append(result.duration_s)
        if not result.passed:
            failed.append(f"{result.dir}: {result.reason}")
    stats = summary(ttcs)
    p95 = stats["p95"]
    return {
        "id": scenario.id,
        "fm": scenario.fm,
        "proves": scenario.proves,
        "runs": runs,
        "ttc_s": stats,
        "run_duration_s": summary(durations, digits=3),
        "outcomes": outcomes,
        "failed_runs": len(failed),
        "failures": failed[:3],
        "anchor_over_p95": {k: round(v / p95) for k, v in ANCHORS_S.items()} if p95 else {},
        "env": dict(scenario.env),
    }


def run(*, runs: int, world_size: int, run_dir: Path, cwd: Path, variants: bool, reference_runs: int, say,
        only: str | None = None) -> dict:
    """The ``ttc`` section of bench.json; ``only``: comma-separated ids to measure (default every guarded one)."""
    catalog = load_catalog()
    if only:
        wanted = {i.strip() for i in only.split(",") if i.strip()}
        unknown = wanted - {s.id for s in catalog}
        if unknown:
            raise ValueError(f"--ttc-only: unknown scenario id(s) {', '.join(sorted(unknown))}; see python -m harness list")
        catalog = [s for s in catalog if s.id in wanted]
    config = RunConfig(run_dir=run_dir, world_size=world_size, launch="zygote", cwd=cwd)
    rows, refs = [], []
    for scenario in guarded(catalog, variants=variants):
        row = measure(scenario, config, runs)
        say(f"ttc: {scenario.id:<16} median {row['ttc_s']['median']} s  p95 {row['ttc_s']['p95']} s  "
            f"max {row['ttc_s']['max']} s  ({row['failed_runs']} failed runs)")
        rows.append(row)
    for scenario in reference_variants(catalog) if reference_runs else ():
        row = measure(scenario, config, reference_runs)
        say(f"ttc: reference {scenario.id}: p95 {row['ttc_s']['p95']} s")
        refs.append(row)
    all_p95 = [r["ttc_s"]["p95"] for r in rows if r["ttc_s"]["p95"] is not None]
    return {
        "world_size": world_size,
        "runs_per_scenario": runs,
        "launch": "zygote",
        "measured": "result.time_to_crash_s: last rank exit - TP-FAULT mono (run_scenario, serial runs)",
        "anchors_s": ANCHORS_S,
        "scenarios": rows,
        "worst_p95_s": max(all_p95) if all_p95 else None,
        "reference": refs,
        "default_peer_timeout_s": _default_peer_timeout_s(),
    }


def _default_peer_timeout_s() -> float:
    """The TP path's own default for ``TP_PEER_TIMEOUT_S`` (the frozen-peer scenarios' floor)."""
    from tp.config import RankConfig

    return RankConfig.__dataclass_fields__["peer_timeout_s"].default
