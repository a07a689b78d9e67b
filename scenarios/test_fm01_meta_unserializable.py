"""FM-01: envelope meta holds a value the encoder cannot encode.

Guarded: preflight encodes meta before the header, so rank 0 dies with
META_UNSERIALIZABLE and every worker follows with PEER_ABORT.
Without preflight the encode fails after the header: the poison guardrail
still crashes the group (POST_HEADER_ERROR); without both, rank 0 logs the
error and waits for the next request while the workers wait mid-envelope.
"""

import pytest

from fixtures.deadlines import HANG_DEADLINE_S
from harness.scenario import Blocked, Expect, Fault, Scenario

pytestmark = [pytest.mark.breakit, pytest.mark.fm01]

FAULT = Fault(site="driver.meta", action="corrupt(callable)", rank=0, chunk=2)
PEERS_FOLLOW = {"others": r"TP-FATAL .*code=PEER_ABORT rank=\d+ cause_rank=0"}

SCENARIOS = [
    Scenario(id="FM-01", fm="FM-01", title="meta holds a callable: rejected before the header",
             proves="preflight", faults=(FAULT,),
             expect=Expect.crash({0: r"TP-FATAL fm=FM-01 code=META_UNSERIALIZABLE .*callback", **PEERS_FOLLOW})),
    Scenario(id="FM-01/poison", fm="FM-01", title="meta failure after the header poisons the group",
             proves="poison_on_post_header_error", guardrails="all,-preflight", faults=(FAULT,),
             expect=Expect.crash({0: r"TP-FATAL .*code=POST_HEADER_ERROR .*not encodable", **PEERS_FOLLOW})),
    Scenario(id="FM-01/off", fm="FM-01", title="meta failure after the header, swallowed: workers wait forever",
             proves="preflight+poison_on_post_header_error", guardrails="all,-preflight,-poison_on_post_header_error", faults=(FAULT,),
             expect=Expect.hang(blocked={0: Blocked(outside=True), "others": Blocked(op="broadcast", site="envelope meta")}), deadline_s=HANG_DEADLINE_S),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm01(breakit, scenario):
    breakit.check(scenario)
