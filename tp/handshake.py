"""Init handshake through the rendezvous store, before any collective.

Every rank publishes what it believes (protocol and envelope version, plan,
role, env-parity keys, weight-shard fingerprint). Rank 0 checks them all and
publishes one verdict that *every* rank reads, so on a mismatch every rank
exits within the handshake deadline naming both values and the ranks that
hold them — no rank is left waiting on a key that will never be written.
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
        try:
            store.wait([VERDICT], timedelta(seconds=timeout_s))
        except Exception:
            raise Fatal("HANDSHAKE_TIMEOUT", f"no handshake verdict from rank 0 within {timeout_s} s") from None
        verdict = json.loads(store.get(VERDICT))
    if not verdict["ok"]:
        raise Fatal(verdict["code"], verdict["detail"])


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
