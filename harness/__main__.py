"""Command line: ``python -m harness list|failpoints|run|explore|report|grade``.

Bad input (unknown scenario, bad fault spec, bad deadline, world size < 1)
prints one line to stderr and exits 2 before any rank starts. ``run`` exits 0
iff every verdict passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import harness
from harness import adhoc, cli_input, delta, engine, grade, options, probe, report
from harness.scenario import Scenario
from harness.selection import CATALOG_HELP, UsageError, load_scenarios


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_prog(), description="tp-breakit: break TP ranks on purpose, judge the outcome")
    parser.add_argument("--version", action="version", version=f"%(prog)s {harness.__version__} (tp-breakit)")
    sub = parser.add_subparsers(dest="command", metavar="{list,failpoints,run,explore,report,grade}")

    def add(p: argparse.ArgumentParser, *names: str) -> None:
        for name in names:
            opt = options.OPTIONS[name]
            p.add_argument(opt.cli_flag, dest=name, default=None, metavar=opt.metavar, help=opt.help)

    p = sub.add_parser("list", help="show the scenario catalog")
    p.add_argument("--catalog", action="append", type=Path, metavar="PATH", help=CATALOG_HELP)
    p = sub.add_parser("failpoints", help="ask the TP path for its failpoint sites")
    add(p, "tp_command")
    p = engine.add_arguments(sub.add_parser("run", help="run catalog scenarios by id, one ad-hoc fault, or an engine"))
    p.add_argument("ids", nargs="*", metavar="ID",
                   help="scenario id, e.g. FM-03 (also runs FM-03/...); none: every scenario of the catalog")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="ad hoc: arm SITE=ACTION[(ARG)][@TRIGGER,...] (repeatable)")
    p.add_argument("--expect", choices=sorted(adhoc.EXPECTS), help="ad hoc: the expected outcome")
    p.add_argument("--signature", action="append", default=[], metavar="[RANK:]REGEX",
                   help="ad hoc: regex that must appear in a rank's log; RANK is a number, 'others' or 'all' "
                        "(default all) (repeatable)")
    p.add_argument("--guardrails", metavar="SPEC", help="TP_GUARDRAILS for the run(s), e.g. all,-preflight")
    p.add_argument("--chunks", type=int, metavar="N", help="chunks per run (default: the scenario's)")
    p.add_argument("--catalog", action="append", type=Path, metavar="PATH", help=CATALOG_HELP)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="ad hoc: extra environment for every rank, e.g. TP_PROGRESS_TIMEOUT_S=1 (repeatable)")
    p.add_argument("-q", "--quiet", action="store_true", help="print verdicts only, no progress")
    p.add_argument("--baseline", type=Path, metavar="DIR", help="run to compare with (default: the last green "
                   "run of the same configuration in the report dir)")
    add(p, "world_size", "deadline", "stall", "launch", "backend", "device", "report_dir", "tp_command",
        "startup_deadline")
    p = sub.add_parser("explore", help="random fault schedules against one invariant, violations shrunk")
    p.add_argument("--seed", type=int, default=1, help="the same seed gives the same schedules (default 1)")
    p.add_argument("--budget", type=float, metavar="SECONDS", help="stop starting schedules after this long")
    p.add_argument("--runs", type=int, metavar="N", help="stop after N schedules (default: 20 without --budget)")
    p.add_argument("--world-sizes", "--world-size", dest="world_sizes", default="2,4", metavar="N[,N...]",
                   help="world sizes to draw from (default 2,4)")
    p.add_argument("--faults-per-run", default="1..3", metavar="LO..HI", help="faults per schedule (default 1..3)")
    p.add_argument("--sites", default="", metavar="SITE[,SITE...]", help="only these failpoint sites")
    p.add_argument("--max-shrink", type=int, default=24, metavar="N", help="runs spent shrinking each violation "
                   "(default 24)")
    p.add_argument("--jobs", type=int, metavar="N", help="schedules run at once (default: one per core, at most 4, "
                   "under --launch zygote or subprocess; 1 otherwise)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment for every rank (repeatable), e.g. TP_PROGRESS_TIMEOUT_S=1")
    add(p, "deadline", "stall", "launch", "backend", "device", "report_dir", "tp_command")
    p = sub.add_parser("report", help="print summary.md of a run (default: reports/latest)")
    p.add_argument("dir", nargs="?", type=Path, default=None, help="run directory or report root")
    p.add_argument("--baseline", type=Path, metavar="A", help="compare run A with the run DIR instead: verdict "
                   "flips, scenarios added or removed, time-to-crash regressions; exit 1 if anything regressed")
    grade.add_arguments(sub.add_parser("grade", help="a report card: every collective x fault, what the engine did"))
    return parser


def _setting(args: argparse.Namespace, name: str):
    opt = options.OPTIONS[name]
    value = getattr(args, name, None)
    return opt.validate(value, opt.cli_flag) if value is not None else options.default(name)


def _prog() -> str:
    """``breakit`` under the console script, else ``python -m harness``."""
    return "breakit" if Path(sys.argv[0]).name == "breakit" else "python -m harness"


def cmd_list(args: argparse.Namespace) -> int:
    rows = [(s.id, s.proves, s.expect.describe(), s.guardrails, s.title) for s in load_scenarios(args.catalog)]
    header = ("ID", "PROVES", "EXPECT", "GUARDRAILS", "TITLE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def cmd_failpoints(args: argparse.Namespace) -> int:
    command = [*_setting(args, "tp_command"), "--list-failpoints"]
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


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = {n: _setting(args, n) for n in ("world_size", "deadline", "stall", "launch", "backend", "device",
                                                   "report_dir", "tp_command", "startup_deadline")}
    except options.OptionError as exc:
        raise UsageError(str(exc)) from None
    settings["launch"] = _fit_launch(args, settings)
    baseline = _baseline_dir(args.baseline)
    scenarios = cli_input.selected(args)
    planned = [s for s in scenarios if not s.skip_reason(settings["world_size"])]
    for scenario in scenarios:
        if scenario not in planned:
            print(f"SKIP {scenario.id}: {scenario.skip_reason(settings['world_size'])}")
    if not planned:
        print("harness: nothing ran: every selected scenario was skipped", file=sys.stderr)
        return 1
    pending = _preflight(planned, settings)
    probe.overlap_store_import(settings["launch"])
    _await(pending)
    from harness.runner import RunConfig, run_scenario

    run_dir = settings["report_dir"] / report.run_dir_name()
    status = _Status(enabled=not args.quiet)
    config = RunConfig(run_dir=run_dir, world_size=settings["world_size"], backend=settings["backend"],
                       device=settings["device"], deadline_s=settings["deadline"], stall_s=settings["stall"], launch=settings["launch"],
                       tp_command=settings["tp_command"], startup_deadline_s=settings["startup_deadline"],
                       on_progress=status.show)
    failed = 0
    try:
        for scenario in planned:
            result = run_scenario(scenario, config)
            status.clear()
            failed += not result.passed
            print(f"{result.verdict} {result.id} (ws{result.world_size}): {result.reason}")
            if not result.passed:
                print(result.failure_text().partition("\n\n")[2], file=sys.stderr)
    except KeyboardInterrupt:
        status.clear()
        _finish(run_dir, planned=len(planned), interrupted=True, baseline=baseline, selection=_asked(args))
        raise
    except OSError as exc:  # the report directory filled up or went: the verdict in hand is printed, not lost
        status.clear()
        result = getattr(exc, "result", None)
        if result is not None:
            print(f"{result.verdict} {result.id} (ws{result.world_size}): {result.reason}")
        _report_lost(run_dir, exc)
        return 1
    return _finish(run_dir, planned=len(planned), interrupted=False, baseline=baseline, selection=_asked(args))


def _report_lost(run_dir: Path, exc: OSError) -> None:
    print(f"harness: could not write the report in {run_dir}: {type(exc).__name__}: {exc}; the run stopped there "
          "and the verdicts above are all it has: free space there or pick another --report-dir", file=sys.stderr)


def _asked(args: argparse.Namespace) -> str:
    """What the run was asked for: runs compare only with runs of the same selection."""
    words = [*args.ids, *(f"--fault {f}" for f in args.fault), *([f"--expect {args.expect}"] if args.expect else []),
             *(f"--catalog {c}" for c in args.catalog or ()), *([f"--device {args.device}"] if args.device else [])]
    return " ".join(words)


def _baseline_dir(given: Path | None) -> Path | None:
    """``--baseline`` as a run directory (a report root means its 'latest'), checked before any rank starts."""
    if given is None:
        return None
    try:
        return report.find_run_dir(given)
    except FileNotFoundError as exc:
        raise UsageError(f"--baseline: {exc}") from None


def _preflight(scenarios: list[Scenario], settings: dict) -> probe.Pending:
    """Check what the harness can alone, then ask the TP path about the rest (in the background)."""
    root = settings["report_dir"]
    try:
        report.check_writable(root)
    except OSError as exc:
        raise UsageError(f"report dir {str(root)!r} (--report-dir) is not writable: "
                         f"{exc.strerror or exc}; pick a directory you can write") from None
    try:
        return probe.ask(settings["tp_command"], [(s, s.world_size or settings["world_size"]) for s in scenarios],
                         backend=settings["backend"], launch=settings["launch"], cwd=Path.cwd())
    except probe.Refused as exc:
        raise UsageError(str(exc)) from None


def _fit_launch(args: argparse.Namespace, settings: dict) -> str:
    """The launch mode for the rank command (a default zygote gives way to subprocess, with a note)."""
    try:
        launch, note = probe.fit_launch(settings["tp_command"], settings["launch"], chosen=args.launch is not None)
    except probe.Refused as exc:
        raise UsageError(f"{exc} (--tp-command / --launch)") from None
    if note:
        print(f"harness: note: {note}", file=sys.stderr)
    return launch


def _await(pending: probe.Pending) -> None:
    """The TP path's verdict on every input, before any rank starts."""
    try:
        answer = pending.answer()
    except probe.Refused as exc:
        raise UsageError(str(exc)) from None
    if not answer.answered:
        print(f"harness: note: fault specs, guardrails, world size, backend and env were checked for syntax only: "
              f"{answer.note}", file=sys.stderr)


def _finish(run_dir: Path, *, planned: int, interrupted: bool, baseline: Path | None = None,
            selection: str = "") -> int:
    """Write the summary; only a complete run moves ``latest``."""
    if not any(run_dir.glob("*/result.json")) and not interrupted:
        print("harness: nothing ran", file=sys.stderr)
        return 1
    try:
        summary = report.write_summary(run_dir, planned=planned, interrupted=interrupted, baseline=baseline,
                                       selection=selection)
    except OSError as exc:
        _report_lost(run_dir, exc)
        return 1
    if summary.overall != "INCOMPLETE":
        report.update_latest(run_dir)
    d = json.loads(summary.json_path.read_text()).get("delta") or {}
    for line in delta.lines(d) if d else ():
        print(("baseline delta: " if not line.startswith(" ") else "") + line)
    shown = os.path.relpath(summary.md_path) if summary.md_path.is_relative_to(Path.cwd()) else summary.md_path
    if summary.overall == "INCOMPLETE":
        print(f"harness: {summary.headline}; report: {shown} (+ report.html); 'latest' not moved", file=sys.stderr)
    else:
        print(f"{summary.overall}: {summary.total} run, {summary.failed} failed; report: {shown} (+ report.html)")
    return 0 if summary.passed else 1


class _Status:
    """Progress on one rewritten stderr line when stderr is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    def show(self, message: str) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K" + message[: os.get_terminal_size(2).columns - 1])
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def cmd_explore(args: argparse.Namespace) -> int:
    from harness import explore, zygote
    from harness.runner import RunConfig

    try:
        settings = {n: _setting(args, n) for n in ("deadline", "stall", "launch", "backend", "device",
                                                   "report_dir", "tp_command")}
        sizes = tuple(options.OPTIONS["world_size"].validate(w, "--world-size") for w in args.world_sizes.split(","))
    except options.OptionError as exc:
        raise UsageError(str(exc)) from None
    m = re.fullmatch(r"(\d+)(?:\.\.(\d+))?", args.faults_per_run)
    if not m or not 1 <= int(m[1]) <= int(m[2] or m[1]):
        raise UsageError(f"bad --faults-per-run {args.faults_per_run!r}: expected LO..HI, e.g. 1..3 (LO >= 1)")
    if (args.runs is not None and args.runs < 1) or (args.budget is not None and not args.budget > 0):
        raise UsageError("--runs must be >= 1 and --budget > 0 seconds")
    runs = args.runs if args.runs is not None or args.budget is not None else 20
    settings["launch"] = _fit_launch(args, settings)
    try:
        jobs = explore.jobs_for(args.jobs, settings["launch"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if settings["launch"] == "zygote":
        zygote.shared()
    config = RunConfig(run_dir=settings["report_dir"] / report.run_dir_name(), backend=settings["backend"],
                       device=settings["device"], deadline_s=settings["deadline"], stall_s=settings["stall"], launch=settings["launch"],
                       tp_command=settings["tp_command"])
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
    cov = doc["coverage"]
    print(f"explore: seed {args.seed}: {doc['schedules']} schedules in {doc['elapsed_s']} s, verdicts "
          f"{doc['verdicts']}, {cov['pairs_fired']}/{cov['pairs_total']} site=action pairs fired, "
          f"{len(doc['violations'])} violations; report: {config.run_dir / 'explore.md'}")
    for v in doc["violations"]:
        print(f"VIOLATION (run {v['index']}, {v['observed']}): {v['reproducer']}")
    return 1 if doc["violations"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    where = args.dir or options.default("report_dir")
    try:
        run_dir = report.find_run_dir(where)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    if args.baseline is not None:
        return _compare(_baseline_dir(args.baseline), run_dir)
    md = run_dir / "summary.md"
    if not md.exists():
        raise UsageError(f"{run_dir} has no summary.md")
    sys.stdout.write(md.read_text())
    try:
        overall = json.loads((run_dir / "summary.json").read_text())["overall"]
    except (OSError, ValueError, KeyError, TypeError):
        overall = "unknown (summary.json missing or unreadable)"
    if overall != "PASS":
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


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    commands = {"list": cmd_list, "failpoints": cmd_failpoints, "run": engine.cli(cmd_run), "explore": cmd_explore,
                "report": cmd_report, "grade": grade.cli}
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return commands[args.command](args)
    except UsageError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"harness: interrupted ({exc or 'SIGINT'}); every rank was reaped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
