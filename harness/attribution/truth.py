"""Ground truth: which rank a run broke, and the collective where that rank first left the healthy sequence.

The culprit is declared: the rank its fault is armed on, or the one rank whose environment differs. Where
it first left the healthy sequence is read from the TP path's own flight traces, independently of how the
judge diffs ranks against each other: the culprit's trace against a healthy run's trace of the same rank
(same world size, chunks, guardrails and environment, no fault). The first ``seq`` where the two differ
(op, shapes, dtypes, root, or the caller's site) and where its peers did not do the same (a departure the
driver told every rank about is no mismatch) is where it broke the collective sequence; failing that, the
first ``seq`` a peer entered and the culprit never did (it stopped or hung before it). A culprit that left
no trace at the hang (SIGKILL; SIGSTOP, whose dumps can only come from after the harness released it while
reaping) is read from its peers: the first collective a peer entered and never left.
No such ``seq`` (a corrupted value: every rank calls the same collectives) means no collective diverged.
"""

from __future__ import annotations

from harness.supervise.trace import signature

FROM_CULPRIT = "the culprit's trace against the healthy run's"
FROM_PEERS = "its peers' traces (the culprit left none): the first collective a peer entered and never left"


def _by_seq(doc: dict | None) -> dict[int, dict]:
    return {e["seq"]: e for e in (doc or {}).get("entries", []) if isinstance(e, dict) and "seq" in e}


def _same(a: dict, b: dict) -> bool:
    return signature(a) == signature(b) and a.get("site") == b.get("site")


def first_departure(*, culprit: int, traces: dict[int, dict], healthy: dict[int, dict]) -> dict:
    """``{"seq", "op", "from"}``: where ``culprit`` first left the healthy sequence and its peers did not follow;
    ``seq`` None if it never did. Without a trace of the culprit (``traces`` lacks it), read from its peers."""
    mine, ref = traces.get(culprit), healthy.get(culprit)
    peers = {r: _by_seq(doc) for r, doc in traces.items() if r != culprit}
    if mine is None:
        waiting = [(e["seq"], e.get("op")) for entries in peers.values() for e in entries.values()
                   if e.get("leave") is None]
        seq, op = min(waiting) if waiting else (None, None)
        return {"seq": seq, "op": op, "from": FROM_PEERS}
    if ref is None:
        return {"seq": None, "op": None, "from": "unknown: the healthy run left no trace of this rank"}
    got, want = _by_seq(mine), _by_seq(ref)
    start = max(min(got, default=0), min(want, default=0))
    end = int(mine.get("next_seq", max(got, default=-1) + 1))
    for seq in range(start, end):
        if seq not in got or (seq in want and _same(got[seq], want[seq])):
            continue
        # The culprit did something else here; a departure every peer made too (the driver told them) is no
        # mismatch: they all still call the same collective.
        if not all(seq in entries and _same(entries[seq], got[seq]) for entries in peers.values()):
            return {"seq": seq, "op": (want.get(seq) or got[seq]).get("op"), "from": FROM_CULPRIT}
    after = [s for entries in peers.values() for s in entries if s >= end]
    if after:  # a peer went on to a collective the culprit never entered: it stopped or hung before it
        seq = min(after)
        op = want.get(seq, {}).get("op") or next(e[seq].get("op") for e in peers.values() if seq in e)
        return {"seq": seq, "op": op, "from": FROM_CULPRIT}
    return {"seq": None, "op": None, "from": FROM_CULPRIT}
