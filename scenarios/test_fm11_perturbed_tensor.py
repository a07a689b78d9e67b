"""FM-11: one broadcast tensor perturbed on one rank after receipt.

Rank 1's latents differ by 1e-3 in one element. Guarded: the digest
exchange names the tensor and the ranks (DIGEST_MISMATCH). Without it the
all_reduces mix rank 1's wrong partial sums into every rank's activations.
The same at world size 4 on the last rank and the last element of the
tensor: the digest covers every byte and every rank.
"""

import pytest

from harness import Expect, Fault, Scenario

FAULT = Fault(site="envelope.after_recv", action="corrupt", rank=1, chunk=2)
LAST = Fault(site="envelope.after_recv", action="corrupt(last)", rank=3, chunk=2)

SCENARIOS = [
    Scenario(id="FM-11", title="perturbed latents on rank 1 caught by the digest",
             proves="digest", faults=(FAULT,),
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-11 code=(DIGEST_MISMATCH|PEER_ABORT) .*'latents' differs.*\[1\]"})),
    Scenario(id="FM-11/off", title="perturbed latents on rank 1: Franken-model",
             proves="digest", guardrails="all,-digest", faults=(FAULT,), expect=Expect.diverge()),
    Scenario(id="FM-11/last", title="last element perturbed on the last of 4 ranks: caught by the digest",
             proves="digest", faults=(LAST,), world_size=4,
             expect=Expect.crash({"all": r"TP-FATAL fm=FM-11 code=(DIGEST_MISMATCH|PEER_ABORT) .*'latents' differs.*\[3\]"})),
    Scenario(id="FM-11/last-off", title="last element perturbed on the last of 4 ranks: Franken-model",
             proves="digest", guardrails="all,-digest", faults=(LAST,), world_size=4, expect=Expect.diverge()),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
def test_fm11(breakit, scenario):
    breakit.check(scenario)
