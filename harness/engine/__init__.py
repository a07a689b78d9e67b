"""Zero-touch mode: break an unmodified torch.distributed engine (``python -m harness run --engine "CMD"``).

The harness starts CMD as given (nothing appended) once per rank with torchrun's env (CONTRACT §1) and puts
the bootstrap (``harness/engine/boot``: a ``sitecustomize`` and its modules) first on the ranks'
``PYTHONPATH``. The bootstrap arms collective-level faults, prints the contract's lines and turns PyTorch's
Flight Recorder into the flight trace the judge reads (CONTRACT, "Zero-touch"). Nothing in the engine changes.
"""

from __future__ import annotations

import argparse
import importlib

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


def cli(cmd_run, finish):
    """``run``'s command: the zero-touch path when ``--engine`` is given, else ``cmd_run``; both end in the
    command line's ``finish``."""
    return _door(cmd_run, "harness.engine.run", "cmd_engine", finish)


def explore_cli(cmd_explore):
    """``explore``'s command: seeded zero-touch schedules when ``--engine`` is given, else ``cmd_explore``."""
    return _door(cmd_explore, "harness.engine.explore", "cmd_explore")


def _door(contract_cmd, module: str, name: str, *extra):
    """``contract_cmd`` without ``--engine``, else ``module.name``; ``--output-regex`` alone is refused (a
    contract TP path prints its own output_digest: the regex would be silently ignored)."""
    def command(args: argparse.Namespace) -> int:
        if getattr(args, "engine", None) is not None:
            return getattr(importlib.import_module(module), name)(args, *extra)
        if getattr(args, "output_regex", None) is not None:
            from harness.declare.selection import UsageError

            raise UsageError("--output-regex names an engine's output: it needs --engine (a contract TP path "
                             "prints its own output_digest line)")
        return contract_cmd(args)

    return command
