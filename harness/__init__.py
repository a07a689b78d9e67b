"""tp-breakit harness: launch real ranks, arm one fault, judge the outcome.

Scenario modules need only this package's top level::

    from harness import Blocked, Expect, Fault, Scenario, peers_follow
"""

from harness.declare.blocked import DESYNC, Blocked
from harness.declare.fault import Fault
from harness.declare.scenario import Expect, Interrupt, Scenario, load_catalog, peers_follow
from harness.declare.verdicts import Outcome

__all__ = ["DESYNC", "Blocked", "Expect", "Fault", "Interrupt", "Outcome", "Scenario", "load_catalog",
           "peers_follow"]

__version__ = "0.1.0"
"""The tp-breakit distribution's version (pyproject.toml reads it from here)."""
