"""FM-12: one weight shard differs on one rank.

Rank 1's first MLP weight is off by 1e-3 in one element (a bad checkpoint
shard). Guarded: rank 0 recomputes every rank's expected shard fingerprint
and the handshake fails with WEIGHT_MISMATCH. Without it the model runs.
"""

import pytest

from harness import Expect, Fault, Scenario

FAULT = Fault(site="model.shard", action="corrupt", rank=1)

SCENARIOS = [
    Scenario(id="FM-12", title="corrupt weight shard rejected at init",
             proves="handshake", faults=(FAULT,),
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-12 code=WEIGHT_MISMATCH .*rank 1 weight shard"})),
    Scenario(id="FM-12/off", title="corrupt weight shard unchecked: Franken-model",
             proves="handshake", guardrails="all,-handshake", faults=(FAULT,), expect=Expect.diverge()),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm12(breakit, scenario):
    breakit.check(scenario)
