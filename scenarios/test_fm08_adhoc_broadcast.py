"""FM-08: an ad-hoc broadcast outside the envelope, shape guessed by workers.

Rank 0 attaches an ``aux`` tensor of shape (3, 8, 8); the legacy worker
code guesses (48, 8). Guarded: preflight refuses any tensor outside the
envelope schema (ENVELOPE_VIOLATION). Without it gloo silently accepts the
smaller message into the larger buffer, the worker reads it with the wrong
layout, and the input digest catches the difference (DIGEST_MISMATCH);
without that too the run finishes as a Franken-model.
"""

import pytest

from harness import Expect, Fault, Scenario, peers_follow

FAULT = Fault(site="driver.aux", action="flip", rank=0, chunk=2)

SCENARIOS = [
    Scenario(id="FM-08", title="tensor outside the envelope schema refused",
             proves="preflight", faults=(FAULT,),
             expect=Expect.crash({0: r"TP-FATAL fm=FM-08 code=ENVELOPE_VIOLATION .*\['aux'\] are not in the envelope schema",
                                  "others": peers_follow(0)})),
    Scenario(id="FM-08/digest", title="side-channel tensor read with a guessed shape: digest catches it",
             proves="digest", guardrails="all,-preflight", faults=(FAULT,),
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-11 code=(DIGEST_MISMATCH|PEER_ABORT) .*'aux'"})),
    Scenario(id="FM-08/off", title="side-channel tensor read with a guessed shape: Franken-model",
             proves="digest", guardrails="all,-preflight,-digest", faults=(FAULT,), expect=Expect.diverge()),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm08(breakit, scenario):
    breakit.check(scenario)
