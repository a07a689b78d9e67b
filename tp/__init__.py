"""tp: a small, real tensor-parallel "generator-only workers" inference path.

Rank 0 (the driver) owns the pipeline; workers run only the TP-sharded
generator, executing exactly the plan rank 0 broadcasts in an envelope each
chunk. Guardrails (see ``tp.guardrails``) turn hangs into crashes.
"""

PROTOCOL_VERSION = 1
ENVELOPE_VERSION = 1
PLAN = "v1_generator_only"
KNOWN_PLANS = ("v1_generator_only", "v1_full_pipeline")
