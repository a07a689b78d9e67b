"""Zero-touch mode: break an unmodified torch.distributed engine (``python -m harness run --engine "CMD"``).

The harness starts CMD as given (nothing appended) once per rank with torchrun's env (CONTRACT §1) and puts
the bootstrap (``harness/engine/boot``: a ``sitecustomize`` and its modules) first on the ranks'
``PYTHONPATH``. The bootstrap arms collective-level faults, prints the contract's lines and turns PyTorch's
Flight Recorder into the flight trace the judge reads (CONTRACT, "Zero-touch"). Nothing in the engine changes.
"""

from __future__ import annotations

import argparse

from harness.engine.env import BOOT_DIR, CODES, boot_env

__all__ = ["BOOT_DIR", "CODES", "add_arguments", "boot_env", "cli", "explore_cli"]

ENGINE_HELP = ("start this unmodified engine command once per rank (nothing appended) with torchrun's env and "
               "tp-breakit's bootstrap on PYTHONPATH: faults at collective.<op> sites, e.g. "
               "'collective.all_reduce=hang@rank=1,call=3'; the engine is never asked --check-*/--list-*")
OUTPUT_HELP = ("with --engine: the engine's output is the last match of this regex in rank 0's stdout (its first "
               "group if it has one); a CLEAN run must reproduce the healthy run's (default: the last JSON line "
               "holding output_digest)")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--engine`` and ``--output-regex`` on ``parser`` (returned, so a caller can chain it)."""
    parser.add_argument("--engine", metavar="COMMAND", help=ENGINE_HELP)
    parser.add_argument("--output-regex", dest="output_regex", metavar="REGEX", help=OUTPUT_HELP)
    return parser


def cli(cmd_run):
    """``run``'s command: the zero-touch path when ``--engine`` is given, else ``cmd_run``."""
    def run(args: argparse.Namespace) -> int:
        if getattr(args, "engine", None) is None:
            return cmd_run(args)
        from harness.engine.run import cmd_engine

        return cmd_engine(args)

    return run


def explore_cli(cmd_explore):
    """``explore``'s command: seeded zero-touch schedules when ``--engine`` is given, else ``cmd_explore``."""
    def explore(args: argparse.Namespace) -> int:
        if getattr(args, "engine", None) is None:
            return cmd_explore(args)
        from harness.engine.explore import cmd_explore as cmd_explore_engine

        return cmd_explore_engine(args)

    return explore
