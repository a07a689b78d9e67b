"""Run one scenario end to end: launch, supervise, judge, write result.json.

Also owns the healthy baseline: the digest a CLEAN run must reproduce. It is
run once per (world size, chunks, backend, rank command) per report run and
cached in ``baseline.json`` in the run directory under a file lock, so
pytest-xdist workers sharing a run directory run it once between them.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.declare.fault import frozen_by
from harness.declare.scenario import Expect, Scenario
from harness.declare.verdicts import Outcome
from harness.judge.outcome import judge, rank0_output
from harness.judge.result import Baseline, Result
from harness.launch import Launch, LaunchError, LaunchSpec, probe
from harness.pipeline import options
from harness.pipeline.deadline import resolve
from harness.report import files as report
from harness.supervise import logs
from harness.supervise.loop import Limits, harness_signals, supervise
from harness.supervise.observation import Observation


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Settings shared by every scenario of one report run."""

    run_dir: Path
    """Run directory: ``reports/<YYYYmmdd-HHMMSS>-<pid>``."""
    world_size: int = 2
    """Ranks per scenario unless the scenario fixes it."""
    backend: str = "gloo"
    """``gloo`` or ``nccl``."""
    device: str = "auto"
    """``TP_DEVICE`` for every rank (``cpu``, ``cuda``), or ``auto`` to leave it unset."""
    deadline_s: float = 8.0
    """Deadline when neither marker nor scenario sets one."""
    run_timeout_s: float = 60.0
    """Bound on a whole run when the scenario sets none."""
    stall_s: float | None = field(default_factory=lambda: options.default("stall"))
    """Stall window: HUNG early once traces prove a hang and nothing progressed this long (None: deadline only)."""
    startup_deadline_s: float = 30.0
    """Every rank must print its init event this soon after launch (else HARNESS_ERROR)."""
    launch: str = "zygote"
    """One of ``harness.launch.MODES``."""
    tp_command: tuple[str, ...] = field(default_factory=lambda: options.default("tp_command"))
    """Command starting one rank (``--chunks N --backend B`` are appended)."""
    cwd: Path = field(default_factory=Path.cwd)
    """Working directory of the ranks."""
    on_progress: Callable[[str], None] | None = field(default=None, compare=False)
    """Receives one-line progress messages (store progress, exits, reaping)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "run_dir", Path(self.run_dir).resolve())
        object.__setattr__(self, "cwd", Path(self.cwd).resolve())
        for name in ("world_size", "backend", "device", "launch"):
            options.OPTIONS[name].validate(getattr(self, name), f"RunConfig.{name}")
        if self.deadline_s <= 0 or self.run_timeout_s <= 0 or self.startup_deadline_s <= 0:
            raise ValueError("RunConfig: deadline_s, run_timeout_s and startup_deadline_s must be > 0")


def run_scenario(scenario: Scenario, config: RunConfig, *, deadline_s: float | None = None) -> Result:
    """Run ``scenario`` and return its judged Result (also written as result.json).

    ``deadline_s`` is a pytest marker's (``harness.pipeline.deadline`` holds the one precedence). World size:
    ``scenario.world_size`` > ``config.world_size``.
    """
    ws = scenario.world_size or config.world_size
    deadline = resolve(default_s=config.deadline_s, marker=deadline_s, scenario_s=scenario.deadline_s).seconds
    sdir = report.scenario_dir(config.run_dir, scenario.id, ws)
    obs = _execute(scenario, config, ws=ws, deadline_s=deadline, log_dir=sdir)
    result = judge(
        scenario, obs, deadline_s=deadline,
        baseline=lambda: healthy_baseline(config, world_size=ws, chunks=scenario.chunks),
        meta={"backend": config.backend, "device": config.device, "launch": config.launch, "dir": str(sdir)},
        codes=probe.exit_codes(config.tp_command),
    )
    report.write_result(result, sdir)
    return result


def _execute(scenario: Scenario, config: RunConfig, *, ws: int, deadline_s: float, log_dir: Path) -> Observation:
    """The contract TP path's ranks: its rank command with ``--chunks``/``--backend``, guardrails and device."""
    env = {
        "TP_GUARDRAILS": scenario.guardrails,
        **({"TP_DEVICE": config.device} if config.device != "auto" else {}),
    }
    command = (*config.tp_command, "--chunks", str(scenario.chunks), "--backend", config.backend)
    return execute(scenario, config, ws=ws, deadline_s=deadline_s, log_dir=log_dir, command=command, env=env)


def execute(scenario: Scenario, config: RunConfig, *, ws: int, deadline_s: float, log_dir: Path,
            command: tuple[str, ...], env: dict[str, str]) -> Observation:
    """Start ``command`` once per rank with ``env`` (plus the faults, the report dir and the scenario's own env)
    and supervise it; a launch failure becomes a HARNESS_ERROR observation. Every kind of TP path runs here."""
    env = {"TP_FAILPOINTS": scenario.failpoints(), "TP_REPORT_DIR": str(log_dir), **env, **scenario.env}
    spec = LaunchSpec(command=command, world_size=ws, log_dir=log_dir, env=env, rank_env=scenario.rank_env,
                      mode=config.launch, cwd=config.cwd)
    # A rank its own fault froze cannot exit, whatever was expected: once it is all that is left, the others
    # have ended the run (their guardrail acted, or the deadline will say they hung), so the harness reaps it.
    frozen = scenario.expect.frozen | frozen_by(scenario.faults)
    limits = Limits(deadline_s=deadline_s, run_timeout_s=scenario.run_timeout_s or config.run_timeout_s,
                    faults_armed=bool(scenario.faults), frozen=frozen, stall_s=config.stall_s,
                    stall_ends_run=Outcome.HUNG in scenario.expect.outcomes, startup_s=config.startup_deadline_s)
    say = config.on_progress
    on_progress = (lambda msg: say(f"[{scenario.id}] {msg}")) if say else None
    launch = Launch(spec)
    try:
        with harness_signals():
            try:
                launch.start()
            except LaunchError as exc:
                now = time.monotonic()
                return Observation(world_size=ws, pids=dict(launch.pids), log_paths=dict(launch.log_paths),
                                   started_at=now, ended_at=now, harness_error=str(exc))
            return supervise(launch, limits=limits, interrupt=scenario.interrupt, on_progress=on_progress)
    finally:
        launch.close()


def healthy_baseline(config: RunConfig, *, world_size: int, chunks: int) -> Baseline:
    """The healthy run's digest for these settings, run once per run directory."""
    key = f"ws={world_size} chunks={chunks} backend={config.backend} device={config.device} cmd={' '.join(config.tp_command)}"
    return cached_baseline(config, key, lambda index: _run_baseline(config, world_size=world_size, chunks=chunks,
                                                                    index=index))


def cached_baseline(config: RunConfig, key: str, run: Callable[[int], Baseline]) -> Baseline:
    """``baseline.json``'s entry for ``key``, else ``run(index)``'s, stored there; under a file lock, so
    pytest-xdist workers sharing a run directory run each baseline once between them."""
    config.run_dir.mkdir(parents=True, exist_ok=True)
    cache = config.run_dir / "baseline.json"
    with (config.run_dir / "baseline.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            known = json.loads(cache.read_text()) if cache.exists() else {}
            if key in known:
                return Baseline(**known[key])
            base = run(len(known))
            known[key] = asdict(base)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, indent=2))
            tmp.replace(cache)
            return base
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run_baseline(config: RunConfig, *, world_size: int, chunks: int, index: int) -> Baseline:
    scenario = Scenario(id="baseline", fm="control", title="healthy baseline (no fault, all guardrails)",
                        proves="control", expect=Expect.clean(), chunks=chunks, world_size=world_size)
    where = config.run_dir / "_baseline" / f"{index}-ws{world_size}-c{chunks}-{config.backend}-{config.device}"
    obs = _execute(scenario, config, ws=world_size, deadline_s=config.deadline_s, log_dir=where)
    return judged_baseline(scenario, obs, config, where=where, backend=config.backend,
                           codes=probe.exit_codes(config.tp_command))


def judged_baseline(scenario: Scenario, obs: Observation, config: RunConfig, *, where: Path, backend: str,
                    codes, output_regex: str | None = None) -> Baseline:
    """A healthy run's Baseline: its output digest if it ended CLEAN, else why it cannot serve as one. Its output
    is read as a judged run's is (``rank0_output``), so the two are compared alike."""
    final = rank0_output({0: logs.read_text(obs.log_paths.get(0, where / "rank0.log"))}, output_regex)
    digest = final.get("output_digest") if final else None
    result = judge(scenario, obs, deadline_s=config.deadline_s,
                   baseline=lambda: Baseline(ok=True, digest=digest, where=str(where)),
                   meta={"backend": backend, "launch": config.launch, "dir": str(where), "output_regex": output_regex},
                   codes=codes)
    if result.observed != Outcome.CLEAN.value:
        return Baseline(ok=False, reason=f"observed {result.observed}: {result.reason}", where=str(where))
    return Baseline(ok=True, digest=digest, where=str(where), elapsed_s=round(obs.ended_at - obs.started_at, 3))
