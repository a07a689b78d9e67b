"""The envelope decoder refuses what the wire cannot justify, before it allocates anything.

Each case below is one that reached a worker as RuntimeError, RecursionError,
NotImplementedError or a multi-GB allocation (INTERNAL_ERROR in a real rank),
or was accepted though it is not canonical; now each is an EnvelopeError with
a contract code. The receiver is the real ``Transport.recv``; only its
broadcast is a scripted wire (tools/fuzz_envelope.py), which records every
buffer the receiver allocates.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tools.fuzz_envelope import HEADER_AND_LENGTH, WireTransport, fuzz, valid_wire
from tp import codes
from tp.config import DEFAULT_MAX_ENVELOPE_BYTES, DEFAULT_MAX_META_BYTES, ConfigError, from_env
from tp.envelope import MAX_META_DEPTH, EnvelopeError, Limits, encode_meta

REPO = Path(__file__).resolve().parents[1]
BIG = Limits(max_meta_bytes=1 << 20, max_envelope_bytes=1 << 20)
DEFAULT = Limits()


def _wire(*, legacy: bool = False) -> list[torch.Tensor]:
    return valid_wire(random.Random(3), legacy=legacy)


def _recv(wire: list[torch.Tensor], limits: Limits = DEFAULT) -> tuple[WireTransport, EnvelopeError | None]:
    receiver = WireTransport(guards="all", limits=limits, wire=wire)
    try:
        receiver.recv()
    except EnvelopeError as exc:
        return receiver, exc
    return receiver, None


def _with_meta(data: bytes, *, legacy: bool = False) -> list[torch.Tensor]:
    wire = _wire(legacy=legacy)
    i = 2 if legacy else 1
    wire[i] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    if legacy:
        wire[1] = torch.tensor([len(data)])
    else:
        wire[0] = wire[0].clone()
        wire[0][6] = len(data)
    return wire


def _meta_of(wire: list[torch.Tensor]) -> dict:
    return json.loads(wire[1].numpy().tobytes())


def _refused(wire: list[torch.Tensor], code: str, says: str, limits: Limits = DEFAULT) -> WireTransport:
    receiver, exc = _recv(wire, limits)
    assert exc is not None, "accepted"
    assert exc.code == code and says in str(exc), f"{exc.code}: {exc}"
    return receiver


def test_a_valid_envelope_is_accepted_in_both_send_orders() -> None:
    for legacy in (False, True):
        receiver, exc = _recv(_wire(legacy=legacy))
        assert exc is None and not receiver.wire, exc


# -- header: sizes come from the wire, so they are checked before the buffer exists -----------

@pytest.mark.parametrize("n", [-5, -(2**63), 2**63 - 1, 2**32, DEFAULT_MAX_META_BYTES + 1],
                         ids=["negative", "int64-min", "int64-max", "4GiB", "cap+1"])
def test_meta_nbytes_outside_0_to_the_cap_is_refused_before_allocating(n: int) -> None:
    wire = _wire()
    wire[0][6] = n
    receiver = _refused(wire, "ENVELOPE_VIOLATION", f"meta_nbytes={n} is outside [0, {DEFAULT_MAX_META_BYTES}]")
    assert receiver.allocated == [64], "only the header buffer may exist"


@pytest.mark.parametrize("n", [-7, 2**62])
def test_the_legacy_length_tensor_is_held_to_the_same_cap(n: int) -> None:
    wire = _wire(legacy=True)
    wire[1] = torch.tensor([n])
    receiver = _refused(wire, "ENVELOPE_VIOLATION", f"meta_nbytes={n} is outside")
    assert receiver.allocated == [64, 8]


@pytest.mark.parametrize("slot", [4, 7])
def test_a_nonzero_reserved_header_field_is_refused(slot: int) -> None:
    wire = _wire()
    wire[0][slot] = 1
    _refused(wire, "ENVELOPE_VIOLATION", f"reserved field {slot} is 1")


# -- meta: canonical JSON only --------------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "says"), [
    (rb'"kv_cache_attention_bias":[^,}]*', b'"kv_cache_attention_bias":1e999', "not finite"),
    (rb'"kv_cache_attention_bias":[^,}]*', b'"kv_cache_attention_bias":-1e999', "not finite"),
    (rb'"base_seed":[^,}]*', b'"base_seed":9223372036854775808', "does not fit int64"),
    (rb'"base_seed":[^,}]*', b'"base_seed":' + b"1" * 5000, "does not fit int64"),
    (rb'\{"base_seed"', b'{"height":16,"base_seed"', "duplicate key(s) ['height']"),
    (rb'}$', b',"zz":"\\ud800"}', "lone surrogate"),
    (rb'"v1_generator_only"', b'"v1_\\u0067enerator_only"', "expected sorted keys, no whitespace"),
    (rb",", b", ", "expected sorted keys, no whitespace"),
    (rb'"tp_plan"', b'"x":NaN,"tp_plan"', "NaN is not canonical JSON"),
], ids=["1e999", "-1e999", "2^63", "5000-digits", "duplicate-key", "lone-surrogate", "needless-escape",
        "whitespace", "nan"])
def test_non_canonical_meta_is_an_envelope_violation(old: bytes, new: bytes, says: str) -> None:
    data = _wire()[1].numpy().tobytes()
    mutated = re.sub(old, lambda _: new, data, count=1)
    assert mutated != data
    _refused(_with_meta(mutated), "ENVELOPE_VIOLATION", says)


@pytest.mark.parametrize("depth", [MAX_META_DEPTH + 1, 100_000])
def test_nesting_is_bounded_before_the_recursive_parser_runs(depth: int) -> None:
    data = _wire()[1].numpy().tobytes()
    wire = _with_meta(data[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}")
    _refused(wire, "ENVELOPE_VIOLATION", f"nests deeper than {MAX_META_DEPTH} levels", limits=BIG)


def test_meta_over_the_cap_is_refused_by_size() -> None:
    data = _wire()[1].numpy().tobytes()
    limits = Limits(max_meta_bytes=len(data) - 1)
    receiver = _refused(_wire(), "ENVELOPE_VIOLATION", f"outside [0, {len(data) - 1}]", limits=limits)
    assert receiver.allocated == [64]


# -- tensor specs: dtypes the backend carries, shapes within the cap --------------------------

def _spec_wire(key: str, dtype: object = None, shape: object = None) -> list[torch.Tensor]:
    meta = _meta_of(_wire())
    for spec in meta["tensor_specs"]:
        if spec[0] == key:
            spec[1] = spec[1] if dtype is None else dtype
            spec[2] = spec[2] if shape is None else shape
    return _with_meta(json.dumps(meta, sort_keys=True, separators=(",", ":")).encode())


@pytest.mark.parametrize("dtype", ["qint8", "quint8", "uint16", "int16", "float8_e4m3fn", "bits8", "float"])
def test_a_spec_dtype_gloo_cannot_carry_is_refused_before_allocating(dtype: str) -> None:
    receiver = _refused(_spec_wire("latents", dtype=dtype), "UNSUPPORTED_DTYPE", "'latents'")
    assert len(receiver.allocated) == 2, "header and meta only"


@pytest.mark.parametrize("shape", [[1 << 27, 8], [2**31, 2**31], [2**62], [1] * 9, [3000, 3000]],
                         ids=["8GiB", "2^62-elements", "2^62", "9-dims", "72MB"])
def test_a_spec_shape_over_the_cap_is_refused_before_allocating(shape: list[int]) -> None:
    receiver = _refused(_spec_wire("latents", shape=shape), "ENVELOPE_VIOLATION", "'latents'")
    assert sum(receiver.allocated) <= HEADER_AND_LENGTH + DEFAULT_MAX_META_BYTES


def test_the_cap_is_on_the_sum_of_the_envelopes_tensors() -> None:
    wire = _wire()
    sizes = [t.numel() * t.element_size() for t in wire[2:]]
    limits = Limits(max_envelope_bytes=sum(sizes) - 1)
    _refused(_wire(), "ENVELOPE_VIOLATION", f"exceed {sum(sizes) - 1} bytes (TP_MAX_ENVELOPE_BYTES)", limits=limits)
    assert _recv(_wire(), Limits(max_envelope_bytes=sum(sizes)))[1] is None


def test_the_legacy_side_channel_counts_and_must_be_a_bool() -> None:
    wire = _wire()
    meta, total = _meta_of(wire), sum(t.numel() * t.element_size() for t in wire[2:])
    limits = Limits(max_envelope_bytes=total + 48 * 8 * 8 - 1)  # aux is sized like latents
    for value, says in ((1, "must be bool, got int"), (True, "side channel exceed")):
        data = json.dumps({**meta, "has_aux": value}, sort_keys=True, separators=(",", ":")).encode()
        _refused(_with_meta(data), "ENVELOPE_VIOLATION", says, limits=limits)


# -- the sender holds itself to what receivers accept ---------------------------------------

@pytest.mark.parametrize(("meta", "says"), [
    ({"s": "\ud800"}, "lone surrogate"),
    ({"n": 2**63}, "does not fit int64"),
    ({"deep": [[[[[[[[[1]]]]]]]]]}, f"nested deeper than {MAX_META_DEPTH} levels"),
], ids=["surrogate", "int64", "depth"])
def test_encode_refuses_what_decode_would_refuse(meta: dict, says: str) -> None:
    with pytest.raises(EnvelopeError) as info:
        encode_meta(meta)
    assert info.value.code == "META_UNSERIALIZABLE" and says in str(info.value)


def test_preflight_refuses_an_envelope_over_the_cap_before_the_header() -> None:
    sender = WireTransport(guards="all", limits=Limits(max_envelope_bytes=1000))
    with pytest.raises(EnvelopeError, match="TP_MAX_ENVELOPE_BYTES"):
        sender.send(*_send_args())
    assert sender.sent == [] and not sender.header_sent


def _send_args():
    from tp.envelope import Action, Header

    meta = {k: v for k, v in _meta_of(_wire()).items() if k != "tensor_specs"}
    tensors = {"conditioning_embeds": torch.zeros(8, 64, dtype=torch.float64),
               "denoising_step_list": torch.tensor([1000, 750, 500, 250][: meta["tp_num_denoise_steps"]]),
               "latents": torch.zeros(48, 8, dtype=torch.float64)}
    if meta["tp_do_kv_recompute"]:
        tensors["context_frames_override"] = torch.zeros(48, 8, dtype=torch.float64)
    return Header(action=Action.INFER, call_id=1, chunk_index=1), meta, tensors, None


# -- the fuzzer, short: every input refused with a contract code or accepted and valid --------

def test_fuzzed_envelopes_are_refused_with_a_contract_code_or_accepted_and_valid() -> None:
    tally = fuzz(examples=1500, seed=int(os.environ.get("TP_FUZZ_SEED", "13")))
    assert tally.findings == [], "\n".join(tally.findings[:10])
    assert set(tally.refused) <= set(codes.CODES) and tally.accepted > 0
    assert tally.refused["ENVELOPE_VIOLATION"] > tally.examples // 2  # the mutations reach the decoder


# -- configuration ----------------------------------------------------------------------------

_RANK_ENV = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_caps_default_and_come_from_env() -> None:
    cfg = from_env(_RANK_ENV)
    assert (cfg.max_meta_bytes, cfg.max_envelope_bytes) == (DEFAULT_MAX_META_BYTES, DEFAULT_MAX_ENVELOPE_BYTES)
    cfg = from_env({**_RANK_ENV, "TP_MAX_META_BYTES": "4096", "TP_MAX_ENVELOPE_BYTES": "100000"})
    assert (cfg.max_meta_bytes, cfg.max_envelope_bytes) == (4096, 100000)


@pytest.mark.parametrize("name", ["TP_MAX_META_BYTES", "TP_MAX_ENVELOPE_BYTES"])
@pytest.mark.parametrize("raw", ["0", "-1", "1e6", "lots"])
def test_a_bad_cap_is_a_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid {name} '{raw}': expected an integer >= 1"):
        from_env({**_RANK_ENV, name: raw})


def test_a_real_worker_refuses_an_envelope_over_its_cap_with_envelope_violation() -> None:
    # The legacy send order (preflight off) does not check the cap, so the worker's decoder is what refuses.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_") and k not in _RANK_ENV}
    env |= {"OMP_NUM_THREADS": "1", "TP_MAX_ENVELOPE_BYTES": "4000",
            "TP_GUARDRAILS": "all,-preflight,-poison_on_post_header_error"}
    proc = subprocess.run([sys.executable, "-m", "tp", "--world-size", "2", "--chunks", "2"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "[r1] TP-FATAL fm=FM-08 code=ENVELOPE_VIOLATION rank=1" in proc.stderr, proc.stderr[-3000:]
    assert "(TP_MAX_ENVELOPE_BYTES)" in proc.stderr and proc.returncode != 0
