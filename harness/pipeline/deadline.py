"""A run's deadline, decided in one place, with where it came from.

One precedence for every door (the command line, the pytest plugin, an engine run):

1. ``@pytest.mark.breakit(deadline=S)`` on the test (``marker``);
2. the scenario's own ``deadline_s``: part of what it proves (a guarded proof must crash within it);
3. a deadline the user gave explicitly (``--deadline``, ``--breakit-deadline``, ini);
4. for an engine, which promised no timing: ``HEALTHY_FACTOR`` times its measured healthy run, at least (5);
5. the configured default (``harness.pipeline.options``: 8 s).

The deadline bounds a crash proof; the stall window (``Limits.stall_s``) only ends a run early where HUNG is
an allowed outcome (``harness.supervise.loop``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

HEALTHY_FACTOR = 3.0
"""An engine's deadline without one given: this many times its measured healthy run. An engine's run takes what
it takes (loading, compiling, a loaded box): a fixed 8 s judged a healthy engine HUNG while it tore down."""


@dataclass(frozen=True, kw_only=True)
class Deadline:
    """Seconds from launch a run may take, and which rule set them."""

    seconds: float
    """The bound, in seconds from launch."""
    where: str
    """Which rule gave it, for progress lines and reports, e.g. ``the scenario's deadline_s``."""


def resolve(*, default_s: float, marker: float | None = None, scenario_s: float | None = None,
            given: float | None = None, healthy_s: Callable[[], float | None] | None = None) -> Deadline:
    """The deadline by the module's precedence. ``healthy_s`` (an engine's) is called only when it decides."""
    if marker is not None:
        return Deadline(seconds=float(marker), where="@pytest.mark.breakit(deadline=...)")
    if scenario_s is not None:
        return Deadline(seconds=scenario_s, where="the scenario's deadline_s")
    if given is not None:
        return Deadline(seconds=given, where="the deadline given")
    measured = healthy_s() if healthy_s is not None else None
    if measured:
        seconds = max(default_s, HEALTHY_FACTOR * measured)
        return Deadline(seconds=seconds, where=f"{HEALTHY_FACTOR:g} x the healthy run's {measured} s "
                                               f"(at least {default_s:g} s)")
    return Deadline(seconds=default_s, where="the configured deadline")
