"""tp-breakit harness: launch real ranks, arm one fault, judge the outcome.

Scenario modules need only this package's top level::

    from harness import Expect, Fault, Interrupt, Outcome, Scenario
"""

from harness.outcome import Outcome
from harness.scenario import Expect, Fault, Interrupt, Scenario, load_catalog

__all__ = ["Expect", "Fault", "Interrupt", "Outcome", "Scenario", "load_catalog"]

__version__ = "0.1.0"
"""The tp-breakit distribution's version (pyproject.toml reads it from here)."""
