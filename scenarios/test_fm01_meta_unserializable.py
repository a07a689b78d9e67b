"""FM-01: envelope meta holds a value the encoder cannot encode.

Guarded: preflight encodes meta before the header, so rank 0 dies with
META_UNSERIALIZABLE and every worker follows with PEER_ABORT.
Without preflight the encode fails after the header: the poison guardrail
still crashes the group (POST_HEADER_ERROR); without both, rank 0 logs the
error and waits for the next request while the workers wait mid-envelope.
"""

import pytest

from harness import Blocked, Expect, Fault, Scenario, peers_follow

FAULT = Fault(site="driver.meta", action="corrupt(callable)", rank=0, chunk=2)

SCENARIOS = [
    Scenario(id="FM-01", title="meta holds a callable: rejected before the header",
             proves="preflight", faults=(FAULT,),
             expect=Expect.crash({0: r"TP-FATAL fm=FM-01 code=META_UNSERIALIZABLE .*callback", "others": peers_follow(0)})),
    Scenario(id="FM-01/poison", title="meta failure after the header poisons the group",
             proves="poison_on_post_header_error", guardrails="all,-preflight", faults=(FAULT,),
             expect=Expect.crash({0: r"TP-FATAL .*code=POST_HEADER_ERROR .*not encodable", "others": peers_follow(0)})),
    Scenario(id="FM-01/off", title="meta failure after the header, swallowed: workers wait forever",
             proves="preflight+poison_on_post_header_error", guardrails="all,-preflight,-poison_on_post_header_error", faults=(FAULT,),
             expect=Expect.hang(blocked={0: Blocked(outside=True), "others": Blocked(op="broadcast", site="envelope meta")})),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm01(breakit, scenario):
    breakit.check(scenario)
