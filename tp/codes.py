"""The closed set of fatal codes: name, exit status, failure mode, meaning.

A rank that dies on a fatal path prints exactly one ``TP-FATAL`` line with
one of these codes and exits with its status, so a supervisor can tell what
happened from the exit status alone when the log is lost.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Code:
    name: str
    """The code as printed in ``TP-FATAL ... code=NAME``."""
    exit: int
    """Process exit status; 40..63 are reserved for fatal codes."""
    fm: str
    """The failure mode this code proves (``FM-xx``), or ``none``."""
    description: str
    """One sentence for ``python -m tp --list-codes`` and the README."""


_TABLE = (
    Code(name="META_UNSERIALIZABLE", exit=40, fm="FM-01", description="envelope meta holds a value the canonical JSON encoder cannot encode"),
    Code(name="UNSUPPORTED_DTYPE", exit=41, fm="FM-02", description="a tensor's dtype cannot travel on this backend"),
    Code(name="CALL_COUNT_MISMATCH", exit=42, fm="FM-03", description="generator calls observed differ from the broadcast plan"),
    Code(name="ENV_PARITY_MISMATCH", exit=43, fm="FM-04", description="ranks disagree on an env key that gates a collective"),
    Code(name="PLAN_MISMATCH", exit=44, fm="FM-05", description="ranks disagree on plan or role at start"),
    Code(name="PROTOCOL_MISMATCH", exit=45, fm="FM-06", description="ranks speak different protocol or envelope versions"),
    Code(name="MISSING_OVERRIDE", exit=46, fm="FM-07", description="KV recompute requested without context_frames_override"),
    Code(name="ENVELOPE_VIOLATION", exit=47, fm="FM-08", description="a tensor or field outside the envelope schema, or a broken invariant"),
    Code(name="DIGEST_MISMATCH", exit=48, fm="FM-11", description="ranks computed on different inputs or produced different outputs"),
    Code(name="WEIGHT_MISMATCH", exit=49, fm="FM-12", description="a rank's weight shard fingerprint differs from the expected one"),
    Code(name="PEER_LOST", exit=50, fm="FM-13", description="a peer's heartbeat stopped or its connection broke (FM-13 driver, FM-14 worker)"),
    Code(name="PEER_ABORT", exit=51, fm="none", description="another rank died on a fatal path; this rank follows it"),
    Code(name="POST_HEADER_ERROR", exit=52, fm="FM-01", description="an error after the header was sent; the group is poisoned"),
    Code(name="PROGRESS_TIMEOUT", exit=53, fm="FM-03", description="no progress within the progress deadline (stuck in Python, or twice that in a collective)"),
    Code(name="HANDSHAKE_TIMEOUT", exit=54, fm="FM-05", description="the init handshake did not complete within its deadline"),
    Code(name="COLLECTIVE_ERROR", exit=55, fm="none", description="a collective raised (peer gone, size mismatch, backend error)"),
    Code(name="STALE_EPOCH", exit=56, fm="FM-10", description="an envelope from an older cache epoch reached a worker"),
    Code(name="INTERNAL_ERROR", exit=57, fm="none", description="an unexpected exception; a bug, but still crash-only"),
    Code(name="FAULT_INJECTED", exit=58, fm="none", description="a failpoint raised; used where no specific code applies"),
    Code(name="STORE_LOST", exit=59, fm="FM-16", description="during start-up, the rendezvous store this rank had reached is gone (its host rank died or closed it)"),
    Code(name="STORE_UNAVAILABLE", exit=60, fm="FM-16", description="the rendezvous store never became this job's: its port is taken, nothing listens, or what listens is no c10d store"),
    Code(name="DUPLICATE_RANK", exit=61, fm="FM-16", description="two processes claim the same RANK"),
    Code(name="STARTUP_TIMEOUT", exit=62, fm="FM-16", description="start-up (store connect, store reads, handshake) found no verdict within TP_STARTUP_TIMEOUT_S"),
)

CODES: dict[str, Code] = {code.name: code for code in _TABLE}
CONFIG_EXIT = 2
"""Exit status for bad configuration (a bad env or CLI value)."""


def code(name: str) -> Code:
    try:
        return CODES[name]
    except KeyError:
        raise ValueError(f"unknown fatal code {name!r}; known: {', '.join(CODES)}") from None
