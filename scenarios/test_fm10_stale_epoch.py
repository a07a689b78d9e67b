"""FM-10: a result from an old cache epoch arrives after a hard cut.

At chunk 4 the driver resets its caches (a new cache epoch) and a result
computed in the previous epoch is delivered late. Guarded: the epoch fence
drops it (a ``stale_dropped`` event) and the output equals the healthy run.
Without the fence the stale frames reach the output.

On a worker: at chunk 5 rank 1 acts on a late duplicate of the last envelope
before the cut at chunk 4 (cache epoch 1 while it is in epoch 2). Guarded: the
worker's fence refuses it (STALE_EPOCH). Without the fence and the digest,
rank 1 computes on the old chunk's inputs while the others use the new ones.

And at the cut itself: at chunk 4 rank 1 acts on chunk 3's envelope instead of
the cut it received. A fence that learnt the epoch only from envelopes the rank
acted on would never see epoch 2 and let the duplicate through; its plan has one
call more (the KV recompute), so rank 1 would sit in a generator all_reduce
while the others wait in the digest exchange, until the progress deadline. A
received cut moves the fence's epoch: STALE_EPOCH at once. Without the fence the
collectives desync.
"""

import pytest

from harness import Blocked, Expect, Fault, Scenario, peers_follow

FAULT = Fault(site="driver.late_result", action="flip", rank=0, chunk=4)
REPLAY = Fault(site="worker.replay", action="flip", rank=1, chunk=5)
REPLAY_AT_CUT = Fault(site="worker.replay", action="flip", rank=1, chunk=4)

# At the cut the driver runs 4 calls and reaches the digest exchange; rank 1 runs the old plan's 5th call.
DIGESTS = Blocked(op="all_gather", site="digest exchange")
GENERATOR = Blocked(op="all_reduce", site="generator call")

SCENARIOS = [
    Scenario(id="FM-10", title="late result of the old epoch dropped by the fence",
             proves="epoch_fence", faults=(FAULT,),
             expect=Expect.clean({0: r'"event": "stale_dropped".*"result_epoch": 1'})),
    Scenario(id="FM-10/off", title="late result of the old epoch delivered",
             proves="epoch_fence", guardrails="all,-epoch_fence", faults=(FAULT,), expect=Expect.diverge()),
    Scenario(id="FM-10/worker", title="envelope of the old epoch reaches a worker: refused by its fence",
             proves="epoch_fence", faults=(REPLAY,),
             expect=Expect.crash({1: r"TP-FATAL fm=FM-10 code=STALE_EPOCH .*cache epoch 1 while this rank is in epoch 2",
                                  "others": peers_follow(1)})),
    Scenario(id="FM-10/worker-off", title="envelope of the old epoch reaches a worker: Franken-model",
             proves="epoch_fence", guardrails="all,-epoch_fence,-digest", faults=(REPLAY,), expect=Expect.diverge()),
    Scenario(id="FM-10/worker-at-cut", title="the old epoch's last envelope acted on at the cut: refused",
             proves="epoch_fence", faults=(REPLAY_AT_CUT,),
             expect=Expect.crash({1: r"TP-FATAL fm=FM-10 code=STALE_EPOCH .*cache epoch 1 while this rank is in epoch 2",
                                  "others": peers_follow(1)})),
    Scenario(id="FM-10/worker-at-cut-off", title="the old epoch's plan run at the cut: collectives desync",
             proves="epoch_fence", guardrails="all,-epoch_fence", faults=(REPLAY_AT_CUT,),
             expect=Expect.hang(blocked={1: GENERATOR, "others": DIGESTS})),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm10(breakit, scenario):
    breakit.check(scenario)
