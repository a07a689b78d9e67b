"""FM-05: ranks disagree on plan or role at start.

Rank 1 believes in the ``v1_full_pipeline`` plan (workers also take part in
decode, one more collective per chunk), or believes rank 1 is the driver.
Guarded: the handshake rejects both at init with PLAN_MISMATCH on every rank.
Without it, the extra collective (plan) or the second driver (role) leaves
ranks waiting on each other.
"""

import pytest

from harness import Blocked, Expect, Scenario

# The rank with the extra chunk-end all_reduce waits in it; the others are already in the digest exchange.
STATS_VS_DIGEST = {1: Blocked(op="all_reduce", site="chunk-end stats"),
                   "others": Blocked(op="all_gather", site="digest exchange")}

# Both "drivers" wait in their own header broadcast; at world size 4 the other workers got rank 0's
# header and wait for its meta.
TWO_DRIVERS = {0: Blocked(op="broadcast", site="envelope header"), 1: Blocked(op="broadcast", site="envelope header"),
               "others": Blocked(op="broadcast", site="envelope (header|meta)")}


PLAN = {1: {"TP_PLAN": "v1_full_pipeline"}}
ROLE = {1: {"TP_DRIVER_RANK": "1"}}

SCENARIOS = [
    Scenario(id="FM-05", title="plan mismatch rejected at init", proves="handshake", rank_env=PLAN,
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-05 code=PLAN_MISMATCH .*plan differs"})),
    Scenario(id="FM-05/off", title="plan mismatch unchecked: an extra collective on rank 1",
             proves="handshake", guardrails="all,-handshake", rank_env=PLAN, expect=Expect.hang_or_diverge(blocked=STATS_VS_DIGEST)),
    Scenario(id="FM-05/role", title="role mismatch (two drivers) rejected at init", proves="handshake",
             rank_env=ROLE, expect=Expect.crash({"all": r"TP-FATAL fm=FM-05 code=PLAN_MISMATCH .*driver rank"})),
    Scenario(id="FM-05/role-off", title="role mismatch unchecked: two drivers",
             proves="handshake", guardrails="all,-handshake", rank_env=ROLE, expect=Expect.hang_or_diverge(blocked=TWO_DRIVERS)),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm05(breakit, scenario):
    breakit.check(scenario)
