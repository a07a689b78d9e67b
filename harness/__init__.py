"""tp-breakit harness: launch real ranks, arm one fault, judge the outcome.

Scenario modules need only this package's top level::

    from harness import Expect, Fault, Interrupt, Outcome, Scenario
"""

from harness.result import Outcome
from harness.scenario import Expect, Fault, Interrupt, Scenario, load_catalog

__all__ = ["Expect", "Fault", "Interrupt", "Outcome", "Scenario", "load_catalog"]
