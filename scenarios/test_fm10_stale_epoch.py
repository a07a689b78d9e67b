"""FM-10: a result from an old cache epoch arrives after a hard cut.

At chunk 4 the driver resets its caches (a new cache epoch) and a result
computed in the previous epoch is delivered late. Guarded: the epoch fence
drops it (a ``stale_dropped`` event) and the output equals the healthy run.
Without the fence the stale frames reach the output.
"""

import pytest

from harness.scenario import Expect, Fault, Scenario

pytestmark = [pytest.mark.breakit, pytest.mark.fm10]

FAULT = Fault(site="driver.late_result", action="flip", rank=0, chunk=4)

SCENARIOS = [
    Scenario(id="FM-10", fm="FM-10", title="late result of the old epoch dropped by the fence",
             proves="epoch_fence", faults=(FAULT,),
             expect=Expect.clean({0: r'"event": "stale_dropped".*"result_epoch": 1'})),
    Scenario(id="FM-10/off", fm="FM-10", title="late result of the old epoch delivered",
             proves="epoch_fence", guardrails="all,-epoch_fence", faults=(FAULT,), expect=Expect.diverge()),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm10(breakit, scenario):
    breakit.check(scenario)
