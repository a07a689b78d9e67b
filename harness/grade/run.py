"""``grade``: check the inputs, plan the rows, run each one fault judged, write the card.

An engine's rows run zero-touch (``harness.engine.run.run_engine``), the reference path's through the contract
runner (``harness.pipeline.runner.run_scenario``); both end in the one judge. Each row expects CRASHED (what a guarded
engine does), so its ``verdict`` is PASS exactly when the engine crashed; the card reports the outcome itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.declare import adhoc
from harness.declare.selection import UsageError
from harness.engine import run as engine_run
from harness.engine.boot import _breakit_faults as faults
from harness.engine.command import engine_command
from harness.grade import card, plan
from harness.judge.result import Result
from harness.launch import probe
from harness.pipeline import options, runner
from harness.report import files as report
from harness.supervise import logs

RUN_TIMEOUT_S = 180.0
"""Bound on one row's whole run (start-up and teardown included) on top of twice ``--hang-after``."""


@dataclass(frozen=True, kw_only=True)
class Inputs:
    """What ``grade`` was asked, checked."""

    engine: tuple[str, ...] | None
    """The engine command (zero-touch), or None for the contract TP path ``tp_command``."""
    graded: str
    """What the card is of, as the user wrote it: the engine command, or ``reference: <tp command>``; the delta
    compares with the last card of the same text."""
    tp_command: tuple[str, ...]
    """The contract TP path graded when ``engine`` is None."""
    world_sizes: tuple[int, ...]
    """One set of rows per world size."""
    ops: tuple[str, ...] | None
    """Collectives to break; None: every one found (engine) or catalogued (reference)."""
    actions: tuple[str, ...]
    """Actions per op, from ``plan.ACTIONS``."""
    rank: int
    """The rank broken."""
    call: int | None
    """``--call``: the op's call to break; None: ``plan.OpCalls.default_call``."""
    hang_after: float | None
    """Deadline of every row; None: 3x the engine's healthy run (the reference path: 8 s)."""
    output_regex: str | None
    """``--output-regex`` for an engine."""
    env: dict[str, str]
    """``--env``: extra environment of every rank, the healthy runs' too; part of what is graded, so the delta
    compares only with a grade of the same command and the same ``env``."""
    report_root: Path
    """Where run directories go."""


def cmd_grade(args: argparse.Namespace) -> int:
    """Run the matrix and write the card; the exit status is in ``harness.grade.EPILOG``."""
    asked = _inputs(args)
    say = (lambda text, end="\n": None) if args.quiet else _say
    run_dir = asked.report_root / report.run_dir_name()
    config = _config(asked, run_dir)
    try:
        rows = _rows(asked, config, say)
    except card.GradeError as exc:
        say(" no")
        print(f"harness grade: {exc}", file=sys.stderr)
        return 1
    done = []
    for index, row in enumerate(rows, 1):
        say(f"[{index}/{len(rows)}] {row.op} {row.action} ws={row.world_size} ...", end="")
        result = _run_row(asked, config, row)
        say(f" {result.observed} {_seconds(result)}")
        done.append(card.row_doc(row, result, subject="your engine" if asked.engine else "the TP path"))
    doc = card.write(run_dir, graded=asked.graded, rows=done, settings=_settings(asked, config))
    report.update_latest(run_dir)
    for line in card.delta_lines(doc["delta"]):
        print(line)
    errors = sum(r["outcome"] == "HARNESS_ERROR" for r in done)
    print(f"{card.counts(done)}; report card: {run_dir / 'grade.md'}")
    return 1 if errors else 0


def _say(text: str, end: str = "\n") -> None:
    print(text, end=end, file=sys.stderr, flush=True)


def _seconds(result: Result) -> str:
    shown = result.time_to_crash_s if result.observed == "CRASHED" else result.duration_s
    return f"{shown:.2f} s" if shown is not None else ""


def _inputs(args: argparse.Namespace) -> Inputs:
    """Every input checked before any rank starts (UsageError: exit 2)."""
    if args.engine is not None and args.tp_command is not None:
        raise UsageError("--engine grades an unmodified engine, --tp-command a contract TP path: give one")
    if args.output_regex is not None and args.engine is None:
        raise UsageError("--output-regex names an engine's output: it needs --engine")
    if args.env and args.engine is None:
        raise UsageError("--env sets an engine's rank environment: it needs --engine (the reference path is graded "
                         f"with its catalog's, {' '.join(f'{k}={v}' for k, v in plan.REFERENCE_ENV.items())})")
    try:
        env = adhoc.parse_env(args.env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    sizes = tuple(_option("world_size", w, "--world-sizes") for w in args.world_sizes.split(","))
    actions = tuple(a.strip() for a in args.actions.split(",") if a.strip())
    unknown = [a for a in actions if a not in plan.ACTIONS]
    if unknown or not actions:
        raise UsageError(f"unknown --actions {', '.join(unknown) or '(none)'}; valid: {', '.join(plan.ACTIONS)}")
    if not 0 <= args.rank < min(sizes):
        raise UsageError(f"--rank {args.rank} is not a rank at world size {min(sizes)}: pick 0..{min(sizes) - 1} or "
                         "drop that world size from --world-sizes")
    if args.call is not None and args.call < 1:
        raise UsageError(f"--call {args.call}: calls count from 1")
    hang_after = _option("deadline", args.hang_after, "--hang-after") if args.hang_after is not None else None
    ops = tuple(o.strip() for o in args.ops.split(",") if o.strip()) if args.ops else None
    try:
        engine = engine_command(args.engine) if args.engine is not None else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_ops(ops, engine is not None)
    root = _option("report_dir", args.report_dir, "--report-dir") if args.report_dir else options.default("report_dir")
    try:
        report.check_writable(root)
    except OSError as exc:
        raise UsageError(f"report dir {str(root)!r} (--report-dir) is not writable: {exc}; pick another") from None
    tp = _option("tp_command", args.tp_command, "--tp-command") if args.tp_command else options.default("tp_command")
    graded = args.engine if engine else "reference: " + (args.tp_command or options.OPTIONS["tp_command"].default)
    return Inputs(engine=engine, graded=graded, tp_command=tp, world_sizes=sizes, ops=ops, actions=actions, rank=args.rank,
                  call=args.call, hang_after=hang_after, output_regex=args.output_regex, env=env, report_root=root)


def _option(name: str, value, flag: str):
    try:
        return options.OPTIONS[name].validate(str(value), flag)
    except options.OptionError as exc:
        raise UsageError(str(exc)) from None


def _check_ops(ops: tuple[str, ...] | None, engine: bool) -> None:
    for op in ops or ():
        if not engine and op not in plan.REFERENCE:
            raise UsageError(f"--ops {op!r}: the reference path is graded on {', '.join(plan.REFERENCE)}")
        if engine:
            try:
                faults.parse(f"collective.{op}=hang", where="--ops")
            except faults.FaultSpecError as exc:
                raise UsageError(str(exc)) from None


def _config(asked: Inputs, run_dir: Path) -> runner.RunConfig:
    timeout = max(RUN_TIMEOUT_S, 2 * (asked.hang_after or 0))
    if asked.engine is not None:
        return runner.RunConfig(run_dir=run_dir, launch="subprocess", tp_command=asked.engine,
                                run_timeout_s=timeout)
    try:
        launch, _ = probe.fit_launch(asked.tp_command, "zygote", chosen=False)
    except probe.Refused as exc:
        raise UsageError(f"{exc} (--tp-command)") from None
    return runner.RunConfig(run_dir=run_dir, launch=launch, tp_command=asked.tp_command, run_timeout_s=timeout,
                            deadline_s=asked.hang_after or options.default("deadline"))


def _rows(asked: Inputs, config: runner.RunConfig, say) -> list[plan.Row]:
    """Every row, world size by world size; an engine's ops from its instrumented healthy runs first."""
    rows = []
    for ws in asked.world_sizes:
        if asked.engine is None:
            rows += plan.reference_rows(ws, ops=asked.ops, actions=asked.actions, rank=asked.rank)
            continue
        say(f"ws={ws}: a healthy run, every collective printed (the deadline, the ops it issues) ...", end="")
        calls = _discover(asked, config, ws)
        say(" " + ", ".join(f"{op} x{c.startup + c.later}" for op, c in calls.items()))
        missing = [op for op in asked.ops or () if op not in calls]
        if missing:
            raise card.GradeError(f"at world size {ws} rank {asked.rank} issues no {', '.join(missing)} after "
                                  f"start-up; it issues {', '.join(calls) or 'nothing'}: pick --ops among those")
        rows += plan.engine_rows(ws, calls, ops=asked.ops, actions=asked.actions, rank=asked.rank, call=asked.call,
                                 env=asked.env)
    return rows


def _discover(asked: Inputs, config: runner.RunConfig, ws: int) -> dict[str, plan.OpCalls]:
    """The ops the graded rank issues after start-up, from the healthy run (needed anyway: it sizes the
    deadline and holds the output a CLEAN row must reproduce), run with every collective printed, unchanged."""
    watch = f"collective.any=sleep(0)@rank={asked.rank}"
    base = engine_run.healthy(config, world_size=ws, output_regex=asked.output_regex, watch=watch, env=asked.env)
    if not base.ok:
        raise card.GradeError(f"the engine's healthy run at world size {ws} is no baseline: {base.reason}; a grade "
                              f"needs a healthy engine: see {base.where}")
    sequence = plan.ops_in(logs.read_text(Path(base.where) / f"rank{asked.rank}.log"))
    if not sequence:
        raise card.GradeError(f"rank {asked.rank} of the engine's healthy run at world size {ws} issued no "
                              f"collective (no TP-FAULT line for {watch}): see {base.where}")
    return plan.op_calls(sequence)


def _run_row(asked: Inputs, config: runner.RunConfig, row: plan.Row) -> Result:
    scenario = adhoc.scenario(faults=[row.fault], expect="crash", signatures=[], env=[])
    scenario = dataclasses.replace(scenario, id=row.slug, world_size=row.world_size, env=dict(row.env),
                                   title=f"grade: {row.action} in {row.op} on rank {row.rank}")
    if asked.engine is None:
        return runner.run_scenario(scenario, config)
    return engine_run.run_engine(scenario, config, output_regex=asked.output_regex, deadline_s=asked.hang_after,
                                 healthy_env=asked.env)


def _settings(asked: Inputs, config: runner.RunConfig) -> dict:
    """``grade.json``'s settings: the delta reads ``env`` (which grades compare) and ``world_sizes``, ``actions``,
    ``ops`` (which rows each grade asked for)."""
    return {"world_sizes": list(asked.world_sizes), "actions": list(asked.actions),
            "ops": list(asked.ops) if asked.ops else None, "env": dict(asked.env), "rank": asked.rank, "call": asked.call,
            "hang_after_s": asked.hang_after, "launch": config.launch, "output_regex": asked.output_regex,
            "reference_env": plan.REFERENCE_ENV if asked.engine is None else None}
