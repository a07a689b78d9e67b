"""``run --engine "CMD"``: one ad-hoc fault (or none) against an unmodified engine, judged like any run.

The engine is started as given, nothing appended, never asked ``--check-*`` / ``--list-*``: everything it
will be judged on comes from the bootstrap (``harness/engine/boot``), its exits and the output the user names.
A CLEAN run must reproduce the healthy run's output, run once per world size and cached in the run directory.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from harness.declare import adhoc
from harness.declare.fault import parse_faults
from harness.declare.scenario import Expect, Scenario
from harness.declare.selection import UsageError
from harness.engine.boot import _breakit_faults as faults
from harness.engine.command import Rerun, engine_command
from harness.engine.env import CODES, boot_env
from harness.judge.outcome import judge
from harness.judge.result import Baseline, Result
from harness.pipeline import options, runner
from harness.pipeline.deadline import resolve
from harness.pipeline.session import Session
from harness.report import files as report
from harness.supervise.observation import Observation

LAUNCHES = ("subprocess", "srun", "torchrun", "torchrun-2node")
"""Launch modes that start the command afresh (the zygote forks a pre-imported interpreter: no sitecustomize)."""


def cmd_engine(args: argparse.Namespace, finish: Callable[..., int]) -> int:
    """``run --engine``: check every input, run the scenario, print the verdict; ``finish`` (the command line's)
    writes and shows the report."""
    engine, settings, scenario = _inputs(args)
    session = Session(settings={**settings, "tp_command": engine}, run_dir=settings["report_dir"] / report.run_dir_name(),
                      selection=_asked(args))
    result = run_engine(scenario, session.run_config(), output_regex=args.output_regex,
                        deadline_s=settings["deadline"] if args.deadline is not None else None)
    print(f"{result.verdict} {result.id} (ws{result.world_size}): {result.reason}")
    print("rerun with: " + _rerun(args, engine, settings, scenario, result).line())
    if not result.passed:
        print(result.failure_text().partition("\n\n")[2], file=sys.stderr)
    return finish(session, planned=1, interrupted=False)


def _asked(args: argparse.Namespace) -> str:
    """What the run was asked for: runs compare only with runs of the same selection (every ad-hoc run's id is
    ``adhoc``, so without its faults a SIGSTOP run was compared with a SIGKILL one)."""
    words = ["--engine", args.engine, *(f"--fault {f}" for f in args.fault), f"--expect {args.expect or 'clean'}",
             *(f"--env {e}" for e in args.env)]
    return " ".join(words)


def _rerun(args: argparse.Namespace, engine: tuple[str, ...], settings: dict, scenario: Scenario,
           result: Result) -> Rerun:
    """This run as one command: what the user gave, and the deadline it had (measured or given)."""
    given = {n: settings[n] for n in ("stall", "startup_deadline") if getattr(args, n, None) is not None}
    return Rerun(engine=engine, faults=tuple(args.fault), expect=args.expect or "clean",
                 signatures=tuple(args.signature), world_size=result.world_size, launch=settings["launch"],
                 output_regex=args.output_regex, deadline_s=result.deadline_s, settings=given, env=scenario.env,
                 cwd=Path.cwd(), report_dir=settings["report_dir"].resolve() if args.report_dir is not None else None)


def _inputs(args: argparse.Namespace) -> tuple[tuple[str, ...], dict, Scenario]:
    """The engine command, the settings and the scenario, each checked before any rank starts."""
    if args.ids:
        raise UsageError("--engine runs one ad-hoc fault (--fault/--expect) or a healthy run, not scenario ids")
    if args.fault and not args.expect:
        raise UsageError("--fault needs --expect crash|clean|hang|diverge (or several, e.g. crash,hang)")
    if args.guardrails is not None or args.chunks is not None or args.tp_command is not None:
        raise UsageError("--guardrails, --chunks and --tp-command belong to a contract TP path, not to --engine: "
                         "the engine is started as given")
    try:
        engine = engine_command(args.engine)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.output_regex is not None:
        try:
            re.compile(args.output_regex)
        except re.error as exc:
            raise UsageError(f"invalid --output-regex {args.output_regex!r}: {exc}") from None
    try:
        settings = options.from_args(args, ("world_size", "deadline", "stall", "report_dir", "startup_deadline",
                                            "launch", "backend", "device"))
    except options.OptionError as exc:
        raise UsageError(str(exc)) from None
    if args.launch is None:
        settings["launch"] = "subprocess"
    elif settings["launch"] not in LAUNCHES:
        raise UsageError(f"launch mode {settings['launch']!r} cannot start an engine command afresh (the zygote "
                         f"forks a pre-imported interpreter); valid with --engine: {', '.join(LAUNCHES)}")
    try:
        faults.parse(";".join(args.fault), where="--fault")
        scenario = adhoc.scenario(faults=args.fault, expect=args.expect or "clean", signatures=args.signature,
                                  env=args.env)
        check_ranks(scenario, settings["world_size"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return engine, settings, scenario


def check_ranks(scenario: Scenario, world_size: int, *, where: str = "--fault") -> None:
    """Raise ValueError when a fault (or signature) names a rank the run will not have: it could never fire."""
    for fault in scenario.faults:
        if fault.rank is not None and fault.rank >= world_size:
            raise ValueError(f"{where} {fault.spec()!r}: rank {fault.rank} does not exist at world size {world_size}; "
                             f"ranks are 0..{world_size - 1}: pick one of them, or a world size above {fault.rank}")
    scenario.check_ranks(world_size)


def run_engine(scenario: Scenario, config, *, output_regex: str | None = None,
               deadline_s: float | None = None, healthy_env: Mapping[str, str] | None = None) -> Result:
    """Run ``scenario`` against the engine ``config.tp_command`` (started as given) and judge it.

    Deadline: ``harness.pipeline.deadline``'s precedence, ``deadline_s`` the one given; without one the healthy
    run is measured first (it is needed for CLEAN anyway). ``healthy_env``: the healthy run's rank environment
    (``grade --env``, part of the engine's configuration; ``run --env`` may be what breaks it, so not there)."""
    ws = scenario.world_size or config.world_size
    chosen = resolve(default_s=config.deadline_s, scenario_s=scenario.deadline_s, given=deadline_s,
                     healthy_s=lambda: healthy(config, world_size=ws, output_regex=output_regex,
                                               env=healthy_env).elapsed_s)
    deadline = chosen.seconds
    if config.on_progress:
        config.on_progress(f"deadline {deadline:.1f} s: {chosen.where}")
    sdir = report.scenario_dir(config.run_dir, scenario.id, ws)
    obs = execute(scenario, config, ws=ws, deadline_s=deadline, log_dir=sdir, output_regex=output_regex)
    result = judge(scenario, obs, deadline_s=deadline,
                   baseline=lambda: healthy(config, world_size=ws, output_regex=output_regex, env=healthy_env),
                   meta={"backend": "engine", "device": config.device, "launch": config.launch, "dir": str(sdir),
                         "output_regex": output_regex},
                   codes=CODES)
    report.write_result(result, sdir)
    return result


def measured_deadline(config, base: Baseline) -> float:
    """An engine's deadline without one given, from its healthy run (``harness.pipeline.deadline``'s rule)."""
    return resolve(default_s=config.deadline_s, healthy_s=lambda: base.elapsed_s).seconds


def execute(scenario: Scenario, config, *, ws: int, deadline_s: float, log_dir: Path,
            output_regex: str | None) -> Observation:
    """The engine's ranks: its command as given, with the bootstrap on their path."""
    return runner.execute(scenario, config, ws=ws, deadline_s=deadline_s, log_dir=log_dir,
                          command=tuple(config.tp_command), env=boot_env(output_regex))


def healthy(config, *, world_size: int, output_regex: str | None, watch: str = "",
            env: Mapping[str, str] | None = None) -> Baseline:
    """The engine's healthy output at ``world_size`` with rank environment ``env``, run once per run directory
    (beside the TP path's).

    ``watch``: a fault spec that changes nothing (``collective.any=sleep(0)``: one TP-FAULT line per collective)
    armed if the healthy run runs in this call, so that its logs also tell which collectives the engine issues."""
    env = dict(env or {})
    key = f"ws={world_size} engine={' '.join(config.tp_command)} regex={output_regex}" \
        + (f" env={sorted(env.items())}" if env else "")

    def run(index: int) -> Baseline:
        scenario = Scenario(id="baseline", fm="control", title="healthy engine run (no fault)", proves="control",
                            expect=Expect.clean(), world_size=world_size, faults=parse_faults(watch), env=env)
        where = config.run_dir / "_baseline" / f"engine-{index}-ws{world_size}"
        # Bounded by the run timeout, not the deadline: this run is what the deadline is measured from.
        obs = execute(scenario, config, ws=world_size, deadline_s=config.run_timeout_s, log_dir=where,
                      output_regex=output_regex)
        return runner.judged_baseline(scenario, obs, config, where=where, backend="engine", codes=CODES,
                                      output_regex=output_regex)

    return runner.cached_baseline(config, key, run)
