"""Command line: ``python -m harness list|failpoints|run|explore|report|grade``, an adapter over the pipeline.

Bad input (unknown scenario, bad fault spec, bad deadline, world size < 1) prints one line to stderr and exits
2 before any rank starts. ``run`` exits 0 iff every verdict passed. What a run does is
``harness.pipeline.session``'s, shared with the pytest plugin; this module only reads the command line and
prints.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness import engine, grade
from harness.cli import commands, parser
from harness.cli import input as cli_input
from harness.declare.scenario import Scenario
from harness.declare.selection import UsageError
from harness.pipeline import options
from harness.pipeline.session import Refused, ReportLost, Session
from harness.report import files as report

RUN_SETTINGS = ("world_size", "deadline", "stall", "launch", "backend", "device", "report_dir", "tp_command",
                "startup_deadline")


def cmd_run(args: argparse.Namespace) -> int:
    try:
        settings = options.from_args(args, RUN_SETTINGS)
    except options.OptionError as exc:
        raise UsageError(str(exc)) from None
    session = Session(settings=settings, run_dir=settings["report_dir"] / report.run_dir_name(),
                      selection=_asked(args))
    session.fit_launch(chosen=args.launch is not None)
    for note in session.notes:
        print(f"harness: note: {note}", file=sys.stderr)
    session.find_baseline(args.baseline, "--baseline")
    ws = settings["world_size"]
    scenarios = cli_input.selected(args)
    planned = [s for s in scenarios if not s.skip_reason(ws)]
    for scenario in scenarios:
        if scenario not in planned:
            print(f"SKIP {scenario.id}: {scenario.skip_reason(ws)}")
    if not planned:
        print("harness: nothing ran: every selected scenario was skipped", file=sys.stderr)
        return 1
    session.check_report_dir()
    note = session.answer(session.ask([(s, s.world_size or ws) for s in planned], cwd=Path.cwd()))
    if note:
        print(f"harness: note: {note}", file=sys.stderr)
    return _run_all(session, planned, status=_Status(enabled=not args.quiet))


def _run_all(session: Session, planned: list[Scenario], *, status: _Status) -> int:
    """Run and print each verdict; finish the report run however it ends."""
    from harness.pipeline.runner import run_scenario

    config = session.run_config(on_progress=status.show)
    try:
        for scenario in planned:
            result = run_scenario(scenario, config)
            status.clear()
            print(f"{result.verdict} {result.id} (ws{result.world_size}): {result.reason}")
            if not result.passed:
                print(result.failure_text().partition("\n\n")[2], file=sys.stderr)
    except KeyboardInterrupt:
        status.clear()
        finish(session, planned=len(planned), interrupted=True)
        raise
    except OSError as exc:  # the report directory filled up or went: the verdict in hand is printed, not lost
        status.clear()
        result = getattr(exc, "result", None)
        if result is not None:
            print(f"{result.verdict} {result.id} (ws{result.world_size}): {result.reason}")
        print(f"harness: {ReportLost(session.run_dir, exc)}", file=sys.stderr)
        return 1
    return finish(session, planned=len(planned), interrupted=False)


def finish(session: Session, *, planned: int, interrupted: bool) -> int:
    """Write the summary and say where it is; only a complete run moves ``latest``."""
    if not session.has_results() and not interrupted:
        print("harness: nothing ran", file=sys.stderr)
        return 1
    try:
        done = session.finish(planned=planned, interrupted=interrupted)
    except ReportLost as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 1
    for line in done.delta_lines:
        print(("baseline delta: " if not line.startswith(" ") else "") + line)
    summary = done.summary
    shown = os.path.relpath(summary.md_path) if summary.md_path.is_relative_to(Path.cwd()) else summary.md_path
    if done.incomplete:
        print(f"harness: {summary.headline}; report: {shown} (+ report.html); 'latest' not moved", file=sys.stderr)
    else:
        print(f"{summary.overall}: {summary.total} run, {summary.failed} failed; report: {shown} (+ report.html)")
    return 0 if summary.passed else 1


def _asked(args: argparse.Namespace) -> str:
    """What the run was asked for: runs compare only with runs of the same selection."""
    words = [*args.ids, *(f"--fault {f}" for f in args.fault), *([f"--expect {args.expect}"] if args.expect else []),
             *(f"--catalog {c}" for c in args.catalog or ()), *([f"--device {args.device}"] if args.device else [])]
    return " ".join(words)


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


def main(argv: list[str] | None = None) -> int:
    cli = parser.build()
    args = cli.parse_args(argv)
    run = {"list": commands.cmd_list, "failpoints": commands.cmd_failpoints, "run": engine.cli(cmd_run, finish),
           "explore": engine.explore_cli(commands.cmd_explore), "report": commands.cmd_report, "grade": grade.cli}
    if args.command is None:
        cli.print_help(sys.stderr)
        return 2
    try:
        return run[args.command](args)
    except (UsageError, Refused) as exc:
        print(f"{cli.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"harness: interrupted ({exc or 'SIGINT'}); every rank was reaped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
