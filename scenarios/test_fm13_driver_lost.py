"""FM-13: rank 0 killed or frozen, mid-idle (between chunks) or mid-chunk.

Killed (SIGKILL): the kernel closes rank 0's sockets and gloo raises in every
worker's pending collective within milliseconds; the workers turn that into
PEER_LOST and exit. Frozen (SIGSTOP, what a wedged host or a partition looks
like): no socket closes, so only the watchdog can tell: rank 0's heartbeat
stops moving and every worker exits PEER_LOST after the peer timeout (2 s).
Without the watchdog a frozen rank 0 leaves every worker waiting forever.

The driver need not be rank 0 (``TP_DRIVER_RANK``): the ``driver-rank-1``
variants lose the driver on rank 1 while rank 0, a worker, serves nothing
special; every message must name rank 1 as the lost driver.
"""

import pytest

from harness import Blocked, Expect, Fault, Scenario

KILL_IDLE = Fault(site="driver.idle", action="kill(SIGKILL)", rank=0, chunk=2)
KILL_CHUNK = Fault(site="generator.call", action="kill(SIGKILL)", rank=0, chunk=2, hit=1)
FREEZE_IDLE = Fault(site="driver.idle", action="kill(SIGSTOP)", rank=0, chunk=2)
WORKERS_LOST = {0: r"TP-FAULT site=\S+ action=kill\(SIGKILL\) rank=0",
                "others": r"TP-FATAL fm=FM-13 code=(PEER_LOST|PEER_ABORT) .*rank 0"}

DRIVER_1 = {"TP_DRIVER_RANK": "1"}
KILL_DRIVER_1 = Fault(site="driver.idle", action="kill(SIGKILL)", rank=1, chunk=2)
FREEZE_DRIVER_1 = Fault(site="driver.idle", action="kill(SIGSTOP)", rank=1, chunk=2)

SCENARIOS = [
    Scenario(id="FM-13", title="rank 0 killed mid-idle: workers exit PEER_LOST",
             proves="watchdog", faults=(KILL_IDLE,), expect=Expect.crash(WORKERS_LOST)),
    Scenario(id="FM-13/mid-chunk", title="rank 0 killed mid-chunk: workers exit PEER_LOST",
             proves="watchdog", faults=(KILL_CHUNK,), expect=Expect.crash(WORKERS_LOST)),
    Scenario(id="FM-13/frozen", title="rank 0 frozen mid-idle: heartbeat stops, workers exit",
             proves="watchdog", faults=(FREEZE_IDLE,),
             expect=Expect.crash({0: r"TP-FAULT site=driver.idle action=kill\(SIGSTOP\) rank=0",
                                  "others": r"TP-FATAL fm=FM-13 code=(PEER_LOST|PEER_ABORT) .*rank 0's heartbeat stopped"},
                                 frozen={0})),
    Scenario(id="FM-13/driver-rank-1", title="the driver on rank 1 killed mid-idle: the others exit",
             proves="watchdog", env=DRIVER_1, faults=(KILL_DRIVER_1,),
             expect=Expect.crash({1: r"TP-FAULT site=driver.idle action=kill\(SIGKILL\) rank=1",
                                  "others": r"TP-FATAL fm=FM-13 code=(PEER_LOST|PEER_ABORT) .*rank 1\b"})),
    Scenario(id="FM-13/driver-rank-1-frozen", title="the driver on rank 1 frozen: the others exit",
             proves="watchdog", env=DRIVER_1, faults=(FREEZE_DRIVER_1,),
             expect=Expect.crash({1: r"TP-FAULT site=driver.idle action=kill\(SIGSTOP\) rank=1",
                                  "others": r"TP-FATAL fm=FM-13 code=(PEER_LOST|PEER_ABORT) .*rank 1's heartbeat stopped"},
                                 frozen={1})),
    Scenario(id="FM-13/off", title="rank 0 frozen, no watchdog: workers wait forever",
             proves="watchdog", guardrails="all,-watchdog", faults=(FREEZE_IDLE,), expect=Expect.hang(blocked={0: Blocked(stopped=True), "others": Blocked(op="broadcast", site="envelope header")})),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm13(breakit, scenario):
    breakit.check(scenario)
