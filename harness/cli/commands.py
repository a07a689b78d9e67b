"""The command line's other commands: ``list``, ``failpoints``, ``explore`` and ``report``."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from harness.declare import adhoc
from harness.declare.selection import UsageError, load_scenarios
from harness.declare.verdicts import Verdict
from harness.pipeline import options
from harness.pipeline.session import Session
from harness.report import delta
from harness.report import files as report


def cmd_list(args: argparse.Namespace) -> int:
    rows = [(s.id, s.proves, s.expect.describe(), s.guardrails, s.title) for s in load_scenarios(args.catalog)]
    header = ("ID", "PROVES", "EXPECT", "GUARDRAILS", "TITLE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def cmd_failpoints(args: argparse.Namespace) -> int:
    command = [*options.from_args(args, ("tp_command",))["tp_command"], "--list-failpoints"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    try:
        proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"harness: cannot run {' '.join(command)!r}: {exc}", file=sys.stderr)
        return 1
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        print(f"harness: {' '.join(command)!r} exited {proc.returncode}: {last[0]}", file=sys.stderr)
        return 1
    sites = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    width = max((len(s["site"]) for s in sites), default=4)
    for site in sites:
        print(f"{site['site'].ljust(width)}  {site.get('description', '')}")
    return 0


def cmd_explore(args: argparse.Namespace) -> int:
    from harness.explore import report as explore_report
    from harness.explore import schedules as explore
    from harness.launch import zygote

    try:
        settings = options.from_args(args, ("deadline", "stall", "launch", "backend", "device", "report_dir",
                                          "tp_command", "world_size", "startup_deadline"))
        sizes = tuple(options.OPTIONS["world_size"].validate(w, "--world-size") for w in args.world_sizes.split(","))
    except options.OptionError as exc:
        raise UsageError(str(exc)) from None
    m = re.fullmatch(r"(\d+)(?:\.\.(\d+))?", args.faults_per_run)
    if not m or not 1 <= int(m[1]) <= int(m[2] or m[1]):
        raise UsageError(f"bad --faults-per-run {args.faults_per_run!r}: expected LO..HI, e.g. 1..3 (LO >= 1)")
    if (args.runs is not None and args.runs < 1) or (args.budget is not None and not args.budget > 0):
        raise UsageError("--runs must be >= 1 and --budget > 0 seconds")
    runs = args.runs if args.runs is not None or args.budget is not None else 20
    session = Session(settings=settings, run_dir=settings["report_dir"] / report.run_dir_name())
    launch = session.fit_launch(chosen=args.launch is not None)
    for note in session.notes:
        print(f"harness: note: {note}", file=sys.stderr)
    try:
        jobs = explore.jobs_for(args.jobs, launch)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if launch == "zygote":
        zygote.shared()
    config = session.run_config()
    tp_env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    try:
        doc = explore.explore(seed=args.seed, runs=runs, budget_s=args.budget, world_sizes=sizes,
                              faults_per_run=(int(m[1]), int(m[2] or m[1])), config=config,
                              env=adhoc.parse_env(args.env), tp_env=tp_env,
                              only_sites=tuple(filter(None, args.sites.split(","))), max_shrink=args.max_shrink, jobs=jobs,
                              say=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (RuntimeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    report.update_latest(config.run_dir)
    return explore_report.print_ending(doc, label="explore", seed=args.seed, run_dir=config.run_dir)


def cmd_report(args: argparse.Namespace) -> int:
    where = args.dir or options.default("report_dir")
    try:
        run_dir = report.find_run_dir(where)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if args.baseline is not None:
        baseline = Session(settings={}, run_dir=run_dir).find_baseline(args.baseline, "--baseline")
        return _compare(baseline, run_dir)
    md = run_dir / "summary.md"
    if not md.exists():
        raise UsageError(f"{run_dir} has no summary.md")
    sys.stdout.write(md.read_text())
    try:
        overall = json.loads((run_dir / "summary.json").read_text())["overall"]
    except (OSError, ValueError, KeyError, TypeError):
        overall = "unknown (summary.json missing or unreadable)"
    if overall != Verdict.PASS:
        print(f"harness: run {run_dir.name} is {overall}, not PASS", file=sys.stderr)
        return 1
    return 0


def _compare(before_dir: Path, after_dir: Path) -> int:
    """``report --baseline A B``: the delta from run A to run B; exit 1 when B regressed."""
    docs = []
    for path in (before_dir, after_dir):
        try:
            docs.append(json.loads((path / "summary.json").read_text()))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{path}: no readable summary.json ({exc})") from None
    d = delta.compare(docs[0], docs[1], baseline=str(before_dir))
    print(f"{after_dir.name} ({docs[1].get('overall')}) " + "\n".join(delta.lines(d)))
    return 1 if delta.regressed(d) else 0
