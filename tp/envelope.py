"""Envelope v1: header (fixed int64 tensor) -> meta (canonical JSON bytes) -> tensors.

Receivers allocate from ``tensor_specs`` only, never from local guesses.
Meta is stable canonical JSON, never pickle: a worker must not execute what
it is sent. ``preflight`` does everything that can throw *before* the header.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from dataclasses import dataclass, field

import torch

from tp import ENVELOPE_VERSION, KNOWN_PLANS
from tp.config import DEFAULT_MAX_ENVELOPE_BYTES, DEFAULT_MAX_META_BYTES
from tp.devhash import device_digest, on_device
from tp.dtypes import UnsupportedDtype, dtype_from_name, dtype_name, wire_check

MAGIC = 0x7470_656E_7631  # "tpenv1"
# Slots 4 and 7 are reserved: zero on the wire, refused otherwise, so a sender that means something by them
# (a newer layout) is caught at the header rather than misread.
HEADER_FIELDS = ("magic", "action", "call_id", "chunk_index", "reserved", "cache_epoch", "meta_nbytes", "reserved")
RESERVED_SLOTS = tuple(i for i, name in enumerate(HEADER_FIELDS) if name == "reserved")
HEADER_LEN = len(HEADER_FIELDS)

REQUIRED_META = {
    "tp_plan": str, "tp_envelope_version": int, "height": int, "width": int,
    "current_start_frame": int, "init_cache": bool, "manage_cache": bool,
    "tp_reset_kv_cache": bool, "tp_reset_crossattn_cache": bool, "tp_do_kv_recompute": bool,
    "tp_num_denoise_steps": int, "tp_expected_generator_calls": int,
    "kv_cache_attention_bias": float, "base_seed": int,
}
NON_NEGATIVE_META = ("height", "width", "current_start_frame", "tp_num_denoise_steps", "tp_expected_generator_calls")
REQUIRED_TENSORS = ("conditioning_embeds", "denoising_step_list", "latents")
OPTIONAL_TENSORS = ("context_frames_override",)
LEGACY_META_NBYTES = -1
"""``meta_nbytes`` of the legacy send order: the length follows as its own int64 tensor."""
MAX_META_DEPTH = 8
"""Nesting of objects/lists in meta; the schema needs 4 (meta -> tensor_specs -> spec -> shape)."""
MAX_NDIM = 8
"""Dimensions of one received tensor."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DIGEST_KEYS = ("meta", "conditioning_embeds", "context_frames_override", "denoising_step_list", "latents", "aux", "output")


class Action(enum.IntEnum):
    NOOP = 0
    INFER = 1
    SHUTDOWN = 2


class EnvelopeError(ValueError):
    """A broken envelope; ``code`` is the fatal code it maps to."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What a receiver accepts from the wire before it allocates anything."""

    max_meta_bytes: int = DEFAULT_MAX_META_BYTES
    """Largest meta (canonical JSON bytes) per envelope (``TP_MAX_META_BYTES``)."""
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    """Largest sum of tensor bytes per envelope (``TP_MAX_ENVELOPE_BYTES``)."""


@dataclass(kw_only=True)
class Header:
    action: Action
    call_id: int
    chunk_index: int = -1
    cache_epoch: int = 0
    meta_nbytes: int = 0

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor([MAGIC, int(self.action), self.call_id, self.chunk_index, 0,
                             self.cache_epoch, self.meta_nbytes, 0], dtype=torch.int64)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> Header:
        if t.dtype != torch.int64 or t.shape != (HEADER_LEN,):
            raise EnvelopeError("ENVELOPE_VIOLATION", f"header must be {HEADER_LEN} int64, got {t.dtype} {list(t.shape)}")
        v = [int(x) for x in t.cpu().tolist()]
        if v[0] != MAGIC:
            raise EnvelopeError("ENVELOPE_VIOLATION", f"header magic {v[0]:#x} != {MAGIC:#x}: the stream is out of sync")
        try:
            action = Action(v[1])
        except ValueError:
            raise EnvelopeError("ENVELOPE_VIOLATION", f"unknown header action {v[1]}; known: {[a.name for a in Action]}") from None
        for slot in RESERVED_SLOTS:
            if v[slot] != 0:
                raise EnvelopeError("ENVELOPE_VIOLATION", f"header reserved field {slot} is {v[slot]}; expected 0")
        return cls(action=action, call_id=v[2], chunk_index=v[3], cache_epoch=v[5], meta_nbytes=v[6])


def check_meta_nbytes(n: int, *, limits: Limits, legacy_ok: bool = True) -> int:
    """The meta length a header (or the legacy length tensor) announces, refused unless 0 <= n <= the cap."""
    if legacy_ok and n == LEGACY_META_NBYTES:
        return n
    if not 0 <= n <= limits.max_meta_bytes:
        raise EnvelopeError("ENVELOPE_VIOLATION", f"meta_nbytes={n} is outside [0, {limits.max_meta_bytes}] "
                                                  "(TP_MAX_META_BYTES); the receiver allocates nothing for it")
    return n


@dataclass(kw_only=True)
class Envelope:
    header: Header
    meta: dict
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta_bytes: bytes = b""


# -- meta encoding ---------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")


def check_encodable(value: object, path: str = "meta", depth: int = 0) -> None:
    """Scalars and lists only, as the decoder accepts them; the error names the exact path of the bad value."""
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise EnvelopeError("META_UNSERIALIZABLE", f"{path}: int {value} does not fit int64")
        return
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise EnvelopeError("META_UNSERIALIZABLE", f"{path}: string holds a lone surrogate (not valid Unicode)")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EnvelopeError("META_UNSERIALIZABLE", f"{path}: {value} is not encodable (NaN/inf are not canonical JSON)")
        return
    if isinstance(value, (list, tuple, dict)) and depth >= MAX_META_DEPTH:
        raise EnvelopeError("META_UNSERIALIZABLE", f"{path}: nested deeper than {MAX_META_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_encodable(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise EnvelopeError("META_UNSERIALIZABLE", f"{path}: key {key!r} is not a string")
            check_encodable(key, f"{path}: key", depth)
            check_encodable(item, f"{path}[{key!r}]", depth + 1)
        return
    kind = "tensor" if isinstance(value, torch.Tensor) else ("function" if callable(value) else type(value).__name__)
    raise EnvelopeError("META_UNSERIALIZABLE", f"{path}: {kind} is not encodable (meta holds scalars and lists only)")


def encode_meta(meta: dict) -> bytes:
    check_encodable(meta)
    return _canonical(meta)


def _canonical(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode()


def decode_meta(data: bytes, *, limits: Limits | None = None) -> dict:
    """Canonical JSON only: what ``encode_meta`` writes, byte for byte; anything else is ENVELOPE_VIOLATION."""
    limits = limits or Limits()
    if len(data) > limits.max_meta_bytes:
        raise EnvelopeError("ENVELOPE_VIOLATION", f"meta is {len(data)} bytes; the cap is {limits.max_meta_bytes} "
                                                  "(TP_MAX_META_BYTES)")
    _check_depth(data)
    try:
        meta = json.loads(data.decode("ascii"), parse_constant=_reject_constant, parse_float=_finite_float,
                          parse_int=_int64, object_pairs_hook=_unique_keys)
        check_encodable(meta)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EnvelopeError("ENVELOPE_VIOLATION", f"meta is not canonical JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise EnvelopeError("ENVELOPE_VIOLATION", f"meta must be a JSON object, got {type(meta).__name__}")
    if _canonical(meta) != data:
        raise EnvelopeError("ENVELOPE_VIOLATION", "meta is not canonical JSON: expected sorted keys, no whitespace, "
                                                  "shortest number forms and \\u escapes for non-ASCII")
    return meta


def _check_depth(data: bytes) -> None:
    """Bounded nesting, checked on the bytes before the (recursive) parser sees them."""
    depth = 0
    for c in _STRING.sub(b"", data).translate(None, _NOT_BRACKET):
        if c in b"[{":
            depth += 1
            if depth > MAX_META_DEPTH:
                raise EnvelopeError("ENVELOPE_VIOLATION", f"meta nests deeper than {MAX_META_DEPTH} levels")
        else:
            depth -= 1


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not canonical JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is not finite")
    return value


def _int64(text: str) -> int:
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"integer {text[:40]}... does not fit int64")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"integer {text} does not fit int64")
    return value


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        dup = sorted({k for k, _ in pairs if sum(1 for j, _ in pairs if j == k) > 1})
        raise ValueError(f"duplicate key(s) {dup[:5]}")
    return out


# -- specs and validation --------------------------------------------------

def make_specs(tensors: dict[str, torch.Tensor]) -> list[list]:
    return [[key, dtype_name(t.dtype), list(t.shape)] for key, t in sorted(tensors.items())]


def parse_specs(meta: dict, *, backend: str = "gloo", limits: Limits | None = None
                ) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """``tensor_specs`` as the receiver will allocate them: dtypes the backend carries, shapes within the cap."""
    limits = limits or Limits()
    specs = meta.get("tensor_specs")
    if not isinstance(specs, list):
        raise EnvelopeError("ENVELOPE_VIOLATION", "meta['tensor_specs'] is missing or not a list")
    out, total = [], 0
    for spec in specs:
        if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str) and isinstance(spec[1], str)
                and isinstance(spec[2], list)):
            raise EnvelopeError("ENVELOPE_VIOLATION", f"bad tensor spec {_short(spec)}; expected [key, dtype, shape]")
        key, name, shape = spec
        try:
            dtype = dtype_from_name(name if len(name) <= 32 else f"{name[:32]}...")
        except ValueError as exc:
            raise EnvelopeError("UNSUPPORTED_DTYPE", f"tensor {_short(key)}: {exc}") from None
        try:
            wire_check(backend, dtype, field=key[:60])
        except UnsupportedDtype as exc:
            raise EnvelopeError("UNSUPPORTED_DTYPE", str(exc)) from None
        if len(shape) > MAX_NDIM or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise EnvelopeError("ENVELOPE_VIOLATION", f"tensor {_short(key)}: shape {_short(shape)} must be at most "
                                                      f"{MAX_NDIM} non-negative integers")
        total += math.prod(shape) * dtype.itemsize
        if total > limits.max_envelope_bytes:
            raise EnvelopeError("ENVELOPE_VIOLATION", f"tensor {_short(key)} {shape}: the envelope's tensors exceed "
                                                      f"{limits.max_envelope_bytes} bytes (TP_MAX_ENVELOPE_BYTES)")
        out.append((key, dtype, tuple(shape)))
    keys = [s[0] for s in out]
    if keys != sorted(keys) or len(set(keys)) != len(keys):
        raise EnvelopeError("ENVELOPE_VIOLATION", f"tensor_specs must be sorted by key without duplicates, "
                                                  f"got {_short(keys)}")
    return out


def _short(value: object, limit: int = 120) -> str:
    """A wire value in an error message, bounded: the wire decides its size, not the log."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def validate_schema(meta: dict, tensor_keys: set[str]) -> None:
    """Fields present with the right types, tensors exactly the schema's. Both sides run it."""
    for key, kind in REQUIRED_META.items():
        if key not in meta:
            raise EnvelopeError("ENVELOPE_VIOLATION", f"meta[{key!r}] is missing")
        value = meta[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
        if not ok:
            raise EnvelopeError("ENVELOPE_VIOLATION", f"meta[{key!r}] must be {kind.__name__}, got {type(value).__name__}")
    for key in NON_NEGATIVE_META:
        if meta[key] < 0:
            raise EnvelopeError("ENVELOPE_VIOLATION", f"meta[{key!r}]={meta[key]} must be >= 0")
    if meta["tp_envelope_version"] != ENVELOPE_VERSION:
        raise EnvelopeError("PROTOCOL_MISMATCH", f"envelope version {meta['tp_envelope_version']} != {ENVELOPE_VERSION}")
    if meta["tp_plan"] not in KNOWN_PLANS:
        raise EnvelopeError("PLAN_MISMATCH", f"unknown plan {meta['tp_plan']!r}; known: {', '.join(KNOWN_PLANS)}")
    if "video" in tensor_keys or "video" in meta:
        raise EnvelopeError("ENVELOPE_VIOLATION", "'video' must be absent: workers never receive pixels")
    unknown = tensor_keys - set(REQUIRED_TENSORS) - set(OPTIONAL_TENSORS)
    if unknown:
        raise EnvelopeError("ENVELOPE_VIOLATION", f"tensor(s) {sorted(unknown)} are not in the envelope schema; "
                                                  f"allowed: {', '.join(REQUIRED_TENSORS + OPTIONAL_TENSORS)}")
    missing = set(REQUIRED_TENSORS) - tensor_keys
    if missing:
        raise EnvelopeError("ENVELOPE_VIOLATION", f"required tensor(s) {sorted(missing)} are missing")


def validate_override(meta: dict, tensor_keys: set[str]) -> None:
    """``context_frames_override`` is required iff recompute; explicit None otherwise."""
    present = "context_frames_override" in tensor_keys
    marker = meta.get("context_frames_override", "absent")
    if meta["tp_do_kv_recompute"] and not present:
        raise EnvelopeError("MISSING_OVERRIDE", "tp_do_kv_recompute is set but context_frames_override is "
                                                f"{'explicit None' if marker is None else 'absent'}")
    if present != (marker == "tensor"):
        raise EnvelopeError("ENVELOPE_VIOLATION", f"meta['context_frames_override']={marker!r} disagrees with "
                                                  f"tensor_specs ({'present' if present else 'absent'})")


def validate_plan(meta: dict, steps: torch.Tensor | None) -> None:
    """The lockstep invariants: every rank derives the same call count from the plan."""
    n = meta["tp_num_denoise_steps"]
    if steps is not None and n != steps.numel():
        raise EnvelopeError("CALL_COUNT_MISMATCH", f"plan inconsistent: tp_num_denoise_steps={n} but "
                                                   f"denoising_step_list has {steps.numel()} entries")
    expected = n + int(meta["tp_do_kv_recompute"])
    if meta["tp_expected_generator_calls"] != expected:
        raise EnvelopeError("CALL_COUNT_MISMATCH", f"plan inconsistent: tp_expected_generator_calls="
                                                   f"{meta['tp_expected_generator_calls']} but steps + recompute = {expected}")


def materialise(tensors: dict[str, torch.Tensor], *, backend: str, device: torch.device) -> dict[str, torch.Tensor]:
    """Device, contiguous, and a dtype the backend can carry — or UNSUPPORTED_DTYPE now."""
    out = {}
    for key, t in sorted(tensors.items()):
        try:
            wire_check(backend, t.dtype, field=key)
        except UnsupportedDtype as exc:
            raise EnvelopeError("UNSUPPORTED_DTYPE", str(exc)) from None
        out[key] = t.to(device).contiguous()
    return out


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Round to 1e-6: TP changes the summation order, not the answer at this precision."""
    return torch.round(x.detach().double().cpu() * 1e6).to(torch.int64)


def lazy_digest(t: torch.Tensor | bytes | None) -> int | torch.Tensor:
    """``digest(t)``, except that a CUDA tensor is hashed on its device and the value stays there (a 0-d
    int64 tensor), so a chunk's digests cost one device-to-host copy together (``tp.devhash``)."""
    return device_digest(t) if on_device(t) else digest(t)


def digest(t: torch.Tensor | bytes | None) -> int:
    """A signed 63-bit digest, exchangeable as one int64."""
    if t is None:
        return 0
    data = t if isinstance(t, bytes) else t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
