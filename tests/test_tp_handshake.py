"""The init handshake: the pure verdict, then the store protocol with in-process ranks."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from tp import ENVELOPE_VERSION, PLAN, PROTOCOL_VERSION, handshake
from tp.config import ENV_PARITY_KEYS
from tp.crash import Fatal

FINGERPRINTS = ["aaaa000000000000", "bbbb000000000000", "cccc000000000000"]


def _record(rank: int, **overrides: object) -> dict:
    record = {
        "protocol": PROTOCOL_VERSION, "envelope_version": ENVELOPE_VERSION, "plan": PLAN,
        "role": "driver" if rank == 0 else "worker", "driver_rank": 0,
        "env": {key: "" for key in ENV_PARITY_KEYS}, "shard_fingerprint": FINGERPRINTS[rank],
    }
    record.update(overrides)
    return record


def _records(n: int = 3, **per_rank: dict) -> list[dict]:
    """``per_rank`` maps "r1" -> overrides for rank 1."""
    return [_record(r, **per_rank.get(f"r{r}", {})) for r in range(n)]


# -- check(): pure ----------------------------------------------------------------

def test_agreeing_ranks_pass() -> None:
    assert handshake.check(_records(), FINGERPRINTS) == {"ok": True}
    assert handshake.check(_records(), None) == {"ok": True}


def test_role_is_per_rank_and_not_compared() -> None:
    assert handshake.check(_records(r1={"role": "worker"}, r2={"role": "worker"}), FINGERPRINTS)["ok"]


@pytest.mark.parametrize(("field", "code", "what", "mine", "theirs"), [
    ("protocol", "PROTOCOL_MISMATCH", "protocol version", PROTOCOL_VERSION, 2),
    ("envelope_version", "PROTOCOL_MISMATCH", "envelope version", ENVELOPE_VERSION, 7),
    ("plan", "PLAN_MISMATCH", "plan", PLAN, "v1_full_pipeline"),
    ("driver_rank", "PLAN_MISMATCH", "driver rank (role)", 0, 1),
])
def test_each_disagreement_gets_its_code_and_names_both_values_and_their_ranks(
        field: str, code: str, what: str, mine: object, theirs: object) -> None:
    verdict = handshake.check(_records(r1={field: theirs}), FINGERPRINTS)
    assert verdict == {"ok": False, "code": code, "detail": (
        f"{what} differs: rank(s) [0, 2] have {json.dumps(mine)}; rank(s) [1] have {json.dumps(theirs)}")}


def test_more_than_two_values_are_all_listed() -> None:
    verdict = handshake.check(_records(r1={"protocol": 2}, r2={"protocol": 3}), None)
    assert verdict["detail"] == "protocol version differs: rank(s) [0] have 1; rank(s) [1] have 2; rank(s) [2] have 3"


@pytest.mark.parametrize("key", ENV_PARITY_KEYS)
def test_env_parity_names_the_key_the_values_and_the_ranks(key: str) -> None:
    env = {k: "" for k in ENV_PARITY_KEYS} | {key: "1"}
    verdict = handshake.check(_records(r2={"env": env}), FINGERPRINTS)
    assert verdict == {"ok": False, "code": "ENV_PARITY_MISMATCH",
                       "detail": f'env {key} differs: rank(s) [0, 1] have ""; rank(s) [2] have "1"'}


def test_a_key_missing_on_a_peer_counts_as_empty() -> None:
    env = {k: "" for k in ENV_PARITY_KEYS if k != "TP_SYNC_KV_STATS"}
    assert handshake.check(_records(r1={"env": env}), None)["ok"]
    env1 = {k: "" for k in ENV_PARITY_KEYS} | {"TP_SYNC_KV_STATS": "1"}
    verdict = handshake.check(_records(r0={"env": env1}, r1={"env": env}), None)
    assert verdict["code"] == "ENV_PARITY_MISMATCH" and "rank(s) [1, 2] have \"\"" in verdict["detail"]


def test_a_wrong_weight_shard_names_the_rank_and_both_fingerprints() -> None:
    verdict = handshake.check(_records(r1={"shard_fingerprint": "dead000000000000"}), FINGERPRINTS)
    assert verdict == {"ok": False, "code": "WEIGHT_MISMATCH",
                       "detail": f"rank 1 weight shard fingerprint dead000000000000 != expected {FINGERPRINTS[1]}"}


def test_fingerprints_are_not_checked_without_expectations() -> None:
    assert handshake.check(_records(r1={"shard_fingerprint": "dead000000000000"}), None) == {"ok": True}


def test_versions_are_checked_before_plan_env_and_weights() -> None:
    env = {k: "x" for k in ENV_PARITY_KEYS}
    records = _records(r1={"protocol": 2, "plan": "other", "env": env, "shard_fingerprint": "0"})
    assert handshake.check(records, FINGERPRINTS)["code"] == "PROTOCOL_MISMATCH"
    records = _records(r1={"plan": "other", "env": env, "shard_fingerprint": "0"})
    assert handshake.check(records, FINGERPRINTS)["code"] == "PLAN_MISMATCH"
    records = _records(r1={"env": env, "shard_fingerprint": "0"})
    assert handshake.check(records, FINGERPRINTS)["code"] == "ENV_PARITY_MISMATCH"


# -- run(): the store protocol, ranks as threads over one HashStore -----------------

def _run_ranks(records: list[dict | None], timeout_s: float = 5.0,
               after: dict[int, str] | None = None) -> dict[int, object]:
    """Run handshake.run for every rank whose record is not None; returns rank -> verdict or Fatal.

    ``after`` holds a rank back until another rank's key is in the store (an order, not a sleep).
    """
    store = dist.HashStore()
    n = len(records)
    out: dict[int, object] = {}

    def one(rank: int) -> None:
        if after and rank in after:
            store.wait([after[rank]], timedelta(seconds=timeout_s))
        try:
            handshake.run(store, rank=rank, world_size=n, record=records[rank], timeout_s=timeout_s,
                          expected_fingerprints=FINGERPRINTS[:n] if rank == 0 else None)
            out[rank] = "ok"
        except Fatal as fatal:
            out[rank] = fatal
        out[f"t{rank}"] = time.monotonic()

    threads = [threading.Thread(target=one, args=(r,)) for r in range(n) if records[r] is not None]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s + 5)
    assert not any(t.is_alive() for t in threads), "a rank is still waiting after the handshake deadline"
    out["verdict"] = json.loads(store.get(handshake.VERDICT)) if store.check([handshake.VERDICT]) else None
    return out


def test_run_passes_every_rank_when_they_agree() -> None:
    out = _run_ranks(_records(3))
    assert [out[r] for r in range(3)] == ["ok"] * 3 and out["verdict"] == {"ok": True}


def test_run_fails_every_rank_with_the_same_code_and_detail() -> None:
    out = _run_ranks(_records(3, r2={"protocol": 2}))
    fatals = [out[r] for r in range(3)]
    assert all(isinstance(f, Fatal) for f in fatals), fatals
    assert {(f.code, f.detail) for f in fatals} == {
        ("PROTOCOL_MISMATCH", "protocol version differs: rank(s) [0, 1] have 1; rank(s) [2] have 2")}
    assert out["verdict"]["code"] == "PROTOCOL_MISMATCH"


def test_rank_0_names_the_ranks_that_never_published() -> None:
    start = time.monotonic()
    out = _run_ranks([_record(0), _record(1), None], timeout_s=0.3)
    assert isinstance(out[0], Fatal) and out[0].code == "HANDSHAKE_TIMEOUT"
    assert out[0].detail == "rank(s) [2] did not publish a handshake within 0.3 s"
    assert isinstance(out[1], Fatal) and out[1].code == "HANDSHAKE_TIMEOUT"
    assert out["t0"] - start < 3.0


def test_a_worker_without_a_verdict_times_out_instead_of_waiting_forever() -> None:
    out = _run_ranks([None, _record(1)], timeout_s=0.3)
    assert isinstance(out[1], Fatal) and out[1].code == "HANDSHAKE_TIMEOUT"
    assert out[1].detail == "rank 0 did not publish a handshake within 0.3 s"
    assert out["verdict"] is None


def test_a_rank_that_published_before_rank_0_still_gets_rank_0s_verdict() -> None:
    # Rank 0 publishes after rank 1 and waits its whole deadline for rank 2: rank 1 must not time out first
    # (at world size 4 it did, and its "no verdict" was taken for the root cause).
    out = _run_ranks([_record(0), _record(1), None], timeout_s=0.3, after={0: "tp/hs/1"})
    assert out[0].detail == "rank(s) [2] did not publish a handshake within 0.3 s"
    assert isinstance(out[1], Fatal) and (out[1].code, out[1].detail) == (out[0].code, out[0].detail)


def test_a_worker_gives_up_when_rank_0_published_and_never_decided() -> None:
    store = dist.HashStore()
    store.set("tp/hs/0", json.dumps(_record(0)))
    with pytest.raises(Fatal, match=r"^HANDSHAKE_TIMEOUT: no handshake verdict from rank 0 within 0.6 s of its publish$"):
        handshake.run(store, rank=1, world_size=2, record=_record(1), timeout_s=0.3)
