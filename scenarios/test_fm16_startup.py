"""FM-16: a rank lost or duplicated during start-up, before the handshake verdict, under an srun-style launch.

Under ``--launch srun`` rank 0 serves the rendezvous store, so losing it
during start-up takes the store with it. A peer that had reached the store
learns it at once (refused or broken connection: ``STORE_LOST`` naming rank
0, or its watchdog's ``PEER_LOST``); one that had not yet can only give up at
the start-up deadline (``STORE_UNAVAILABLE``, 5 s here). Without the
``startup`` guardrail a peer is left to c10d's own client, which retries a
refused connect with a backoff until its 30 s timeout and beyond: every
survivor waits out the run's deadline (proven at world size 2: rank 0 is dead
and leaves no trace, rank 1 waits outside any collective).

A peer lost mid-start-up (it claimed its rank, then died) is named by its
pid at once; two processes given the same ``RANK`` are refused with
``DUPLICATE_RANK`` naming both pids.
"""

import pytest

from harness import Blocked, Expect, Fault, Scenario

STARTUP_ENV = {"TP_STARTUP_TIMEOUT_S": "5"}
# Rank 0's first client connection is its watchdog's, right after it started serving and claimed its rank.
RANK0_LOST = Fault(site="store.connect", action="kill(SIGKILL)", rank=0, hit=1)
# Rank 1's second connection (its watchdog's): it has claimed its rank and has no heartbeat yet.
PEER_LOST = Fault(site="store.connect", action="kill(SIGKILL)", rank=1, hit=2)
STORE_HOST_GONE = r"TP-FATAL fm=FM-1[36] code=(STORE_LOST|STORE_UNAVAILABLE|PEER_LOST|PEER_ABORT) .*(rank 0|127\.0\.0\.1)"

SCENARIOS = [
    Scenario(id="FM-16", title="rank 0 (serving the store) killed as its peers connect: every peer exits",
             proves="startup", env=STARTUP_ENV, faults=(RANK0_LOST,), min_world_size=2, deadline_s=15,
             expect=Expect.crash({0: r"TP-FAULT site=store.connect action=kill\(SIGKILL\) rank=0",
                                  "others": STORE_HOST_GONE})),
    Scenario(id="FM-16/peer", title="a peer killed after it claimed its rank, before its first heartbeat",
             proves="startup", env=STARTUP_ENV, faults=(PEER_LOST,), min_world_size=2, deadline_s=15,
             expect=Expect.crash({1: r"TP-FAULT site=store.connect action=kill\(SIGKILL\) rank=1",
                                  "others": r"TP-FATAL .*code=(PEER_LOST|PEER_ABORT) .*rank 1 claimed its rank"})),
    Scenario(id="FM-16/off", title="rank 0 killed as its peers connect, no start-up guardrail: they wait on c10d",
             proves="startup", guardrails="all,-startup", env=STARTUP_ENV, faults=(RANK0_LOST,), world_size=2,
             expect=Expect.hang(blocked={1: Blocked(outside=True)})),
]


@pytest.mark.breakit(launch="srun")
@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm16(breakit, scenario):
    breakit.check(scenario)
