"""An ad-hoc scenario from the command line: ``run --fault SPEC --expect KIND [--signature] [--env]``.

Everything is checked here, before any rank starts; a bad value raises ValueError naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

from harness.declare.fault import Fault, frozen_by
from harness.declare.scenario import Expect, Scenario

EXPECTS = {"crash": Expect.crash, "clean": Expect.clean, "hang": Expect.hang, "diverge": Expect.diverge,
           "hang_or_diverge": Expect.hang_or_diverge}


def expect_words(text: str) -> str:
    """``--expect``'s value: one word of ``EXPECTS`` or several, comma-separated (any of them is allowed)."""
    words = [w.strip() for w in text.split(",")]
    bad = [w for w in words if w not in EXPECTS]
    if bad or not words:
        raise argparse.ArgumentTypeError(f"invalid choice: {bad[0] if bad else text!r} (choose from "
                                         f"{', '.join(sorted(EXPECTS))}, or several, comma-separated)")
    return ",".join(dict.fromkeys(words))


def scenario(*, faults: list[str], expect: str, signatures: list[str], env: list[str]) -> Scenario:
    """The ``adhoc`` scenario: ``faults`` as ``TP_FAILPOINTS`` entries, ``signatures`` as ``[RANK:]REGEX``,
    ``expect`` one word of ``EXPECTS`` or several, comma-separated."""
    armed = tuple(Fault.parse(spec, where="--fault") for spec in faults)
    wanted: dict = {}
    for item in signatures:
        m = re.match(r"^(\d+|others|all):(.*)$", item)
        key, regex = (int(m[1]) if m[1].isdigit() else m[1], m[2]) if m else ("all", item)
        wanted[key] = regex
    title = "ad hoc: " + ("; ".join(f.spec() for f in armed) or "no fault")
    # An ad-hoc run's deadline is --deadline's, not the hang default a catalog scenario gets.
    words = expect_words(expect).split(",")
    outcomes = frozenset().union(*(EXPECTS[w](wanted).outcomes for w in words))
    expectation = dataclasses.replace(EXPECTS[words[0]](wanted), outcomes=outcomes, deadline_s=None)
    frozen = frozen_by(armed)
    if frozen and "crash" in words:  # a rank the fault stops cannot exit: reap it once it is alone
        expectation = dataclasses.replace(expectation, frozen=frozen)
    return Scenario(id="adhoc", fm="adhoc", title=title, proves="adhoc", faults=armed, expect=expectation,
                    env=parse_env(env))


def parse_env(items: list[str]) -> dict[str, str]:
    """``--env NAME=VALUE`` items as a dict."""
    env = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"bad --env {item!r}: expected NAME=VALUE, e.g. TP_PROGRESS_TIMEOUT_S=1")
        env[name] = value
    return env
