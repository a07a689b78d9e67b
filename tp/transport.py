"""Sending and receiving envelopes over the process group.

The driver's ``send`` runs the preflight (everything that can throw) before
the header when that guardrail is on; without it, it uses the legacy order —
header first, then encode, materialise and send — which is exactly how a
late failure strands the workers mid-envelope.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from tp import flight
from tp.dtypes import dtype_name
from tp.envelope import (
    HEADER_LEN,
    LEGACY_META_NBYTES,
    Action,
    Envelope,
    EnvelopeError,
    Header,
    Limits,
    check_meta_nbytes,
    decode_meta,
    encode_meta,
    make_specs,
    materialise,
    parse_specs,
    validate_override,
    validate_plan,
    validate_schema,
)
from tp.failpoints import failpoint


class Transport:
    def __init__(self, *, rank: int, src: int, backend: str, device: torch.device, guards: frozenset[str],
                 model_dtype: torch.dtype, ctx: dict, limits: Limits | None = None) -> None:
        self.rank, self.src, self.backend, self.device, self.guards = rank, src, backend, device, guards
        self.limits = limits or Limits()  # what a receiver accepts before it allocates
        self.model_dtype = model_dtype
        self.ctx = ctx  # rank / chunk / call_id for failpoint triggers
        self.header_sent = False
        self.on_header = lambda what: None  # the watchdog's progress clock starts at the header

    def _bcast(self, t: torch.Tensor, site: str) -> torch.Tensor:
        entry = flight.enter("broadcast", t, site, self.src)
        dist.broadcast(t, src=self.src)
        flight.leave(entry)
        return t

    # -- driver side -------------------------------------------------------

    def send_control(self, header: Header) -> None:
        self._bcast(header.to_tensor().to(self.device), "envelope header")

    def send(self, header: Header, meta: dict, tensors: dict[str, torch.Tensor], aux: torch.Tensor | None) -> Envelope:
        """Send one INFER envelope; returns what the receivers will see."""
        self.header_sent = False
        if "preflight" in self.guards:
            return self._send_preflighted(header, meta, tensors, aux)
        return self._send_legacy(header, meta, tensors, aux)

    def _send_preflighted(self, header, meta, tensors, aux) -> Envelope:
        if aux is not None:
            tensors = {**tensors, "aux": aux}  # transport discipline: no side channels
        validate_schema(meta, set(tensors))
        validate_override(meta, set(tensors))
        if "lockstep" in self.guards:
            validate_plan(meta, tensors.get("denoising_step_list"))
        tensors = materialise(tensors, backend=self.backend, device=self.device)
        meta = {**meta, "tensor_specs": make_specs(tensors)}
        meta_bytes = encode_meta(meta)
        header.meta_nbytes = check_meta_nbytes(len(meta_bytes), limits=self.limits, legacy_ok=False)
        parse_specs(meta, backend=self.backend, limits=self.limits)  # what the receivers will accept
        failpoint("envelope.before_header", **self.ctx)
        self.send_control(header)
        self.header_sent = True
        failpoint("envelope.after_header", **self.ctx)
        self._bcast(torch.frombuffer(bytearray(meta_bytes), dtype=torch.uint8).to(self.device), "envelope meta")
        for key in sorted(tensors):
            self._bcast(tensors[key], f"tensor {key}")
        return Envelope(header=header, meta=meta, tensors=tensors, meta_bytes=meta_bytes)

    def _send_legacy(self, header, meta, tensors, aux) -> Envelope:
        # Specs from the declared schema, not from the tensors as they are now.
        declared = {k: (torch.int64 if k == "denoising_step_list" else self.model_dtype) for k in tensors}
        specs = [[k, dtype_name(declared[k]), list(t.shape)] for k, t in sorted(tensors.items())]
        header.meta_nbytes = -1
        self.send_control(header)
        self.header_sent = True
        failpoint("envelope.after_header", **self.ctx)
        meta = {**meta, "tensor_specs": specs, "has_aux": aux is not None}
        meta_bytes = encode_meta(meta)
        self._bcast(torch.tensor([len(meta_bytes)], dtype=torch.int64, device=self.device), "envelope meta length")
        self._bcast(torch.frombuffer(bytearray(meta_bytes), dtype=torch.uint8).to(self.device), "envelope meta")
        for key in sorted(tensors):
            self._bcast(tensors[key].to(self.device).contiguous(), f"tensor {key}")
        if aux is not None:
            self._bcast(aux.to(self.device).contiguous(), "side channel aux")
        return Envelope(header=header, meta=meta, tensors={k: t.to(self.device) for k, t in tensors.items()},
                        meta_bytes=meta_bytes)

    # -- worker side -------------------------------------------------------

    def recv(self) -> Envelope:
        header = Header.from_tensor(self._bcast(torch.empty(HEADER_LEN, dtype=torch.int64, device=self.device),
                                                   "envelope header"))
        if header.action != Action.INFER:
            return Envelope(header=header, meta={})
        self.on_header(f"receiving envelope of call_id {header.call_id}")
        self.ctx["chunk"], self.ctx["call_id"] = header.chunk_index, header.call_id  # failpoint triggers
        n = check_meta_nbytes(header.meta_nbytes, limits=self.limits)
        if n == LEGACY_META_NBYTES:
            length = self._bcast(torch.empty(1, dtype=torch.int64, device=self.device), "envelope meta length")
            n = check_meta_nbytes(int(length.item()), limits=self.limits, legacy_ok=False)
        meta_bytes = self._bcast(torch.empty(n, dtype=torch.uint8, device=self.device),
                                 "envelope meta").cpu().numpy().tobytes()
        meta = decode_meta(meta_bytes, limits=self.limits)
        specs = parse_specs(meta, backend=self.backend, limits=self.limits)
        validate_schema(meta, {key for key, _, _ in specs})
        aux = self._legacy_aux(meta, specs)
        tensors = {key: self._bcast(torch.empty(shape, dtype=dtype, device=self.device), f"tensor {key}")
                   for key, dtype, shape in specs}
        if aux:
            # The legacy side channel: the worker has to guess the shape.
            tensors["aux"] = self._bcast(torch.empty_like(tensors["latents"]), "side channel aux")
        if "clear_after_read" in self.guards:
            validate_override(meta, set(tensors))
        if "lockstep" in self.guards:
            validate_plan(meta, tensors["denoising_step_list"])
        tensors["latents"] = failpoint("envelope.after_recv", tensors["latents"], **self.ctx)
        return Envelope(header=header, meta=meta, tensors=tensors, meta_bytes=meta_bytes)

    def _legacy_aux(self, meta: dict, specs: list) -> bool:
        """Whether the legacy side channel follows; it is sized like ``latents`` and counts against the cap."""
        aux = meta.get("has_aux", False)
        if not isinstance(aux, bool):
            raise EnvelopeError("ENVELOPE_VIOLATION", f"meta['has_aux'] must be bool, got {type(aux).__name__}")
        total = sum(math.prod(shape) * dtype.itemsize for key, dtype, shape in specs)
        latents = next(math.prod(shape) * dtype.itemsize for key, dtype, shape in specs if key == "latents")
        if aux and total + latents > self.limits.max_envelope_bytes:
            raise EnvelopeError("ENVELOPE_VIOLATION", f"latents and its side channel exceed "
                                                      f"{self.limits.max_envelope_bytes} bytes (TP_MAX_ENVELOPE_BYTES)")
        return aux

