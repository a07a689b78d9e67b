"""Envelope v1 in isolation: header, canonical meta, specs, every invariant, dtype table, digest."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from tp import ENVELOPE_VERSION, KNOWN_PLANS, PLAN
from tp.dtypes import SUPPORTED, dtype_name
from tp.envelope import (
    HEADER_FIELDS,
    HEADER_LEN,
    MAGIC,
    OPTIONAL_TENSORS,
    REQUIRED_META,
    REQUIRED_TENSORS,
    Action,
    EnvelopeError,
    Header,
    decode_meta,
    digest,
    encode_meta,
    make_specs,
    materialise,
    parse_specs,
    validate_override,
    validate_plan,
    validate_schema,
)


def _meta(**overrides: object) -> dict:
    """A meta dict that passes every check, shaped like the driver's (a recompute chunk)."""
    meta = {
        "tp_plan": PLAN, "tp_envelope_version": ENVELOPE_VERSION, "height": 16, "width": 16,
        "current_start_frame": 3, "init_cache": False, "manage_cache": True,
        "tp_reset_kv_cache": False, "tp_reset_crossattn_cache": False, "tp_do_kv_recompute": True,
        "tp_num_denoise_steps": 4, "tp_expected_generator_calls": 5,
        "kv_cache_attention_bias": 0.0, "base_seed": 20261125,
        "context_frames_override": "tensor",
    }
    meta.update(overrides)
    return meta


def _tensors() -> dict[str, torch.Tensor]:
    return {
        "conditioning_embeds": torch.randn(8, 64, dtype=torch.float64),
        "context_frames_override": torch.randn(48, 8, dtype=torch.float64),
        "denoising_step_list": torch.tensor([1000, 750, 500, 250]),
        "latents": torch.randn(48, 8, dtype=torch.float64),
    }


def _raises(code: str, fn, *args, **kwargs) -> str:
    with pytest.raises(EnvelopeError) as info:
        fn(*args, **kwargs)
    assert info.value.code == code, f"expected {code}, got {info.value.code}: {info.value}"
    return str(info.value)


# -- header ------------------------------------------------------------------

@pytest.mark.parametrize("action", list(Action))
def test_header_round_trips_through_its_int64_tensor(action: Action) -> None:
    header = Header(action=action, call_id=41, chunk_index=7, cache_epoch=3, meta_nbytes=512)
    t = header.to_tensor()
    assert t.dtype == torch.int64 and t.shape == (HEADER_LEN,) == (len(HEADER_FIELDS),)
    assert int(t[0]) == MAGIC and int(t[-1]) == 0
    assert Header.from_tensor(t) == header


def test_header_defaults_survive_the_round_trip() -> None:
    header = Header(action=Action.SHUTDOWN, call_id=0)
    assert Header.from_tensor(header.to_tensor()) == header


def test_header_with_bad_magic_is_an_envelope_violation() -> None:
    t = Header(action=Action.INFER, call_id=1).to_tensor()
    t[0] = 12345
    message = _raises("ENVELOPE_VIOLATION", Header.from_tensor, t)
    assert "magic 0x3039" in message and "out of sync" in message


def test_header_with_unknown_action_is_an_envelope_violation_listing_the_known_ones() -> None:
    t = Header(action=Action.INFER, call_id=1).to_tensor()
    t[1] = 9
    message = _raises("ENVELOPE_VIOLATION", Header.from_tensor, t)
    assert "unknown header action 9" in message
    assert all(a.name in message for a in Action)


# -- meta: canonical JSON ------------------------------------------------------

def test_meta_round_trips() -> None:
    meta = _meta(nested={"b": [1, 2.5, None, True], "a": "x"})
    assert decode_meta(encode_meta(meta)) == meta


def test_meta_encoding_is_canonical_whatever_the_insertion_order() -> None:
    forward = {"b": 1, "a": {"z": 1.5, "y": [3, "s"]}, "c": None}
    backward = {"c": None, "a": {"y": [3, "s"], "z": 1.5}, "b": 1}
    data = encode_meta(forward)
    assert data == encode_meta(backward)
    assert data == b'{"a":{"y":[3,"s"],"z":1.5},"b":1,"c":null}'
    assert encode_meta(decode_meta(data)) == data


def test_meta_encoding_is_ascii_only() -> None:
    data = encode_meta({"prompt": "f\u00fcchse im schnee"})
    assert data.isascii() and decode_meta(data) == {"prompt": "f\u00fcchse im schnee"}


@pytest.mark.parametrize(("meta", "path", "kind"), [
    ({"callback": lambda: None}, "meta['callback']", "function"),
    ({"bad_tensor": torch.zeros(1)}, "meta['bad_tensor']", "tensor"),
    ({"steps": [1, 2, torch.ones(2)]}, "meta['steps'][2]", "tensor"),
    ({"outer": {"inner": print}}, "meta['outer']['inner']", "function"),
    ({"opts": {1, 2}}, "meta['opts']", "set"),
    ({"raw": b"bytes"}, "meta['raw']", "bytes"),
], ids=["callable", "tensor", "tensor-in-list", "nested-callable", "set", "bytes"])
def test_unencodable_meta_names_the_exact_path(meta: dict, path: str, kind: str) -> None:
    message = _raises("META_UNSERIALIZABLE", encode_meta, _meta(**meta))
    assert message.startswith(f"{path}: {kind} is not encodable"), message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_floats_are_rejected_with_their_path(value: float) -> None:
    message = _raises("META_UNSERIALIZABLE", encode_meta, _meta(kv_cache_attention_bias=value))
    assert message.startswith(f"meta['kv_cache_attention_bias']: {value} is not encodable")
    message = _raises("META_UNSERIALIZABLE", encode_meta, {"a": [0.0, {"b": value}]})
    assert message.startswith("meta['a'][1]['b']:")


@pytest.mark.parametrize(("meta", "path"), [
    ({1: "x"}, "meta"),
    ({"cfg": {("a", 1): 2}}, "meta['cfg']"),
], ids=["top-level", "nested"])
def test_non_string_keys_are_rejected(meta: dict, path: str) -> None:
    message = _raises("META_UNSERIALIZABLE", encode_meta, meta)
    assert message.startswith(f"{path}: key ") and "is not a string" in message


@pytest.mark.parametrize(("data", "why"), [
    (b"{not json", "not canonical JSON"),
    (b'{"x": NaN}', "NaN is not canonical JSON"),
    (b'{"x": Infinity}', "Infinity is not canonical JSON"),
    (b'{"x": -Infinity}', "-Infinity is not canonical JSON"),
    (b"\xff\xfe", "not canonical JSON"),
    (b"", "not canonical JSON"),
], ids=["garbage", "nan", "inf", "-inf", "not-ascii", "empty"])
def test_decode_rejects_what_is_not_canonical_json(data: bytes, why: str) -> None:
    assert why in _raises("ENVELOPE_VIOLATION", decode_meta, data)


@pytest.mark.parametrize(("data", "kind"), [(b"[1,2]", "list"), (b'"s"', "str"), (b"3", "int"), (b"null", "NoneType")])
def test_decode_rejects_a_non_object(data: bytes, kind: str) -> None:
    assert f"must be a JSON object, got {kind}" in _raises("ENVELOPE_VIOLATION", decode_meta, data)


# -- tensor specs --------------------------------------------------------------

def test_specs_round_trip_and_receivers_can_allocate_from_them_alone() -> None:
    tensors = _tensors()
    specs = make_specs(tensors)
    assert [s[0] for s in specs] == sorted(tensors)
    meta = decode_meta(encode_meta(_meta(tensor_specs=specs)))
    parsed = parse_specs(meta)
    assert [(k, d, s) for k, d, s in parsed] == [(k, t.dtype, tuple(t.shape)) for k, t in sorted(tensors.items())]
    for key, dtype, shape in parsed:
        empty = torch.empty(shape, dtype=dtype)
        assert empty.dtype == tensors[key].dtype and empty.shape == tensors[key].shape


def test_unsorted_specs_are_rejected() -> None:
    specs = list(reversed(make_specs(_tensors())))
    assert "sorted by key" in _raises("ENVELOPE_VIOLATION", parse_specs, {"tensor_specs": specs})


def test_duplicate_specs_are_rejected() -> None:
    specs = make_specs({"latents": torch.zeros(2)})
    assert "without duplicates" in _raises("ENVELOPE_VIOLATION", parse_specs, {"tensor_specs": specs * 2})


def test_unknown_dtype_name_is_unsupported_dtype_naming_the_tensor() -> None:
    message = _raises("UNSUPPORTED_DTYPE", parse_specs, {"tensor_specs": [["latents", "float", [2, 3]]]})
    assert message.startswith("tensor 'latents': unknown dtype name 'float'")


@pytest.mark.parametrize("specs", [None, "latents", {"latents": 1}], ids=["missing", "str", "dict"])
def test_specs_missing_or_not_a_list(specs: object) -> None:
    meta = {} if specs is None else {"tensor_specs": specs}
    assert "tensor_specs'] is missing or not a list" in _raises("ENVELOPE_VIOLATION", parse_specs, meta)


@pytest.mark.parametrize("spec", [
    ["latents", "float64"], ["latents", "float64", 3], [1, "float64", [3]], "latents",
], ids=["short", "shape-not-list", "key-not-str", "not-a-list"])
def test_malformed_spec_entries_are_rejected(spec: object) -> None:
    assert "expected [key, dtype, shape]" in _raises("ENVELOPE_VIOLATION", parse_specs, {"tensor_specs": [spec]})


@pytest.mark.parametrize("shape", [["x"], [-1], [None]], ids=["str-dim", "negative-dim", "null-dim"])
def test_malformed_spec_shape_is_an_envelope_violation(shape: list) -> None:
    # A receiver allocates from the spec: a bad dimension must be refused as a broken envelope,
    # not escape as a ValueError/TypeError (INTERNAL_ERROR) or fail inside torch.empty later.
    _raises("ENVELOPE_VIOLATION", parse_specs, {"tensor_specs": [["latents", "float64", shape]]})


# -- validate_schema -----------------------------------------------------------

def test_a_complete_envelope_passes_every_check() -> None:
    meta, tensors = _meta(), _tensors()
    validate_schema(meta, set(tensors))
    validate_override(meta, set(tensors))
    validate_plan(meta, tensors["denoising_step_list"])


@pytest.mark.parametrize("key", list(REQUIRED_META))
def test_each_missing_required_field_is_named(key: str) -> None:
    meta = _meta()
    del meta[key]
    assert _raises("ENVELOPE_VIOLATION", validate_schema, meta, set(_tensors())) == f"meta[{key!r}] is missing"


_WRONG = {str: [1, None], int: ["1", True, 1.0], bool: [1, "true", None], float: ["0.0", True, None]}


@pytest.mark.parametrize(("key", "bad"), [(k, v) for k, kind in REQUIRED_META.items() for v in _WRONG[kind]],
                         ids=lambda x: repr(x) if not isinstance(x, str) else x)
def test_each_wrong_type_is_named_with_expected_and_actual(key: str, bad: object) -> None:
    message = _raises("ENVELOPE_VIOLATION", validate_schema, _meta(**{key: bad}), set(_tensors()))
    assert message == f"meta[{key!r}] must be {REQUIRED_META[key].__name__}, got {type(bad).__name__}"


def test_an_int_is_accepted_where_a_float_is_required() -> None:
    validate_schema(_meta(kv_cache_attention_bias=0), set(_tensors()))


def test_unknown_tensor_is_rejected_listing_the_schema() -> None:
    message = _raises("ENVELOPE_VIOLATION", validate_schema, _meta(), set(_tensors()) | {"aux"})
    assert "['aux'] are not in the envelope schema" in message
    assert all(name in message for name in REQUIRED_TENSORS + OPTIONAL_TENSORS)


@pytest.mark.parametrize("where", ["tensor", "meta"])
def test_video_must_be_absent(where: str) -> None:
    meta, keys = _meta(), set(_tensors())
    if where == "tensor":
        keys.add("video")
    else:
        meta["video"] = [1, 2]
    assert "'video' must be absent" in _raises("ENVELOPE_VIOLATION", validate_schema, meta, keys)


@pytest.mark.parametrize("key", REQUIRED_TENSORS)
def test_missing_required_tensor_is_named(key: str) -> None:
    keys = set(_tensors()) - {key}
    assert f"required tensor(s) [{key!r}] are missing" in _raises("ENVELOPE_VIOLATION", validate_schema, _meta(), keys)


def test_unknown_plan_is_a_plan_mismatch_listing_known_plans() -> None:
    message = _raises("PLAN_MISMATCH", validate_schema, _meta(tp_plan="v2_everything"), set(_tensors()))
    assert "unknown plan 'v2_everything'" in message and all(p in message for p in KNOWN_PLANS)


def test_wrong_envelope_version_is_a_protocol_mismatch() -> None:
    message = _raises("PROTOCOL_MISMATCH", validate_schema, _meta(tp_envelope_version=2), set(_tensors()))
    assert message == f"envelope version 2 != {ENVELOPE_VERSION}"


# -- validate_override ---------------------------------------------------------

def test_recompute_without_override_says_absent() -> None:
    meta = _meta()
    del meta["context_frames_override"]
    keys = set(_tensors()) - {"context_frames_override"}
    message = _raises("MISSING_OVERRIDE", validate_override, meta, keys)
    assert message.endswith("context_frames_override is absent")


def test_recompute_with_explicit_none_override_says_so() -> None:
    keys = set(_tensors()) - {"context_frames_override"}
    message = _raises("MISSING_OVERRIDE", validate_override, _meta(context_frames_override=None), keys)
    assert message.endswith("context_frames_override is explicit None")


def test_no_recompute_and_no_override_is_fine() -> None:
    keys = set(_tensors()) - {"context_frames_override"}
    validate_override(_meta(tp_do_kv_recompute=False, context_frames_override=None), keys)


@pytest.mark.parametrize(("marker", "present", "says"), [
    (None, True, "None disagrees with tensor_specs (present)"),
    ("tensor", False, "'tensor' disagrees with tensor_specs (absent)"),
])
def test_marker_and_specs_must_agree(marker: object, present: bool, says: str) -> None:
    keys = set(_tensors()) if present else set(_tensors()) - {"context_frames_override"}
    meta = _meta(tp_do_kv_recompute=False, context_frames_override=marker)
    assert says in _raises("ENVELOPE_VIOLATION", validate_override, meta, keys)


# -- validate_plan -------------------------------------------------------------

def test_step_count_must_match_the_step_list() -> None:
    message = _raises("CALL_COUNT_MISMATCH", validate_plan, _meta(tp_num_denoise_steps=3), torch.tensor([1000, 750, 500, 250]))
    assert "tp_num_denoise_steps=3 but denoising_step_list has 4 entries" in message


@pytest.mark.parametrize(("recompute", "expected", "sum_"), [(True, 4, 5), (False, 5, 4), (True, 6, 5)])
def test_expected_calls_must_be_steps_plus_recompute(recompute: bool, expected: int, sum_: int) -> None:
    meta = _meta(tp_do_kv_recompute=recompute, tp_expected_generator_calls=expected)
    message = _raises("CALL_COUNT_MISMATCH", validate_plan, meta, torch.tensor([1000, 750, 500, 250]))
    assert f"tp_expected_generator_calls={expected} but steps + recompute = {sum_}" in message


def test_plan_is_checked_without_a_step_list_too() -> None:
    validate_plan(_meta(tp_do_kv_recompute=False, tp_expected_generator_calls=4), None)
    _raises("CALL_COUNT_MISMATCH", validate_plan, _meta(tp_expected_generator_calls=4), None)


# -- materialise and the dtype table ---------------------------------------------

def test_materialise_rejects_uint16_on_gloo_naming_the_field() -> None:
    tensors = {**_tensors(), "latents": torch.zeros(4, 2, dtype=torch.uint16)}
    message = _raises("UNSUPPORTED_DTYPE", materialise, tensors, backend="gloo", device=torch.device("cpu"))
    assert message.startswith("tensor 'latents': dtype torch.uint16 cannot travel on gloo; supported:")
    assert "float64" in message


def test_materialise_makes_tensors_contiguous_and_keeps_values() -> None:
    strided = torch.arange(12, dtype=torch.float64).reshape(3, 4).t()
    assert not strided.is_contiguous()
    out = materialise({"latents": strided}, backend="gloo", device=torch.device("cpu"))
    assert out["latents"].is_contiguous() and torch.equal(out["latents"], strided)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", sorted(SUPPORTED["gloo"], key=str), ids=str)
def test_every_gloo_dtype_materialises_and_round_trips_through_specs(dtype: torch.dtype) -> None:
    t = torch.zeros(2, 3).to(dtype)
    out = materialise({"latents": t}, backend="gloo", device=torch.device("cpu"))
    (key, got, shape), = parse_specs({"tensor_specs": make_specs(out)})
    assert (key, got, shape) == ("latents", dtype, (2, 3))
    assert dtype_name(got) == str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint32, torch.float8_e4m3fn], ids=str)
def test_dtypes_gloo_cannot_carry_are_refused_before_the_wire(dtype: torch.dtype) -> None:
    _raises("UNSUPPORTED_DTYPE", materialise, {"latents": torch.zeros(2).to(dtype)}, backend="gloo",
            device=torch.device("cpu"))


# -- digest --------------------------------------------------------------------

def test_digest_is_blake2b_of_the_bytes_as_a_non_negative_int64() -> None:
    t = torch.arange(6, dtype=torch.float64)
    want = int.from_bytes(hashlib.blake2b(t.numpy().tobytes(), digest_size=8).digest(), "little") >> 1
    assert digest(t) == want == digest(t.clone()) == digest(t.numpy().tobytes())
    assert 0 <= want < 2 ** 63
    torch.tensor([want], dtype=torch.int64)  # exchangeable as one int64


def test_digest_ignores_layout_but_not_values_or_dtype() -> None:
    t = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    assert digest(t.t().contiguous()) == digest(t.t().clone(memory_format=torch.contiguous_format))
    bumped = t.clone()
    bumped[1, 1] = torch.nextafter(bumped[1, 1], torch.tensor(math.inf, dtype=torch.float64))
    assert digest(bumped) != digest(t)
    assert digest(t.float()) != digest(t)
    assert digest(None) == 0


def test_meta_digest_is_stable_for_equal_meta() -> None:
    a = _meta(extra={"x": 1, "y": 2})
    b = json.loads(json.dumps(a))
    b["extra"] = {"y": 2, "x": 1}
    assert digest(encode_meta(a)) == digest(encode_meta(b))
