"""FM-02: a tensor's dtype cannot travel on the backend, discovered late.

The latents become uint16 after the plan was made (gloo has no uint16; see
tp/dtypes.py for the table and its source). Guarded: preflight maps every
dtype through the backend table before the header (UNSUPPORTED_DTYPE, naming
field, dtype and backend). Without it the send fails on rank 0 only, after
the header and meta went out: gloo itself raises (a RuntimeError, no fatal
code), and the poison guardrail still makes the group crash
(POST_HEADER_ERROR); without both the workers wait for a tensor that never
comes.
"""

import pytest

from harness import Blocked, Expect, Fault, Scenario, peers_follow

FAULT = Fault(site="driver.latents", action="set(uint16)", rank=0, chunk=2)

SCENARIOS = [
    Scenario(id="FM-02", title="uint16 latents rejected before the header",
             proves="preflight", faults=(FAULT,),
             expect=Expect.crash({0: r"TP-FATAL fm=FM-02 code=UNSUPPORTED_DTYPE .*'latents'.*uint16.*(gloo|nccl)",
                                  "others": peers_follow(0)})),
    Scenario(id="FM-02/poison", title="the backend refuses uint16 after the header: the group is poisoned",
             proves="poison_on_post_header_error", guardrails="all,-preflight", faults=(FAULT,),
             expect=Expect.crash({0: r"TP-FATAL .*code=POST_HEADER_ERROR .*RuntimeError",
                                  "others": peers_follow(0)})),
    Scenario(id="FM-02/off", title="uint16 latents fail mid-envelope: workers wait forever",
             proves="preflight+poison_on_post_header_error", guardrails="all,-preflight,-poison_on_post_header_error", faults=(FAULT,),
             expect=Expect.hang(blocked={"all": Blocked(op="broadcast", site="tensor latents")})),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm02(breakit, scenario):
    breakit.check(scenario)
