"""Ground truth: which rank a run broke, and the collective where that rank first left the healthy sequence.

The culprit is declared: the rank its fault is armed on, or the one rank whose environment differs. Where
it first left the healthy sequence is read from the TP path's own flight traces, independently of how the
judge diffs ranks against each other: the culprit's trace against a healthy run's trace of the same rank
(same world size, chunks, guardrails and environment, no fault). The first ``seq`` where the two differ
(op, shapes, dtypes, root, or the caller's site) is where it did something else; failing that, the first
``seq`` a peer entered and the culprit never did (it stopped or hung before it). A culprit that left no
trace (SIGKILL, SIGSTOP) is read from its peers: the first collective a peer entered and never left.
No such ``seq`` (a corrupted value: every rank calls the same collectives) means no collective diverged.
"""

from __future__ import annotations

from harness.trace import signature

FROM_CULPRIT = "the culprit's trace against the healthy run's"
FROM_PEERS = "its peers' traces (the culprit left none): the first collective a peer entered and never left"


def _by_seq(doc: dict | None) -> dict[int, dict]:
    return {e["seq"]: e for e in (doc or {}).get("entries", []) if isinstance(e, dict) and "seq" in e}


def _same(a: dict, b: dict) -> bool:
    return signature(a) == signature(b) and a.get("site") == b.get("site")


def first_departure(*, culprit: int, traces: dict[int, dict], healthy: dict[int, dict]) -> dict:
    """``{"seq", "op", "from"}``: where ``culprit`` first left the healthy sequence; ``seq`` None if it never did."""
    mine, ref = traces.get(culprit), healthy.get(culprit)
    if mine is not None and ref is not None:
        got, want = _by_seq(mine), _by_seq(ref)
        start = max(min(got, default=0), min(want, default=0))
        end = int(mine.get("next_seq", max(got, default=-1) + 1))
        for seq in range(start, end):
            if seq in got and seq in want and not _same(got[seq], want[seq]):
                return {"seq": seq, "op": want[seq].get("op"), "from": FROM_CULPRIT}
            if seq in got and seq not in want:  # beyond the healthy run's last collective: an extra one
                return {"seq": seq, "op": got[seq].get("op"), "from": FROM_CULPRIT}
        peers = [s for r, doc in traces.items() if r != culprit for s in _by_seq(doc) if s >= end]
        if peers:
            seq = min(peers)
            op = want.get(seq, {}).get("op") or next(_by_seq(d)[seq].get("op") for r, d in traces.items()
                                                     if r != culprit and seq in _by_seq(d))
            return {"seq": seq, "op": op, "from": FROM_CULPRIT}
        return {"seq": None, "op": None, "from": FROM_CULPRIT}
    if mine is None:
        waiting = [(e["seq"], e.get("op")) for r, doc in traces.items() if r != culprit
                   for e in _by_seq(doc).values() if e.get("leave") is None]
        if waiting:
            seq, op = min(waiting)
            return {"seq": seq, "op": op, "from": FROM_PEERS}
        return {"seq": None, "op": None, "from": FROM_PEERS}
    return {"seq": None, "op": None, "from": "unknown: the healthy run left no trace of this rank"}
