"""``python -m harness explore --engine CMD``: seeded random zero-touch fault schedules against an unmodified engine.

Before any schedule: at each world size asked for, the engine's healthy run (its output and its time, from
which each run's deadline is measured) and one discovery run with ``collective.any=sleep(0)`` armed, which
counts the collectives each rank issues (``harness.engine.schedules``). The world sizes whose healthy run
ends CLEAN are the ones the engine accepts; their outputs must agree. Then schedules run, ``jobs`` at a time,
each checked by ``schedules.check``; a violation is shrunk and printed as a ``run --engine`` command that runs
verbatim from a new shell. Explore sets no env of its own: an engine declares no knob.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.declare import adhoc
from harness.declare.fault import Fault
from harness.declare.selection import UsageError
from harness.engine import run as engine_run
from harness.engine import schedules
from harness.engine.boot import _breakit_faults as faults
from harness.engine.command import engine_command
from harness.engine.schedules import EngineSchedule
from harness.explore import report as explore_report
from harness.explore import schedules as explore
from harness.judge.result import Result
from harness.pipeline import options
from harness.pipeline.runner import RunConfig
from harness.report import files as report
from harness.report.rows import shorten


@dataclass(kw_only=True)
class Exploration:
    """One ``explore --engine``: what it was asked, and what it learnt of the engine before any schedule."""

    config: RunConfig
    """Run directory, launch, floor deadline, stall window; ``tp_command`` is the engine."""
    output_regex: str | None = None
    """``--output-regex``."""
    deadline_s: float | None = None
    """``--deadline`` when given; else each world size's is measured from its healthy run."""
    given: dict[str, float] = field(default_factory=dict)
    """Settings the user gave that a reproducer must carry (``stall``)."""
    report_dir: Path | None = None
    """``--report-dir`` when given (absolute): a reproducer writes where the explore did, not into the cwd."""
    counts: dict[int, schedules.Counts] = field(default_factory=dict)
    """World size the engine accepts -> its discovery run's collectives per rank and op."""
    deadlines: dict[int, float] = field(default_factory=dict)
    """World size -> the deadline its runs get."""
    refused: dict[int, str] = field(default_factory=dict)
    """World size the engine does not run at -> why (its healthy run's verdict)."""

    def run(self, schedule: EngineSchedule, sid: str) -> tuple[Result, list[str]]:
        """Run ``schedule`` as ``run --engine`` would; the judged result and the invariant's complaints."""
        result = engine_run.run_engine(schedule.scenario(sid), self.config, output_regex=self.output_regex,
                                       deadline_s=self.deadlines[schedule.world_size])
        return result, schedules.check(result, schedule)

    def reproducer(self, schedule: EngineSchedule) -> str:
        """The command that runs ``schedule`` alone, from a new shell, as it ran here."""
        return schedule.rerun(self.config.tp_command, launch=self.config.launch, output_regex=self.output_regex,
                              deadline_s=self.deadlines[schedule.world_size], settings=self.given,
                              cwd=self.config.cwd, report_dir=self.report_dir).line()


def prepare(ex: Exploration, world_sizes: tuple[int, ...], *, env: dict[str, str],
            say: Callable[[str], None]) -> list[dict]:
    """Healthy and discovery runs at every world size; the world-size rule's violations (at most one)."""
    accepted = []
    for ws in world_sizes:
        base = engine_run.healthy(ex.config, world_size=ws, output_regex=ex.output_regex)
        if not base.ok:
            ex.refused[ws] = base.reason
            say(f"explore: the engine does not run at world size {ws}: {shorten(base.reason, 200)}")
            continue
        accepted.append((ws, base))
        ex.deadlines[ws] = ex.deadline_s or engine_run.measured_deadline(ex.config, base)
        probe = EngineSchedule(world_size=ws, faults=(Fault.parse(schedules.DISCOVERY_FAULT),),
                               env=tuple(sorted(env.items())))
        result, _ = ex.run(probe, "explore/discover")
        if result.observed != "CLEAN":
            raise RuntimeError(f"the discovery run at world size {ws} ({schedules.DISCOVERY_FAULT}, which changes "
                               f"nothing) ended {result.observed}, not CLEAN: {shorten(result.reason, 300)}; logs in "
                               f"{result.dir}")
        ex.counts[ws] = schedules.counted(result)
        say(f"explore: world size {ws}: healthy in {base.elapsed_s} s, deadline {ex.deadlines[ws]:.1f} s, "
            f"{schedules.per_rank(ex.counts[ws])}")
    if not accepted:
        raise RuntimeError("the engine ran healthy at none of the world sizes asked for: " + "; ".join(
            f"ws {ws}: {shorten(why, 200)}" for ws, why in ex.refused.items()))
    broken = schedules.same_output(accepted)
    if not broken:
        return []
    lines = [healthy_line(ex, ws) for ws, _ in accepted]
    return [{"index": "world sizes", "schedule": None, "shrunk": None, "shrink_runs": 0, "observed": "CLEAN",
             "violations": broken, "dir": str(ex.config.run_dir / "_baseline"), "reproducer": " && ".join(lines)}]


def healthy_line(ex: Exploration, ws: int) -> str:
    """The healthy ``run --engine`` at ``ws`` (the world-size rule's reproducer is one per size)."""
    return EngineSchedule(world_size=ws, faults=()).rerun(
        ex.config.tp_command, launch=ex.config.launch, output_regex=ex.output_regex,
        deadline_s=ex.deadlines[ws], settings=ex.given, cwd=ex.config.cwd, report_dir=ex.report_dir).line()


def explore_engine(ex: Exploration, *, seed: int, runs: int | None, budget_s: float | None,
                   world_sizes: tuple[int, ...], faults_per_run: tuple[int, int], only_ops: tuple[str, ...] = (),
                   max_shrink: int = 8, jobs: int = 1, env: dict[str, str] | None = None,
                   say: Callable[[str], None] = lambda _: None) -> dict:
    """Prepare, run schedules until ``runs`` or ``budget_s`` (``jobs`` at a time), shrink each violation, write
    explore.json/.md; return it. Schedules run are always a prefix 0..N-1 of the seed's."""
    env = env or {}
    tally = explore.Tally()
    tally.violations += prepare(ex, world_sizes, env=env, say=say)
    ops = _ops(ex.counts, only_ops)

    def items():
        index = 0
        while (runs is None or index < runs) and (budget_s is None or time.monotonic() - tally.started < budget_s):
            schedule = schedules.generate(seed, index, ex.counts, ops=ops, faults_per_run=faults_per_run)
            yield index, replace(schedule, env=tuple(sorted(env.items())))
            index += 1

    for index, schedule, (result, broken) in explore._concurrently(items(), ex.run, jobs=jobs):
        tally.add(index, schedule, result, broken)
        if broken:
            tally.violations.append(_shrunk(ex, index, schedule, result, broken, max_shrink, say))
        say(f"explore: {len(tally.runs)} runs, {len(tally.violations)} violations, "
            f"{time.monotonic() - tally.started:.0f} s")
    tally.runs.sort(key=lambda r: r["index"])
    actions = list(dict.fromkeys(a.partition("(")[0] for a in schedules.ACTIONS))
    sites = [{"site": f"collective.{op}", "actions": [{"action": a} for a in actions]} for op in ops]
    return explore_report.write(tally, sites=sites, run_dir=ex.config.run_dir, meta={
        "seed": seed, "runs": runs, "budget_s": budget_s, "world_sizes": list(world_sizes),
        "faults_per_run": list(faults_per_run), "launch": ex.config.launch, "backend": "engine", "jobs": jobs,
        "engine": " ".join("python" if w == sys.executable else w for w in ex.config.tp_command), "env": env,
        "output_regex": ex.output_regex, "rules": schedules.RULES,
        "deadlines_s": {str(ws): round(d, 3) for ws, d in ex.deadlines.items()},
        "refused_world_sizes": {str(ws): why for ws, why in ex.refused.items()},
        "collectives": {str(ws): c for ws, c in ex.counts.items()}})


def _ops(counts: dict[int, schedules.Counts], only: tuple[str, ...]) -> list[str]:
    """The ops the engine issues at any accepted world size (``only``: those of them, each one issued)."""
    issued = sorted({op for per_rank in counts.values() for ops in per_rank.values() for op in ops})
    unknown = [op for op in only if op not in issued]
    if unknown:
        raise ValueError(f"--sites: the engine issues no {', '.join('collective.' + o for o in unknown)}; it "
                         f"issues: {', '.join('collective.' + o for o in issued) or 'no collective at all'}")
    if not issued:
        raise RuntimeError("the engine issued no collective in its discovery run: nothing to break")
    return [op for op in issued if not only or op in only]


def _shrunk(ex: Exploration, index: int, schedule: EngineSchedule, result: Result, broken: list[str],
            max_shrink: int, say: Callable[[str], None]) -> dict:
    say(f"explore: run {index} broke the invariant ({shorten(broken[0], 120)}); shrinking")
    n = 0

    def violates(cand: EngineSchedule) -> bool:
        nonlocal n
        n += 1
        got, why = ex.run(cand, f"shrink/{index:04d}-{n:02d}")
        return bool(why) and got.observed == result.observed

    small, tries = explore.shrink(schedule, violates, max_runs=max_shrink,
                                  candidates=lambda s: schedules.shrink_candidates(s, ex.counts))
    final, final_broken = (result, broken) if small == schedule else ex.run(small, f"shrink/{index:04d}-final")
    if not final_broken:  # flaky on a loaded box: report the original, which did break
        small, final, final_broken = schedule, result, broken
    record = {"index": index, "schedule": schedule.to_json(), "shrunk": small.to_json(), "shrink_runs": tries,
              "observed": final.observed, "violations": final_broken, "dir": final.dir,
              "reproducer": ex.reproducer(small)}
    say(f"explore: VIOLATION at run {index}, shrunk in {tries} runs; reproduce with:\n  {record['reproducer']}")
    return record


def cmd_explore(args: argparse.Namespace) -> int:
    """``explore --engine``: check every input before any rank starts, explore, print the violations."""
    ex, plan = _inputs(args)
    try:
        doc = explore_engine(ex, say=lambda msg: print(msg, file=sys.stderr, flush=True), **plan)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    report.update_latest(ex.config.run_dir)
    return explore_report.print_ending(doc, label="explore --engine", seed=plan["seed"], run_dir=ex.config.run_dir)


def _inputs(args: argparse.Namespace) -> tuple[Exploration, dict]:
    """The exploration and its plan, every input checked (one line naming the flag) before any rank starts."""
    if args.tp_command is not None or args.backend is not None or args.device is not None:
        raise UsageError("--tp-command, --backend and --device belong to a contract TP path, not to --engine: "
                         "the engine is started as given")
    try:
        engine = engine_command(args.engine)
        if args.output_regex is not None:
            re.compile(args.output_regex)
        settings = options.from_args(args, ("deadline", "stall", "launch", "report_dir"))
        sizes = tuple(options.OPTIONS["world_size"].validate(w, "--world-size") for w in args.world_sizes.split(","))
    except (ValueError, re.error, options.OptionError) as exc:
        raise UsageError(f"explore --engine: {exc}") from None
    launch = settings["launch"] if args.launch is not None else "subprocess"
    if launch not in engine_run.LAUNCHES:
        raise UsageError(f"launch mode {launch!r} cannot start an engine command afresh (the zygote forks a "
                         f"pre-imported interpreter); valid with --engine: {', '.join(engine_run.LAUNCHES)}")
    config = RunConfig(run_dir=settings["report_dir"] / report.run_dir_name(), deadline_s=settings["deadline"],
                       stall_s=settings["stall"], launch=launch, tp_command=engine, cwd=Path.cwd())
    ex = Exploration(config=config, output_regex=args.output_regex,
                     deadline_s=settings["deadline"] if args.deadline is not None else None,
                     given={"stall": settings["stall"]} if args.stall is not None else {},
                     report_dir=settings["report_dir"].resolve() if args.report_dir is not None else None)
    return ex, _plan(args, sizes, launch)


def _plan(args: argparse.Namespace, sizes: tuple[int, ...], launch: str) -> dict:
    """``explore_engine``'s keyword arguments from the command line."""
    m = re.fullmatch(r"(\d+)(?:\.\.(\d+))?", args.faults_per_run)
    if not m or not 1 <= int(m[1]) <= int(m[2] or m[1]):
        raise UsageError(f"bad --faults-per-run {args.faults_per_run!r}: expected LO..HI, e.g. 1..3 (LO >= 1)")
    if (args.runs is not None and args.runs < 1) or (args.budget is not None and not args.budget > 0):
        raise UsageError("--runs must be >= 1 and --budget > 0 seconds")
    sites = tuple(filter(None, args.sites.split(",")))
    unknown = [s for s in sites if s not in faults.SITES or s == "collective.any"]
    if unknown:
        raise UsageError(f"--sites: {', '.join(unknown)} is no collective site; valid: "
                         f"{', '.join(sorted(s for s in faults.SITES if s != 'collective.any'))}")
    try:
        jobs = explore.jobs_for(args.jobs, launch)
        env = adhoc.parse_env(args.env)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return {"seed": args.seed, "runs": args.runs if args.runs is not None or args.budget is not None else 20,
            "budget_s": args.budget, "world_sizes": sizes, "jobs": jobs, "env": env,
            "faults_per_run": (int(m[1]), int(m[2] or m[1])), "max_shrink": args.max_shrink,
            "only_ops": tuple(s.partition(".")[2] for s in sites)}
