"""Fuzz the envelope decoder: mutate real encoded envelopes, feed them to the real ``Transport.recv``.

Every input must end in exactly one of two ways: ``EnvelopeError`` (a contract
code, so a real rank exits with TP-FATAL), or accepted and valid (canonical
meta within the caps, tensors the backend can carry, the schema holds). Any
other exception, or a receive buffer larger than the caps, is a finding.

The wire is a list of tensors as the real sender broadcasts them (captured
from ``Transport.send`` itself); the receiver's ``_bcast`` copies the next one
into the buffer it allocated, after recording the buffer's size. Seeded, so a
finding replays: ``python -m tools.fuzz_envelope --examples 20000 --seed 1``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from tp import ENVELOPE_VERSION, PLAN
from tp.dtypes import DTYPE_NAMES, SUPPORTED
from tp.envelope import (
    REQUIRED_META,
    Action,
    EnvelopeError,
    Header,
    Limits,
    decode_meta,
    encode_meta,
    parse_specs,
    validate_schema,
)
from tp.guardrails import parse as parse_guardrails
from tp.transport import Transport

INT64 = (-(2**63), -(2**62), -2**31, -2, -1, 0, 1, 2, 3, 255, 2**31, 2**32, 2**62, 2**63 - 1)
HEADER_AND_LENGTH = 8 * 8 + 8
"""The fixed-size buffers a receiver may allocate besides meta and tensors."""
LIMITS = (Limits(), Limits(max_meta_bytes=1 << 20, max_envelope_bytes=1 << 20),
          Limits(max_meta_bytes=600, max_envelope_bytes=4096))


class OverCap(Exception):
    """The receiver allocated a buffer larger than the caps allow."""


class WireTransport(Transport):
    """A transport whose broadcasts are a recorded (send) or scripted (receive) wire."""

    def __init__(self, *, guards: str, limits: Limits, wire: list[torch.Tensor] | None = None) -> None:
        super().__init__(rank=0 if wire is None else 1, src=0, backend="gloo", device=torch.device("cpu"),
                         guards=parse_guardrails(guards), model_dtype=torch.float64,
                         ctx={"rank": 1, "chunk": -1, "call_id": -1}, limits=limits)
        self.sent: list[torch.Tensor] = []
        self.wire = list(wire or [])
        self.allocated: list[int] = []

    def _bcast(self, t: torch.Tensor, site: str = "") -> torch.Tensor:
        if self.rank == 0:
            self.sent.append(t.detach().clone())
            return t
        nbytes = t.numel() * t.element_size()
        self.allocated.append(nbytes)
        if sum(self.allocated) > HEADER_AND_LENGTH + self.limits.max_meta_bytes + self.limits.max_envelope_bytes:
            raise OverCap(f"receive buffers total {sum(self.allocated)} bytes, last {t.dtype} {list(t.shape)}")
        if self.wire:
            src = self.wire.pop(0).reshape(-1).view(torch.uint8)
            dst = t.reshape(-1).view(torch.uint8)
            n = min(src.numel(), dst.numel())
            dst[:n] = src[:n]  # gloo accepts a shorter message and leaves the rest as it was:
            dst[n:] = 0  # uninitialised memory, zeroed here so that a seed replays
        return t


def valid_wire(rng: random.Random, *, legacy: bool) -> list[torch.Tensor]:
    """What the real driver broadcasts for one INFER envelope (preflight on, or the legacy order)."""
    recompute = rng.random() < 0.7
    steps = [1000, 750, 500, 250][: rng.randint(1, 4)]
    meta = {
        "tp_plan": PLAN, "tp_envelope_version": ENVELOPE_VERSION, "height": 16, "width": 16,
        "current_start_frame": 3 * rng.randint(1, 9), "init_cache": False, "manage_cache": True,
        "tp_reset_kv_cache": False, "tp_reset_crossattn_cache": False, "tp_do_kv_recompute": recompute,
        "tp_num_denoise_steps": len(steps), "tp_expected_generator_calls": len(steps) + int(recompute),
        "kv_cache_attention_bias": rng.choice([0.0, 0.5, -1.25]), "base_seed": rng.randint(0, 2**31),
        "context_frames_override": "tensor" if recompute else None,
    }
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    tensors = {"conditioning_embeds": torch.randn(8, 64, dtype=torch.float64, generator=gen),
               "denoising_step_list": torch.tensor(steps),
               "latents": torch.randn(48, 8, dtype=torch.float64, generator=gen)}
    if recompute:
        tensors["context_frames_override"] = torch.randn(48, 8, dtype=torch.float64, generator=gen)
    sender = WireTransport(guards="all,-preflight" if legacy else "all", limits=Limits())
    sender.send(Header(action=Action.INFER, call_id=rng.randint(0, 99), chunk_index=1), meta,
                tensors, None)
    return sender.sent


# -- mutations -----------------------------------------------------------------

def _header(rng: random.Random, wire: list[torch.Tensor]) -> None:
    h = wire[0].clone()
    h[rng.randrange(h.numel())] = rng.choice([*INT64, rng.randint(-(2**63), 2**63 - 1)])
    wire[0] = h


def _meta_index(wire: list[torch.Tensor]) -> int:
    return 2 if int(wire[0][6]) == -1 else 1


def _set_meta(wire: list[torch.Tensor], data: bytes, *, fix_length: bool) -> None:
    i = _meta_index(wire)
    wire[i] = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    if fix_length:
        if i == 2:
            wire[1] = torch.tensor([len(data)])
        else:
            wire[0] = wire[0].clone()
            wire[0][6] = len(data)


def _meta_bytes(wire: list[torch.Tensor]) -> bytes:
    return wire[_meta_index(wire)].numpy().tobytes()


def _text_mutation(rng: random.Random, data: bytes) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:  # truncation
        return data[: rng.randrange(len(data) + 1)]
    if kind == 1:  # nesting
        depth = rng.choice([7, 9, 100, 5000, 100_000])
        return data[:-1] + b',"deep":' + b"[" * depth + b"1" + b"]" * depth + b"}"
    if kind == 2:  # duplicate key
        return b'{"height":16,' + data[1:]
    if kind == 3:  # lone surrogate / escapes
        return data.replace(PLAN.encode(), rng.choice([b"\\ud800", b"\\udfff" + PLAN.encode(), b"\\u0041"]), 1)
    if kind == 4:  # huge or non-finite numbers
        value = rng.choice([b"1e999", b"-1e999", b"1" + b"0" * 30, b"9223372036854775808", b"NaN", b"Infinity",
                            b"1" * 5000, b"1E2", b"-0", b"0.10"])
        return data.replace(b'"base_seed":', b'"base_seed":' + value + b',"x":', 1)
    if kind == 5:  # whitespace / key order
        return rng.choice([data.replace(b",", b", ", 1), b" " + data, data.replace(b'{"base_seed"', b'{"zz":1,"base_seed"')])
    if kind == 6:  # byte flip
        b = bytearray(data)
        if b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if kind == 7:
        return rng.choice([b"", b"[]", b"null", b'"x"', b"{}", b"\xff\xfe{}"])
    return data + rng.choice([b"", b" ", b"}", b"\x00"])


_BAD_VALUES = (None, True, False, -1, 0, 2**63 - 1, -(2**63), 1.5, "x", [], {}, [1, [2]], "\u00e9")


def _struct_mutation(rng: random.Random, meta: dict) -> dict:
    meta = json.loads(json.dumps(meta))
    specs = meta.get("tensor_specs")
    specs = specs if isinstance(specs, list) and all(isinstance(s, list) and s for s in specs) else []
    kind = rng.randrange(6)
    if kind == 0 and specs:  # dtypes, including ones no backend carries
        rng.choice(specs)[1] = rng.choice([*DTYPE_NAMES, "float", "qint8", "", 3, None, ["float64"], "x" * 200])
    elif kind == 1 and specs:  # shapes
        spec = rng.choice(specs)
        spec[2] = rng.choice([[2**31, 2**31], [2**62], [2**63 - 1, 0], [-1], [1.5], [True], ["3"], [1] * 9,
                              [1] * 70, [0, 2**62], [1 << 20, 8], [3000, 3000], [], None, 7])
    elif kind == 2 and specs:  # spec structure: keys, order, duplicates
        choice = rng.randrange(5)
        if choice == 0:
            specs.reverse()
        elif choice == 1:
            specs.append(list(specs[0]))
        elif choice == 2:
            rng.choice(specs)[0] = rng.choice(["aux", "video", "", "latents", "zz"])
        elif choice == 3:
            rng.choice(specs).append(1)
        else:
            specs.pop(rng.randrange(len(specs)))
    elif kind == 3:  # wrong types in required fields
        meta[rng.choice(list(REQUIRED_META))] = rng.choice(_BAD_VALUES)
    elif kind == 4:  # the legacy side channel and odd fields
        meta[rng.choice(["has_aux", "video", "context_frames_override", "tensor_specs"])] = rng.choice(_BAD_VALUES)
    elif meta:
        meta.pop(rng.choice(sorted(meta)))
    return meta


def mutate(rng: random.Random, wire: list[torch.Tensor]) -> list[torch.Tensor]:
    wire = list(wire)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        what = rng.randrange(4)
        if what == 0:
            _header(rng, wire)
        elif what == 1:
            _set_meta(wire, _text_mutation(rng, _meta_bytes(wire)), fix_length=rng.random() < 0.9)
        else:
            try:
                meta = decode_meta(_meta_bytes(wire), limits=LIMITS[1])
            except Exception:  # noqa: BLE001 - the generator only mutates what still parses
                continue
            mutated = _struct_mutation(rng, meta)
            data = json.dumps(mutated, sort_keys=True, separators=(",", ":")).encode()
            _set_meta(wire, data, fix_length=rng.random() < 0.95)
    return wire


# -- the oracle ----------------------------------------------------------------

@dataclass(kw_only=True)
class Tally:
    examples: int = 0
    accepted: int = 0
    refused: Counter = field(default_factory=Counter)
    findings: list[str] = field(default_factory=list)
    finding_kinds: Counter = field(default_factory=Counter)
    max_alloc: int = 0

    def as_dict(self, seconds: float) -> dict:
        return {"examples": self.examples, "accepted": self.accepted, "refused": dict(self.refused),
                "findings": len(self.findings), "finding_kinds": dict(self.finding_kinds),
                "first_findings": self.findings[:10],
                "max_receive_buffer_bytes": self.max_alloc, "seconds": round(seconds, 2)}


def _check_accepted(env, limits: Limits) -> None:
    """Accepted means valid: what the decoder let through satisfies every rule it claims to enforce."""
    if len(env.meta_bytes) > limits.max_meta_bytes or encode_meta(env.meta) != env.meta_bytes:
        raise AssertionError("accepted meta is not canonical or over the cap")
    specs = parse_specs(env.meta, backend="gloo", limits=limits)
    total = sum(t.numel() * t.element_size() for t in env.tensors.values())
    if total > limits.max_envelope_bytes or any(t.dtype not in SUPPORTED["gloo"] for t in env.tensors.values()):
        raise AssertionError(f"accepted tensors over the cap ({total}) or with a dtype gloo cannot carry")
    validate_schema(env.meta, {key for key, _, _ in specs})


def fuzz(*, examples: int, seed: int) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    bases = [valid_wire(rng, legacy=legacy) for legacy in (False, True) for _ in range(4)]
    for i in range(examples):
        limits = rng.choice(LIMITS)
        wire = mutate(rng, rng.choice(bases)) if i % 20 else list(rng.choice(bases))
        guards = rng.choice(["all", "none", "all,-lockstep"])
        receiver = WireTransport(guards=guards, limits=limits, wire=wire)
        tally.examples += 1
        try:
            env = receiver.recv()
            if env.header.action == Action.INFER:
                _check_accepted(env, limits)
            tally.accepted += 1
        except EnvelopeError as exc:
            tally.refused[exc.code] += 1
        except Exception as exc:  # noqa: BLE001 - every other exception (OverCap included) is a finding
            tally.findings.append(f"example {i} (seed {seed}): {type(exc).__name__}: {str(exc)[:200]}")
            tally.finding_kinds[type(exc).__name__] += 1
        tally.max_alloc = max(tally.max_alloc, sum(receiver.allocated))
    return tally


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.fuzz_envelope", description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=20_000, help="inputs to try (default 20000)")
    p.add_argument("--seed", type=int, default=1, help="random seed; a finding replays with the same seed")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    tally = fuzz(examples=args.examples, seed=args.seed)
    print(json.dumps(tally.as_dict(time.monotonic() - t0), indent=1))
    return 1 if tally.findings else 0


if __name__ == "__main__":
    sys.exit(main())
