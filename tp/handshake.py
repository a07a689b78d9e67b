"""Init handshake through the rendezvous store, before any collective.

Every rank publishes what it believes (protocol and envelope version, plan,
role, env-parity keys, weight-shard fingerprint). Rank 0 checks them all and
publishes one verdict that *every* rank reads, so on a mismatch every rank
exits within the handshake deadline naming both values and the ranks that
hold them — no rank is left waiting on a key that will never be written. Rank 0
gives up within the handshake deadline of its publish; the others wait for rank 0's
record (one deadline), then for its verdict (two more at most), so the rank that
names the cause is rank 0 whenever rank 0 is alive.
"""

from __future__ import annotations

import json
from datetime import timedelta

import torch.distributed as dist

from tp.crash import Fatal

VERDICT = "tp/hs/verdict"


def _key(rank: int) -> str:
    return f"tp/hs/{rank}"


def run(store: dist.Store, *, rank: int, world_size: int, record: dict, timeout_s: float,
        expected_fingerprints: list[str] | None = None) -> None:
    """Raise ``Fatal`` on every rank if the ranks disagree."""
    store.set(_key(rank), json.dumps(record, sort_keys=True))
    if rank == 0:
        verdict = _collect(store, world_size, timeout_s, expected_fingerprints)
        store.set(VERDICT, json.dumps(verdict))
    else:
        verdict = _await_verdict(store, timeout_s)
    if not verdict["ok"]:
        # Rank 0 wrote the verdict and publishes the abort as it dies of it; the others repeat it as its followers.
        raise Fatal(verdict["code"], verdict["detail"]) if rank == 0 else \
            Fatal(verdict["code"], verdict["detail"], cause_rank=0, publish=False)


def _await_verdict(store: dist.Store, timeout_s: float) -> dict:
    # Rank 0's own deadline runs from its publish, not from ours. Waiting for the verdict alone, from our
    # publish, a rank that published before rank 0 would time out with rank 0 (or before it) when another
    # rank is missing, and its "no verdict" would be taken for the cause. So: rank 0's record within our
    # deadline, then its verdict within twice its deadline (rank 0 writes it just after its own expires).
    for key, within, missing in ((_key(0), timeout_s, "rank 0 did not publish a handshake within {} s"),
                                 (VERDICT, 2 * timeout_s, "no handshake verdict from rank 0 within {} s of its publish")):
        try:
            store.wait([key], timedelta(seconds=within))
        except Exception:
            raise Fatal("HANDSHAKE_TIMEOUT", missing.format(f"{within:g}")) from None
    return json.loads(store.get(VERDICT))


def _collect(store: dist.Store, world_size: int, timeout_s: float, expected: list[str] | None) -> dict:
    keys = [_key(r) for r in range(world_size)]
    try:
        store.wait(keys, timedelta(seconds=timeout_s))
    except Exception:
        missing = [r for r in range(world_size) if not store.check([_key(r)])]
        return {"ok": False, "code": "HANDSHAKE_TIMEOUT",
                "detail": f"rank(s) {missing} did not publish a handshake within {timeout_s} s"}
    records = [json.loads(store.get(k)) for k in keys]
    return check(records, expected)


def _disagreement(records: list[dict], pick, what: str) -> str | None:
    groups: dict[str, list[int]] = {}
    for r, rec in enumerate(records):
        groups.setdefault(json.dumps(pick(rec)), []).append(r)
    if len(groups) < 2:
        return None
    return f"{what} differs: " + "; ".join(f"rank(s) {ranks} have {value}" for value, ranks in groups.items())


def check(records: list[dict], expected_fingerprints: list[str] | None) -> dict:
    """The verdict, from every rank's record (pure: unit-tested without a store)."""
    checks = (
        ("PROTOCOL_MISMATCH", lambda r: r["protocol"], "protocol version"),
        ("PROTOCOL_MISMATCH", lambda r: r["envelope_version"], "envelope version"),
        ("PLAN_MISMATCH", lambda r: r["plan"], "plan"),
        ("PLAN_MISMATCH", lambda r: r["driver_rank"], "driver rank (role)"),
    )
    for code, pick, what in checks:
        problem = _disagreement(records, pick, what)
        if problem:
            return {"ok": False, "code": code, "detail": problem}
    for key in sorted(records[0]["env"]):
        problem = _disagreement(records, lambda r, k=key: r["env"].get(k, ""), f"env {key}")
        if problem:
            return {"ok": False, "code": "ENV_PARITY_MISMATCH", "detail": problem}
    if expected_fingerprints is not None:
        for r, rec in enumerate(records):
            if rec["shard_fingerprint"] != expected_fingerprints[r]:
                return {"ok": False, "code": "WEIGHT_MISMATCH",
                        "detail": f"rank {r} weight shard fingerprint {rec['shard_fingerprint']} != expected "
                                  f"{expected_fingerprints[r]}"}
    return {"ok": True}
