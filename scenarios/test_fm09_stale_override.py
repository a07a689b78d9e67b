"""FM-09: one rank reuses a stale override instead of the fresh one.

Rank 1 keeps the previous chunk's ``context_frames_override``. Guarded:
clear-after-read means there is nothing stale to reuse, so the bug surfaces
as MISSING_OVERRIDE on rank 1. With that off, the input digests differ
(DIGEST_MISMATCH naming the override); with both off the run finishes with
rank 1 anchored on the wrong frames.
"""

import pytest

from harness import Expect, Fault, Scenario, peers_follow

FAULT = Fault(site="worker.stale_override", action="flip", rank=1, chunk=2)

SCENARIOS = [
    Scenario(id="FM-09", title="stale override impossible: consumed on read",
             proves="clear_after_read", faults=(FAULT,),
             expect=Expect.crash({1: r"TP-FATAL fm=FM-07 code=MISSING_OVERRIDE .*clear_after_read",
                                  "others": peers_follow(1)})),
    Scenario(id="FM-09/digest", title="stale override reused: input digests differ",
             proves="digest", guardrails="all,-clear_after_read", faults=(FAULT,),
             expect=Expect.crash({"all": r"TP-FATAL .*code=(DIGEST_MISMATCH|PEER_ABORT) .*'context_frames_override'"})),
    Scenario(id="FM-09/off", title="stale override reused on one rank: Franken-model",
             proves="clear_after_read", guardrails="all,-clear_after_read,-digest", faults=(FAULT,),
             expect=Expect.diverge()),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm09(breakit, scenario):
    breakit.check(scenario)
