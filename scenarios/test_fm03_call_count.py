"""FM-03: ranks disagree on the number of generator calls in a chunk.

Two ways in: the plan itself is inconsistent (rank 0 truncates its schedule
to 3 steps while broadcasting 4 timesteps, so workers run one call more), or
a worker skips the KV recompute call. Guarded: lockstep checks the plan's
invariants on both sides and observed == expected calls at chunk end; with
preflight off the inconsistent plan reaches the workers, whose own check
refuses it before any generator call.
Without it one rank sits in an all_reduce that nobody joins.
"""

import pytest

from harness import Blocked, Expect, Fault, Scenario, peers_follow

PLAN = Fault(site="driver.plan", action="corrupt(-1)", rank=0, chunk=2)
SKIP = Fault(site="worker.skip_recompute", action="flip", rank=1, chunk=2)
# The ranks with the shorter plan reach the chunk-end digest exchange; the others wait in a generator call.
DIGESTS = Blocked(op="all_gather", site="digest exchange")
GENERATOR = Blocked(op="all_reduce", site="generator call")

SCENARIOS = [
    Scenario(id="FM-03", title="inconsistent plan rejected before the header",
             proves="lockstep", faults=(PLAN,),
             expect=Expect.crash({0: r"TP-FATAL fm=FM-03 code=CALL_COUNT_MISMATCH .*tp_num_denoise_steps=3",
                                  "others": peers_follow(0)})),
    Scenario(id="FM-03/off", title="inconsistent plan: a worker runs an extra call nobody joins",
             proves="lockstep", guardrails="all,-lockstep", faults=(PLAN,),
             expect=Expect.hang(blocked={0: DIGESTS, "others": GENERATOR})),
    Scenario(id="FM-03/worker", title="inconsistent plan past a driver without preflight: workers refuse it",
             proves="lockstep", guardrails="all,-preflight", faults=(PLAN,),
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-03 code=(CALL_COUNT_MISMATCH|PEER_ABORT) "
                                         r".*plan inconsistent: tp_num_denoise_steps=3"})),
    Scenario(id="FM-03/worker-off", title="inconsistent plan, no preflight, no lockstep: an extra call",
             proves="lockstep", guardrails="all,-preflight,-lockstep", faults=(PLAN,),
             expect=Expect.hang(blocked={0: DIGESTS, "others": GENERATOR})),
    Scenario(id="FM-03/skip", title="a worker skips the recompute call: counted at chunk end",
             proves="lockstep", faults=(SKIP,),
             expect=Expect.crash({1: r"TP-FATAL fm=FM-03 code=CALL_COUNT_MISMATCH .*ran 4 generator calls.*expected 5",
                                  "others": peers_follow(1)})),
    Scenario(id="FM-03/skip-off", title="a worker skips the recompute call: collectives desync",
             proves="lockstep", guardrails="all,-lockstep", faults=(SKIP,),
             expect=Expect.hang(blocked={1: DIGESTS, "others": GENERATOR})),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm03(breakit, scenario):
    breakit.check(scenario)
