"""FM-07: KV recompute requested without ``context_frames_override``.

Rank 0 drops the override while the plan still says recompute. Guarded:
preflight refuses the envelope on rank 0 (MISSING_OVERRIDE); with preflight
off the workers' clear-after-read validation refuses it. Without both,
every rank "reuses" the anchor it had before — consistently wrong, so no
digest can see it, only a comparison with the healthy output.
"""

import pytest

from harness import Expect, Fault, Scenario, peers_follow

FAULT = Fault(site="driver.override", action="set(none)", rank=0, chunk=2)

SCENARIOS = [
    Scenario(id="FM-07", title="recompute without override refused before the header",
             proves="preflight", faults=(FAULT,),
             expect=Expect.crash({0: r"TP-FATAL fm=FM-07 code=MISSING_OVERRIDE ",
                                  "others": peers_follow(0)})),
    Scenario(id="FM-07/worker", title="recompute without override refused by the workers",
             proves="clear_after_read", guardrails="all,-preflight", faults=(FAULT,),
             # Every receiver, rank 0 included (it runs its own envelope), consumes once: whoever looks first
             # reports MISSING_OVERRIDE, the rest follow it.
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-07 code=(MISSING_OVERRIDE|PEER_ABORT) "})),
    Scenario(id="FM-07/off", title="recompute without override: stale anchor reused everywhere",
             proves="clear_after_read", guardrails="all,-preflight,-clear_after_read", faults=(FAULT,),
             expect=Expect.diverge()),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm07(breakit, scenario):
    breakit.check(scenario)
