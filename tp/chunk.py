"""One chunk on one rank: the plan the envelope carries, executed in lockstep,
and the rules every chunk begins and ends with.

The driver and the workers run this same code on the same envelope; the
only asymmetries are the ones production code really has (the driver trusts
its plan's step count, a worker iterates the step list it received), and the
guardrails exist to keep them from mattering: at its end a chunk checks the
calls it ran against the plan (lockstep) and compares digests across ranks
(digest).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tp import flight
from tp.config import RankConfig
from tp.crash import Crash, Fatal
from tp.envelope import DIGEST_KEYS, Envelope, digest, lazy_digest, quantise
from tp.failpoints import failpoint
from tp.model import Generator, tp_all_reduce
from tp.watchdog import Progress


@dataclass(kw_only=True)
class ChunkResult:
    latents: torch.Tensor
    """The denoised latents of this chunk (identical on every healthy rank)."""
    calls: int
    """Generator calls this rank actually ran."""
    override: torch.Tensor | None
    """The context_frames_override this rank actually used (fresh, stale or none)."""

    def input_digests(self, env: Envelope) -> dict[str, int | torch.Tensor]:
        """Digests of the inputs this rank actually used, per ``DIGEST_KEYS``; only when they are exchanged.

        A CUDA input's digest is a 0-d tensor on its device (``lazy_digest``) until the exchange."""
        values = {key: lazy_digest(env.tensors.get(key)) for key in DIGEST_KEYS if key not in ("meta", "output")}
        values["context_frames_override"] = lazy_digest(self.override)
        values["meta"] = digest(env.meta_bytes)
        return values


class ChunkRunner:
    def __init__(self, *, gen: Generator, rank: int, role: str, guards: frozenset[str], ctx: dict,
                 frames_per_chunk: int, on_call, kv_recompute: bool) -> None:
        self.gen, self.rank, self.role, self.guards, self.ctx = gen, rank, role, guards, ctx
        self.frames = frames_per_chunk
        self.on_call = on_call
        self.kv_recompute = kv_recompute
        self.stash: torch.Tensor | None = None  # the last override, for the legacy "absent means reuse"

    def run(self, env: Envelope) -> ChunkResult:
        meta, tensors = env.meta, env.tensors
        if meta["tp_reset_kv_cache"]:
            self.gen.reset_kv_cache()
            self.stash = None
        if meta["tp_reset_crossattn_cache"] or not self.gen.cross:
            self.gen.reset_crossattn_cache(tensors["conditioning_embeds"])
        start = meta["current_start_frame"]
        calls = 0
        do_recompute = meta["tp_do_kv_recompute"] and self.kv_recompute
        if self.role == "worker":
            do_recompute = failpoint("worker.skip_recompute", do_recompute, **self.ctx)
        override = self._take_override(tensors.get("context_frames_override"), do_recompute)
        if do_recompute:
            self.on_call("recompute")
            self.gen(override, 0.0, start_frame=start - self.frames, write_cache=True,
                     attention_bias=meta["kv_cache_attention_bias"])
            calls += 1
        steps = tensors["denoising_step_list"].tolist()
        n = meta["tp_num_denoise_steps"] if self.role == "driver" else len(steps)
        x = tensors["latents"].to(self.gen.dtype)
        if "aux" in tensors:
            x = x + 0.1 * tensors["aux"].reshape(-1)[: x.numel()].reshape(x.shape).to(x.dtype)
        for i in range(n):
            t = float(steps[i])
            t_next = float(steps[i + 1]) if i + 1 < len(steps) else 0.0
            self.on_call("denoise")
            pred = self.gen(x, t, start_frame=start, write_cache=False, attention_bias=meta["kv_cache_attention_bias"])
            x = x + (t_next - t) / 1000.0 * pred
            calls += 1
        return ChunkResult(latents=x, calls=calls, override=override)

    def _take_override(self, received: torch.Tensor | None, needed: bool) -> torch.Tensor | None:
        stale = failpoint("worker.stale_override", False, **self.ctx) if self.role == "worker" else False
        if "clear_after_read" in self.guards:
            # Consumed once: an absent override is an error, never the old one.
            override = None if stale else received
            self.stash = None
            if needed and override is None:
                raise Fatal("MISSING_OVERRIDE", "recompute planned but no fresh context_frames_override "
                                                "(clear_after_read: the previous one was consumed)")
            return override
        override = self.stash if (stale or received is None) else received
        self.stash = override if override is not None else self.stash
        if needed and override is None:
            # Nothing to reuse: the legacy code anchors on zeros and carries on.
            override = torch.zeros(self.frames * self.gen.tokens_per_frame, self.gen.cfg.channels,
                                   dtype=self.gen.dtype, device=self.gen.device)
        return override


def exchange_digests(values: dict[str, int | torch.Tensor], *, rank: int, world_size: int,
                     device: torch.device) -> torch.Tensor:
    """All-gather per-key digests; name the first key on which ranks differ. Returns the gathered table
    (one row per rank, one column per ``DIGEST_KEYS`` entry) when they all agree."""
    ordered = [values.get(k, 0) for k in DIGEST_KEYS]
    mine = torch.tensor([0 if isinstance(v, torch.Tensor) else v for v in ordered], dtype=torch.int64).to(device)
    hashed_there = [j for j, v in enumerate(ordered) if isinstance(v, torch.Tensor)]
    if hashed_there:  # digests computed on the device join the host ones without a copy back
        mine[hashed_there] = torch.stack([ordered[j].to(device) for j in hashed_there])
    gathered = [torch.empty_like(mine) for _ in range(world_size)]
    entry = flight.enter("all_gather", mine, "digest exchange")
    dist.all_gather(gathered, mine)
    flight.leave(entry)
    table = torch.stack(gathered).cpu()
    for j, key in enumerate(DIGEST_KEYS):
        column = table[:, j].tolist()
        if len(set(column)) > 1:
            groups: dict[int, list[int]] = {}
            for r, v in enumerate(column):
                groups.setdefault(v, []).append(r)
            parts = "; ".join(f"ranks {ranks} have {v:016x}" for v, ranks in groups.items())
            raise Fatal("DIGEST_MISMATCH", f"tensor '{key}' differs across ranks: {parts}")
    return table


class ChunkRules:
    """What every chunk begins and ends with, on every rank: the call ids its log lines and fatal errors carry,
    the lockstep and digest checks, the optional chunk-end collective, and the progress it reports."""

    def __init__(self, *, cfg: RankConfig, ctx: dict, crash: Crash, progress: Progress, device: torch.device) -> None:
        self.cfg, self.ctx, self.crash, self.progress, self.device = cfg, ctx, crash, progress, device
        self.store: dist.Store | None = None
        """Where ``tp/progress/{rank}`` is published, once connected."""
        self.outputs = hashlib.sha256()
        """Every chunk's quantised output latents, in order: this rank's ``result`` digest."""

    def begin(self, chunk: int, call_id: int) -> None:
        self.ctx["chunk"] = chunk
        self.crash.chunk = chunk
        if call_id >= 0:
            self.ctx["call_id"] = call_id
            self.crash.call_id = call_id
        self.progress.busy(f"chunk {chunk}")

    def end(self, env: Envelope, result: ChunkResult) -> None:
        cfg = self.cfg
        expected = env.meta["tp_expected_generator_calls"]
        if "lockstep" in cfg.guardrails and result.calls != expected:
            raise Fatal("CALL_COUNT_MISMATCH", f"rank {cfg.rank} ran {result.calls} generator calls in chunk "
                                               f"{env.header.chunk_index}, the plan expected {expected}")
        if cfg.sync_kv_stats or cfg.plan == "v1_full_pipeline":
            # Optional extras that are collectives: every rank must agree to run them (handshake env parity).
            tp_all_reduce(result.latents.new_zeros(64), None, cfg.world_size, site="chunk-end stats")
        output = quantise(result.latents)
        if "digest" in cfg.guardrails and env.header.chunk_index % cfg.digest_every == 0:
            values = result.input_digests(env)
            values["output"] = digest(output)
            exchange_digests(values, rank=cfg.rank, world_size=cfg.world_size, device=self.device)
        self.outputs.update(output.numpy().tobytes())
        if self.store is not None:
            self.store.set(f"tp/progress/{cfg.rank}", f"{env.header.chunk_index} {self.ctx['call_id']}")
        if cfg.role == "worker":  # a worker now waits for the driver; the driver goes on working
            self.progress.idle(f"after chunk {env.header.chunk_index}")
        else:
            self.progress.mark(f"after chunk {env.header.chunk_index}")
