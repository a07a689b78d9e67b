"""Freeze the TP path's public surface: a change to any of these must be deliberate.

Failpoint sites, fatal codes with their exit statuses and guardrail names are
what users' scripts, CI configs and dashboards depend on (the harness's CLI,
options and markers are frozen in test_harness_cli.py). If this test fails, update the snapshot in
the same commit as the change and say why in the message.
"""

from tp import codes, failpoints, guardrails

FAILPOINT_SITES = [
    "driver.aux", "driver.idle", "driver.late_result", "driver.latents", "driver.meta", "driver.override",
    "driver.plan", "envelope.after_header", "envelope.after_recv", "envelope.before_header",
    "generator.call", "handshake.publish", "model.shard", "store.connect", "worker.replay", "worker.skip_recompute",
    "worker.stale_override",
]
FATAL_CODES = {
    "META_UNSERIALIZABLE": 40, "UNSUPPORTED_DTYPE": 41, "CALL_COUNT_MISMATCH": 42, "ENV_PARITY_MISMATCH": 43,
    "PLAN_MISMATCH": 44, "PROTOCOL_MISMATCH": 45, "MISSING_OVERRIDE": 46, "ENVELOPE_VIOLATION": 47,
    "DIGEST_MISMATCH": 48, "WEIGHT_MISMATCH": 49, "PEER_LOST": 50, "PEER_ABORT": 51, "POST_HEADER_ERROR": 52,
    "PROGRESS_TIMEOUT": 53, "HANDSHAKE_TIMEOUT": 54, "COLLECTIVE_ERROR": 55, "STALE_EPOCH": 56,
    "INTERNAL_ERROR": 57, "FAULT_INJECTED": 58, "STORE_LOST": 59, "STORE_UNAVAILABLE": 60, "DUPLICATE_RANK": 61,
    "STARTUP_TIMEOUT": 62,
}
GUARDRAILS = ["preflight", "poison_on_post_header_error", "lockstep", "handshake", "digest", "clear_after_read",
              "epoch_fence", "watchdog", "startup"]


def test_failpoint_sites_are_frozen():
    assert sorted(failpoints.SITES) == FAILPOINT_SITES


def test_fatal_codes_and_exit_statuses_are_frozen():
    assert {c.name: c.exit for c in codes.CODES.values()} == FATAL_CODES


def test_guardrail_names_are_frozen():
    assert list(guardrails.NAMES) == GUARDRAILS

