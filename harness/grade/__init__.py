"""``python -m harness grade``: a report card for an engine (or the reference TP path).

Every row is one run with one fault (a collective the engine issues x an action x a rank, at each world
size), judged by the same judge as ``run`` (``harness.judge.outcome.judge``); the card says, per fault, what the
engine did: CRASHED (how fast, which rank it named), HUNG, DIVERGED or CLEAN. A hang is a grade, not an
error. Written as ``grade.md`` and ``grade.json`` in the run's report directory, with the delta against the
last grade of the same engine command and the same ``--env``.
"""

from __future__ import annotations

import argparse

from harness.grade.plan import ACTIONS

__all__ = ["add_arguments", "cli"]

EPILOG = """exit status: 0 the report card was written, whatever the engine did (a hang is a grade, not an error);
1 the harness could not grade: the engine's healthy run was not CLEAN, or a row ended HARNESS_ERROR (the
card is still written, that row says why); 2 bad input (nothing started); 130 interrupted."""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``grade`` subcommand's flags on ``parser`` (returned)."""
    parser.epilog = EPILOG
    parser.add_argument("--engine", metavar="COMMAND",
                        help="grade this unmodified engine command (zero-touch, as 'run --engine'); without it the "
                             "contract TP path of --tp-command is graded on its own failpoint catalog")
    parser.add_argument("--tp-command", dest="tp_command", metavar="COMMAND",
                        help="the contract TP path to grade when no --engine is given (default: python -m tp)")
    parser.add_argument("--world-sizes", dest="world_sizes", default="2,4", metavar="N[,N...]",
                        help="world sizes, each a column of rows (default 2,4)")
    parser.add_argument("--ops", metavar="OP[,OP...]", help="collectives to break (default: every op the engine "
                        "issues after start-up, found by one healthy instrumented run per world size)")
    parser.add_argument("--actions", default=",".join(ACTIONS), metavar="ACTION[,...]",
                        help=f"actions per op (default {','.join(ACTIONS)})")
    parser.add_argument("--rank", type=int, default=1, metavar="R", help="the rank broken (default 1)")
    parser.add_argument("--call", type=int, metavar="K", help="break the K-th call of each op on that rank "
                        "(default: its 3rd call after start-up, or its last if it has fewer)")
    parser.add_argument("--hang-after", dest="hang_after", type=float, metavar="SECONDS",
                        help="a row still running this long after its fault fired is HUNG (default: 3x the "
                             "engine's healthy run, at least 8 s; the reference path: 8 s)")
    parser.add_argument("--output-regex", dest="output_regex", metavar="REGEX",
                        help="with --engine: the engine's output, as for 'run --engine'")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="with --engine: extra environment for every rank of every row and of the healthy runs, "
                             "e.g. MY_PG_TIMEOUT_S=3 (repeatable); recorded in the card, which is compared only with "
                             "an earlier grade of the same command and the same --env")
    parser.add_argument("--report-dir", dest="report_dir", type=str, metavar="DIR",
                        help="report root (default: reports)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines, the card's path only")
    return parser


def cli(args: argparse.Namespace) -> int:
    """``grade``'s command (the pipeline is imported when it runs: ``--help`` stays cheap)."""
    from harness.grade.run import cmd_grade

    return cmd_grade(args)
