"""tp: a small, real tensor-parallel "generator-only workers" inference path.

Rank 0 (the driver) owns the pipeline; workers run only the TP-sharded
generator, executing exactly the plan rank 0 broadcasts in an envelope each
chunk. Guardrails (see ``tp.guardrails``) turn hangs into crashes.
"""

PROTOCOL_VERSION = 1
ENVELOPE_VERSION = 1
PLAN = "v1_generator_only"
KNOWN_PLANS = ("v1_generator_only", "v1_full_pipeline")

# Fork-safe modules (no thread, no device, no env read at import): a launcher's zygote may import them once
# and fork ranks from it (harness/launch/warm.py, CONTRACT §2). Read as a literal, without running this file.
ZYGOTE_PRELOAD = ("tp.runtime", "tp.driver", "tp.worker", "tp.launch")
