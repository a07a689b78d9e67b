"""The command line's grammar: every subcommand, flag and help text of ``python -m harness``.

Option flags shared with the pytest plugin come from ``harness.pipeline.options`` (one help text, one default,
one parser for both doors); what only the command line has is declared here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import harness
from harness import engine, grade
from harness.declare import adhoc
from harness.declare.selection import CATALOG_HELP
from harness.pipeline import options


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"{self.prog}: error: {message}\n")


def build() -> argparse.ArgumentParser:
    parser = Parser(prog=prog(), description="tp-breakit: break TP ranks on purpose, judge the outcome")
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
    p.add_argument("--expect", type=adhoc.expect_words, metavar="{" + ",".join(sorted(adhoc.EXPECTS)) + "}[,...]",
                   help="ad hoc: the expected outcome; several, comma-separated, allow any of them (e.g. "
                        "clean,crash,hang: what explore --engine's reproducers carry)")
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
    p = engine.add_arguments(sub.add_parser("explore", help="random fault schedules against one invariant, "
                                                           "violations shrunk (of a TP path, or an engine)"))
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


def prog() -> str:
    """``breakit`` under the console script, else ``python -m harness``."""
    return "breakit" if Path(sys.argv[0]).name == "breakit" else "python -m harness"
