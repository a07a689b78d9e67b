"""FM-04: a per-rank env flag gates a collective on some ranks only.

Rank 1 alone has ``TP_SYNC_KV_STATS=1``, a debug feature that all_reduces KV
statistics at chunk end. Guarded: the init handshake compares env-parity
keys and every rank exits with ENV_PARITY_MISMATCH naming the key and the
ranks. Without it rank 1 enters an all_reduce that no other rank joins.
"""

import pytest

from fixtures.deadlines import HANG_DEADLINE_S
from harness.scenario import Blocked, Expect, Scenario

# The rank with the extra chunk-end all_reduce waits in it; the others are already in the digest exchange.
STATS_VS_DIGEST = {1: Blocked(op="all_reduce", site="chunk-end stats"),
                   "others": Blocked(op="all_gather", site="digest exchange")}

pytestmark = [pytest.mark.breakit, pytest.mark.fm04]

FLAG = {1: {"TP_SYNC_KV_STATS": "1"}}

SCENARIOS = [
    Scenario(id="FM-04", fm="FM-04", title="env flag on one rank rejected at init",
             proves="handshake", rank_env=FLAG,
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-04 code=ENV_PARITY_MISMATCH .*env TP_SYNC_KV_STATS differs"})),
    Scenario(id="FM-04/off", fm="FM-04", title="env flag on one rank: an all_reduce nobody joins",
             proves="handshake", guardrails="all,-handshake", rank_env=FLAG, expect=Expect.hang(blocked=STATS_VS_DIGEST), deadline_s=HANG_DEADLINE_S),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm04(breakit, scenario):
    breakit.check(scenario)
