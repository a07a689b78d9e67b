"""FM-04: a per-rank env flag gates a collective on some ranks only.

Rank 1 alone has ``TP_SYNC_KV_STATS=1``, a debug feature that all_reduces KV
statistics at chunk end. Guarded: the init handshake compares env-parity
keys and every rank exits with ENV_PARITY_MISMATCH naming the key and the
ranks. Without it rank 1 enters an all_reduce that no other rank joins.
The same at world size 4 with the last rank alone on ``TP_DIGEST_EVERY=2``:
it skips the digest all_gather the others run on odd chunks.
(Every env-parity key is proven one by one in tests/test_tp_env_parity.py.)
"""

import pytest

from harness import DESYNC, Blocked, Expect, Scenario

# The rank with the extra chunk-end all_reduce waits in it; the others are already in the digest exchange.
STATS_VS_DIGEST = {1: Blocked(op="all_reduce", site="chunk-end stats"),
                   "others": Blocked(op="all_gather", site="digest exchange")}


FLAG = {1: {"TP_SYNC_KV_STATS": "1"}}
LAST = {3: {"TP_DIGEST_EVERY": "2"}}

SCENARIOS = [
    Scenario(id="FM-04", title="env flag on one rank rejected at init",
             proves="handshake", rank_env=FLAG,
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-04 code=ENV_PARITY_MISMATCH .*env TP_SYNC_KV_STATS differs"})),
    Scenario(id="FM-04/off", title="env flag on one rank: an all_reduce nobody joins",
             proves="handshake", guardrails="all,-handshake", rank_env=FLAG, expect=Expect.hang(blocked=STATS_VS_DIGEST)),
    Scenario(id="FM-04/last-rank", title="digest cadence differs on the last of 4 ranks: rejected at init",
             proves="handshake", rank_env=LAST, world_size=4,
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-04 code=ENV_PARITY_MISMATCH .*env TP_DIGEST_EVERY differs: "
                                         r'rank\(s\) \[0, 1, 2\] have \\"1\\"; rank\(s\) \[3\] have \\"2\\"'})),
    Scenario(id="FM-04/last-rank-off", title="digest cadence differs on the last of 4 ranks: a skipped all_gather",
             proves="handshake", guardrails="all,-handshake", rank_env=LAST, world_size=4, expect=Expect.hang(blocked=DESYNC)),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm04(breakit, scenario):
    breakit.check(scenario)
