"""Controls: runs that must stay CLEAN with the healthy output.

A healthy run; a straggler (rank 1 sleeps 1 s inside one generator call,
well within every deadline: the watchdog must not mistake slow for lost);
a graceful shutdown (SIGTERM to rank 0 after chunk 2: SHUTDOWN, all exit 0).
"""

import pytest

from harness import Expect, Fault, Interrupt, Scenario

SCENARIOS = [
    Scenario(id="CTL-healthy", fm="control", title="healthy run", proves="control", expect=Expect.clean()),
    Scenario(id="CTL-straggler", fm="control", title="a straggler inside the deadline", proves="control",
             faults=(Fault(site="generator.call", action="sleep(1.0)", rank=1, chunk=2, hit=1),),
             expect=Expect.clean()),
    Scenario(id="CTL-shutdown", fm="control", title="SIGTERM to rank 0: graceful SHUTDOWN", proves="control",
             # Many chunks: the SIGTERM must land while chunks remain, however late the harness sees chunk 2
             # (under srun it reaches rank 0's store only after a client connect that retries once a second).
             # The chunks after the SIGTERM never run, so the margin costs nothing when the harness is on time.
             interrupt=Interrupt(rank=0, signal="SIGTERM", after_chunk=2), chunks=400,
             expect=Expect.clean({0: r"TP-INFO SIGTERM: shutting down", "others": r"SHUTDOWN received"})),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_control(breakit, scenario):
    breakit.check(scenario)
