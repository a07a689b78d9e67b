"""What ``python -m harness run`` was asked for, checked whole before any rank starts.

Each refusal is one line naming the flag, what is valid and what to do next
(the CLI prints it and exits 2). What the TP path owns (its sites, actions,
guardrails) is asked of it afterwards (``harness.launch.probe``).
"""

from __future__ import annotations

import argparse
import dataclasses

from harness.declare import adhoc
from harness.declare.scenario import Scenario
from harness.declare.selection import UsageError, check_ids, load_scenarios

MAX_CHUNKS = 1_000_000
"""Most chunks one run may be asked for. A run is judged within its deadline; a TP path serves tens of
chunks a second on a laptop, so a million is hours per run, and more is a typo, not a plan."""


def selected(args: argparse.Namespace) -> list[Scenario]:
    """The scenarios ``run`` was asked for, fully validated (no rank started yet)."""
    _check_flags(args)
    try:
        if args.expect:
            scenarios = [adhoc.scenario(faults=args.fault, expect=args.expect, signatures=args.signature,
                                        env=args.env)]
        elif args.ids:
            check_ids(args.ids)
            catalog = load_scenarios(args.catalog)
            scenarios = []
            for wanted in args.ids:
                found = [s for s in catalog if s.id == wanted or s.id.startswith(wanted + "/")]
                if not found:
                    known = ", ".join(s.id for s in catalog) or "none (no scenarios/test_*.py found)"
                    raise UsageError(f"unknown scenario {wanted!r}; known: {known}")
                scenarios += [s for s in found if s not in scenarios]
        else:
            scenarios = load_scenarios(args.catalog)
            if not scenarios:
                raise UsageError("the catalog holds no scenarios: give --catalog PATH (a module that defines "
                                 "SCENARIOS, or a directory of them)")
        overrides = {k: v for k, v in (("guardrails", args.guardrails), ("chunks", args.chunks)) if v is not None}
        scenarios = [dataclasses.replace(s, **overrides) if overrides else s for s in scenarios]
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _check_crash_has_a_cause(args)  # after the values' own checks: a bad value is the first thing to fix
    return scenarios


def _check_flags(args: argparse.Namespace) -> None:
    if args.fault and not args.expect:
        raise UsageError("--fault needs --expect crash|clean|hang|diverge (or several, e.g. crash,hang)")
    if args.ids and (args.fault or args.expect or args.signature):
        raise UsageError("give scenario ids or an ad-hoc --fault/--expect, not both")
    if args.env and not args.expect:
        raise UsageError("--env belongs to an ad-hoc run: add --fault/--expect")
    if args.signature and not args.expect:
        raise UsageError("--signature belongs to an ad-hoc run: add --expect")
    if args.chunks is not None and not 1 <= args.chunks <= MAX_CHUNKS:
        raise UsageError(f"invalid chunks '{args.chunks}' from --chunks: must be an integer >= 1 and <= "
                         f"{MAX_CHUNKS} (a run is judged within its deadline)")


def _check_crash_has_a_cause(args: argparse.Namespace) -> None:
    """Refused, not warned: with nothing armed and no environment of its own, a healthy TP path runs CLEAN, so
    the run could only FAIL, after its whole deadline, for a mistake visible now."""
    if args.expect == "crash" and not args.fault and not args.env:
        raise UsageError("--expect crash without a --fault: nothing is armed, so a healthy TP path runs CLEAN and "
                         "the run can only fail; add --fault SITE=ACTION (sites: 'python -m harness failpoints'), "
                         "or --env NAME=VALUE for a crash the environment causes")
