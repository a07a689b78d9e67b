"""FM-06: protocol version skew between ranks (a rolling update).

Rank 1 speaks protocol 2 (``TP_PROTOCOL_VERSION_OVERRIDE=2``), which reads
timesteps as already normalised. Guarded: the handshake publishes one verdict
every rank reads, so every rank exits with PROTOCOL_MISMATCH naming both
versions and who holds them. Without it the run finishes with rank 1
computing on different timesteps: the output digest catches it at the
first chunk end, and without that too it is a Franken-model.

The skew goes both ways: in a rolling update that upgrades rank 0's node
first, every peer is *older* than rank 0 (``older-peer``: rank 0 speaks 2, the
others 1), and must be refused the same way.
"""

import pytest

from harness import DESYNC, Expect, Scenario

SKEW = {1: {"TP_PROTOCOL_VERSION_OVERRIDE": "2"}}
RANK0_NEWER = {0: {"TP_PROTOCOL_VERSION_OVERRIDE": "2"}}

SCENARIOS = [
    Scenario(id="FM-06", title="protocol 1 vs 2: every rank exits at init",
             proves="handshake", rank_env=SKEW,
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-06 code=PROTOCOL_MISMATCH .*rank\(s\) \[0[^]]*\] have 1; "
                                         r"rank\(s\) \[1\] have 2"})),
    Scenario(id="FM-06/older-peer", title="rank 0 upgraded first (2), its peers older (1): every rank exits at init",
             proves="handshake", rank_env=RANK0_NEWER, min_world_size=2,
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-06 code=PROTOCOL_MISMATCH .*rank\(s\) \[0\] have 2; "
                                         r"rank\(s\) \[1[^]]*\] have 1"})),
    Scenario(id="FM-06/older-peer-off", title="rank 0 newer than its peers, unchecked: outputs diverge",
             proves="handshake", guardrails="all,-handshake,-digest", rank_env=RANK0_NEWER, min_world_size=2,
             expect=Expect.hang_or_diverge(blocked=DESYNC)),
    Scenario(id="FM-06/digest", title="protocol skew unchecked at init: output digests differ",
             proves="digest", guardrails="all,-handshake", rank_env=SKEW,
             expect=Expect.crash({"all": r"TP-FATAL .*code=(DIGEST_MISMATCH|PEER_ABORT) .*'output' differs"})),
    Scenario(id="FM-06/off", title="protocol 1 vs 2 unchecked: outputs diverge",
             proves="handshake", guardrails="all,-handshake,-digest", rank_env=SKEW, expect=Expect.hang_or_diverge(blocked=DESYNC)),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm06(breakit, scenario):
    breakit.check(scenario)
