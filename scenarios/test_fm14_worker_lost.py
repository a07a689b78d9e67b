"""FM-14: a worker killed or frozen in the middle of a collective.

Rank 1 dies (SIGKILL) or stops (SIGSTOP) at the start of a generator call in
chunk 2, while the other ranks are about to all_reduce with it. Killed: gloo
sees the closed socket and the others exit PEER_LOST. Frozen: only the
watchdog notices rank 1's heartbeat stopped; the others exit PEER_LOST and
the harness reaps the stopped rank (a stopped process cannot dump a stack).
Without the watchdog the frozen worker holds every other rank forever.
"""

import pytest

from harness import Blocked, Expect, Fault, Scenario

KILL = Fault(site="generator.call", action="kill(SIGKILL)", rank=1, chunk=2, hit=1)
FREEZE = Fault(site="generator.call", action="kill(SIGSTOP)", rank=1, chunk=2, hit=1)

SCENARIOS = [
    Scenario(id="FM-14", title="worker killed mid-collective: the others exit PEER_LOST",
             proves="watchdog", faults=(KILL,),
             expect=Expect.crash({1: r"TP-FAULT site=generator.call action=kill\(SIGKILL\) rank=1",
                                  "others": r"TP-FATAL fm=FM-14 code=(PEER_LOST|PEER_ABORT) .*rank 1\b"})),
    Scenario(id="FM-14/frozen", title="worker frozen mid-collective: heartbeat stops, others exit",
             proves="watchdog", faults=(FREEZE,),
             expect=Expect.crash({1: r"TP-FAULT site=generator.call action=kill\(SIGSTOP\) rank=1",
                                  "others": r"TP-FATAL fm=FM-14 code=(PEER_LOST|PEER_ABORT) .*rank 1's heartbeat stopped"},
                                 frozen={1})),
    Scenario(id="FM-14/off", title="worker frozen, no watchdog: the others wait forever",
             proves="watchdog", guardrails="all,-watchdog", faults=(FREEZE,), expect=Expect.hang(blocked={1: Blocked(stopped=True), "others": Blocked(op="all_reduce", site="generator call")})),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm14(breakit, scenario):
    breakit.check(scenario)
