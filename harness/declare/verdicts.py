"""The closed vocabularies of a run: what it did (``Outcome``) and what that means for its scenario (``Verdict``).

Declared here, at the bottom of the pipeline, because a scenario names the outcomes it expects before any rank
starts; the judge, the reports and the explorer all speak these words and import them from here.
"""

from __future__ import annotations

import enum


class Outcome(enum.Enum):
    """What a run did. Closed: every run ends in exactly one of these."""

    CLEAN = "CLEAN"
    """Every rank exited 0 and the outputs equal the healthy run's."""
    CRASHED = "CRASHED"
    """Every rank exited, at least one non-zero, within the deadline."""
    HUNG = "HUNG"
    """A rank was still alive when a deadline passed (the harness reaped it)."""
    DIVERGED = "DIVERGED"
    """Every rank exited 0 but outputs differ between ranks or from the healthy run."""
    HARNESS_ERROR = "HARNESS_ERROR"
    """The run could not be judged (launch failed, config rejected, no baseline)."""

    def __str__(self) -> str:
        return self.value


class Verdict(enum.StrEnum):
    """What a scenario's run, or a whole report run, means. A ``StrEnum``: it is written to JSON as its name."""

    PASS = "PASS"
    """The observed outcome is one the scenario allows."""
    FAIL = "FAIL"
    """It is not (or the harness could not judge the run)."""
    INCOMPLETE = "INCOMPLETE"
    """A report run that was interrupted or selected nothing to run: never green, whatever ran."""
