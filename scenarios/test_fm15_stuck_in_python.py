"""FM-15: a rank stuck in Python, outside any collective, while its heartbeat thread beats.

Rank 0 blocks between chunks (a deadlocked lock, an endless loop in its own
pipeline code): its watchdog keeps beating, so no peer can call it lost, and
the workers wait for a header, legitimately idle. Guarded: rank 0 is busy
while it drives, so the watchdog's progress deadline (1 s here) ends it with
PROGRESS_TIMEOUT and the workers follow it. Without the watchdog every rank
waits forever. The same for a worker stuck in Python mid-chunk while the
others wait for it in an all_reduce: they are just as long without progress,
but a rank waiting in a collective gets twice the deadline, so the stuck rank
is the one named as the cause.

And a rank stuck in Python must still learn that a peer died: rank 1 blocks
in Python at its first generator call of chunk 2 while rank 0, half a second
later, dies on a fatal path. Rank 1 is in no collective, so no socket tells it;
only the abort key its watchdog reads does (PEER_ABORT within a poll, not
PEER_LOST after the peer timeout). Without the watchdog rank 1 never exits.

And a rank stuck in Python before the handshake (found by ``python -m harness
explore``): the watchdog now starts before the model loads, so the abort rank
0 publishes when its handshake times out reaches rank 1 (PEER_ABORT within a
poll: a main thread waiting in the handshake would get a peer timeout to die
of the verdict itself, one stuck before it gets nothing). Before, rank 1 had
no watchdog yet and never exited.
"""

import pytest

from harness import Expect, Fault, Scenario, peers_follow

STUCK_DRIVER = Fault(site="driver.idle", action="hang", rank=0, chunk=2)
FAST_PROGRESS = {"TP_PROGRESS_TIMEOUT_S": "1"}
STUCK_WORKER = Fault(site="generator.call", action="hang", rank=1, chunk=2, hit=1)
# Rank 0 fails once rank 1 is surely stuck: the sleep is the fault's own timing, not synchronisation.
DRIVER_FAILS = (Fault(site="generator.call", action="sleep(0.5)", rank=0, chunk=2, hit=1),
                Fault(site="generator.call", action="raise", rank=0, chunk=2, hit=1))

STUCK_IN_HANDSHAKE = Fault(site="handshake.publish", action="hang", rank=1, hit=1)
# Rank 1 never publishes, so rank 0 timing out is the expected end at any load: the timeout only sets how soon.
FAST_HANDSHAKE = {"TP_HANDSHAKE_TIMEOUT_S": "0.3"}

SCENARIOS = [
    Scenario(id="FM-15", title="rank 0 stuck in Python between chunks: progress deadline",
             proves="watchdog", faults=(STUCK_DRIVER,), env=FAST_PROGRESS,
             expect=Expect.crash({0: r"TP-FATAL fm=FM-15 code=PROGRESS_TIMEOUT rank=0 .*outside any collective.*preparing chunk 2",
                                  "others": peers_follow(0)})),
    Scenario(id="FM-15/off", title="rank 0 stuck in Python, no watchdog: every rank waits forever",
             proves="watchdog", guardrails="all,-watchdog", faults=(STUCK_DRIVER,), env=FAST_PROGRESS,
             expect=Expect.hang()),
    Scenario(id="FM-15/worker", title="a worker stuck in Python mid-chunk is named, not the ranks waiting for it",
             proves="watchdog", faults=(STUCK_WORKER,), env=FAST_PROGRESS,
             expect=Expect.crash({1: r"TP-FATAL fm=FM-15 code=PROGRESS_TIMEOUT rank=1 .*outside any collective", "others": peers_follow(1)})),
    Scenario(id="FM-15/busy-peer", title="a peer dies while rank 1 is stuck in Python: the abort key reaches it",
             proves="watchdog", faults=(STUCK_WORKER, *DRIVER_FAILS),
             expect=Expect.crash({0: r"TP-FATAL .*code=FAULT_INJECTED rank=0 ",
                                  "others": peers_follow(0)})),
    Scenario(id="FM-15/busy-peer-off", title="a peer dies while rank 1 is stuck in Python, no watchdog",
             proves="watchdog", guardrails="all,-watchdog", faults=(STUCK_WORKER, *DRIVER_FAILS),
             expect=Expect.hang()),
    Scenario(id="FM-15/handshake", title="a rank stuck in Python before its handshake reads the abort",
             proves="watchdog", faults=(STUCK_IN_HANDSHAKE,), env=FAST_HANDSHAKE,
             expect=Expect.crash({0: r"TP-FATAL .*code=HANDSHAKE_TIMEOUT rank=0 .*rank\(s\) \[1\] did not publish",
                                  1: r"TP-FATAL .*code=PEER_ABORT rank=1 cause_rank=0"})),
    Scenario(id="FM-15/handshake-off", title="a rank stuck in Python before its handshake, no watchdog",
             proves="watchdog", guardrails="all,-watchdog", faults=(STUCK_IN_HANDSHAKE,), env=FAST_HANDSHAKE,
             expect=Expect.hang()),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm15(breakit, scenario):
    breakit.check(scenario)
