"""The generator: a tiny causal transformer over latent frames, TP-sharded.

Sharded the standard way (gpt-fast, torchtitan): the attention heads and the
MLP hidden dimension are split across ranks. ``colwise`` linears produce this
rank's slice of heads / hidden units; ``rowwise`` linears consume it and
produce a partial sum over the full model width, which ``tp_all_reduce``
completes. Embeddings, norms and the output projection are replicated.

Each rank keeps a KV cache over a window of past frames (its own heads only)
and a cross-attention cache over the conditioning embeds.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from tp import flight
from tp.model_config import ModelConfig


def tp_all_reduce(partial: torch.Tensor, group: dist.ProcessGroup | None, world_size: int, *,
                  site: str = flight.GENERATOR_SITE) -> torch.Tensor:
    """The one place the TP path all_reduces: sum rowwise partials (or chunk-end stats) across ranks."""
    if world_size > 1:
        entry = flight.enter("all_reduce", partial, site)
        dist.all_reduce(partial, op=dist.ReduceOp.SUM, group=group)
        flight.leave(entry)
    return partial


def full_weights(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Unsharded weights, identical on every rank (seeded, never loaded from disk)."""
    gen = torch.Generator().manual_seed(cfg.seed)

    def init(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(shape[0])).to(dtype)

    d, hd = cfg.dim, cfg.dim // cfg.heads
    weights = {"w_in": init(cfg.channels, d), "w_t": init(d, d), "w_out": init(d, cfg.channels)}
    for i in range(cfg.layers):
        weights |= {
            f"l{i}.wqkv": init(d, 3 * cfg.heads * hd),
            f"l{i}.wo": init(cfg.heads * hd, d),
            f"l{i}.cq": init(d, cfg.heads * hd),
            f"l{i}.ckv": init(d, 2 * cfg.heads * hd),
            f"l{i}.co": init(cfg.heads * hd, d),
            f"l{i}.w1": init(d, cfg.mlp_hidden),
            f"l{i}.w2": init(cfg.mlp_hidden, d),
        }
    return weights


@dataclass(frozen=True)
class Placement:
    """How one weight is laid out across ranks (torchtitan's ``parallelize_module`` plan, as data)."""

    style: str
    """``colwise`` (split output columns), ``rowwise`` (split input rows) or ``replicate``."""
    over: str = "heads"
    """What the split divides: the attention ``heads`` or the MLP ``hidden`` width."""
    fused: int = 1
    """Projections stored side by side (q|k|v is 3): each is split on its own, so a rank keeps its heads of each."""


TP_PLAN: dict[str, Placement] = {
    "w_in": Placement("replicate"), "w_t": Placement("replicate"), "w_out": Placement("replicate"),
    "wqkv": Placement("colwise", fused=3), "wo": Placement("rowwise"),
    "cq": Placement("colwise"), "ckv": Placement("colwise", fused=2), "co": Placement("rowwise"),
    "w1": Placement("colwise", over="hidden"), "w2": Placement("rowwise", over="hidden"),
}
"""Every weight's placement, by its name (a block's weights by their name inside the block, ``l0.wqkv`` -> ``wqkv``)."""


def placement(name: str) -> Placement:
    """The plan's entry for weight ``name``; a weight the plan does not name is an error, never replicated."""
    block, _, inner = name.partition(".")
    key = inner if inner and block[:1] == "l" and block[1:].isdigit() else name
    try:
        return TP_PLAN[key]
    except KeyError:
        raise ValueError(f"weight {name!r} has no placement in tp.model.TP_PLAN (known: {', '.join(TP_PLAN)}); "
                         "add it as colwise, rowwise or replicate") from None


def shard(cfg: ModelConfig, weights: dict[str, torch.Tensor], rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """This rank's slice of every weight, as ``TP_PLAN`` places it."""
    width = {"heads": cfg.dim // cfg.heads * (cfg.heads // world_size), "hidden": cfg.mlp_hidden // world_size}
    out = {}
    for name, w in weights.items():
        p = placement(name)
        mine = slice(rank * width[p.over], (rank + 1) * width[p.over]) if p.style != "replicate" else None
        if p.style == "colwise":
            out[name] = torch.cat([part[:, mine] for part in w.chunk(p.fused, dim=1)], dim=1)
        elif p.style == "rowwise":
            out[name] = w[mine, :]
        else:
            out[name] = w
    return {k: v.contiguous() for k, v in out.items()}


def fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def expected_fingerprints(cfg: ModelConfig, world_size: int, dtype: torch.dtype) -> list[str]:
    weights = full_weights(cfg, dtype)
    return [fingerprint(shard(cfg, weights, r, world_size)) for r in range(world_size)]


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


def _sinusoid(values: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, dtype=values.dtype, device=values.device) / (dim // 2))
    angles = values[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Generator:
    """One rank's shard of the generator plus its per-rank caches."""

    def __init__(self, cfg: ModelConfig, *, rank: int, world_size: int, tokens_per_frame: int,
                 dtype: torch.dtype, device: torch.device, group: dist.ProcessGroup | None = None,
                 timestep_scale: float = 1000.0) -> None:
        cfg.check_world_size(world_size)
        self.cfg, self.rank, self.world_size, self.group = cfg, rank, world_size, group
        self.tokens_per_frame, self.dtype, self.device = tokens_per_frame, dtype, device
        self.timestep_scale = timestep_scale
        self.hl, self.hd = cfg.heads // world_size, cfg.dim // cfg.heads
        self.w = {k: v.to(device) for k, v in shard(cfg, full_weights(cfg, dtype), rank, world_size).items()}
        self.kv: list[dict[int, tuple[torch.Tensor, torch.Tensor]]] = []
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.reset_kv_cache()

    def reset_kv_cache(self) -> None:
        self.kv = [{} for _ in range(self.cfg.layers)]

    def reset_crossattn_cache(self, cond: torch.Tensor) -> None:
        self.cross = []
        for i in range(self.cfg.layers):
            k, v = (cond @ self.w[f"l{i}.ckv"]).chunk(2, dim=-1)
            self.cross.append((self._heads(k), self._heads(v)))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.hl, self.hd).transpose(0, 1)

    def __call__(self, x: torch.Tensor, t: float, *, start_frame: int, write_cache: bool,
                 attention_bias: float = 0.0) -> torch.Tensor:
        """Predict the velocity for latents ``x`` of shape (frames * tokens, channels)."""
        if not self.cross:
            raise RuntimeError("cross-attention cache is empty: reset_crossattn_cache(cond) must run first")
        n_frames = x.shape[0] // self.tokens_per_frame
        frame_idx = torch.arange(start_frame, start_frame + n_frames, device=self.device, dtype=self.dtype)
        pos = _sinusoid(frame_idx, self.cfg.dim).repeat_interleave(self.tokens_per_frame, dim=0)
        temb = _sinusoid(torch.tensor([t / self.timestep_scale * 1000.0], dtype=self.dtype, device=self.device), self.cfg.dim)
        h = x @ self.w["w_in"] + pos + temb @ self.w["w_t"]
        for i in range(self.cfg.layers):
            h = h + self._self_attn(i, _rms(h), start_frame, n_frames, write_cache, attention_bias)
            h = h + self._cross_attn(i, _rms(h))
            h = h + tp_all_reduce(F.gelu(_rms(h) @ self.w[f"l{i}.w1"]) @ self.w[f"l{i}.w2"], self.group, self.world_size)
        return _rms(h) @ self.w["w_out"]

    def _self_attn(self, i: int, a: torch.Tensor, start: int, n_frames: int, write: bool, bias: float) -> torch.Tensor:
        q, k, v = (self._heads(p) for p in (a @ self.w[f"l{i}.wqkv"]).chunk(3, dim=-1))
        cache = self.kv[i]
        past = [f for f in sorted(cache) if start - self.cfg.kv_window_frames <= f < start]
        keys = torch.cat([cache[f][0] for f in past] + [k], dim=1)
        values = torch.cat([cache[f][1] for f in past] + [v], dim=1)
        mask = torch.zeros(q.shape[1], keys.shape[1], dtype=self.dtype, device=self.device)
        mask[:, : len(past) * self.tokens_per_frame] = bias
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        if write:
            per = self.tokens_per_frame
            for j in range(n_frames):
                cache[start + j] = (k[:, j * per:(j + 1) * per], v[:, j * per:(j + 1) * per])
            for f in [f for f in cache if f < start + n_frames - self.cfg.kv_window_frames]:
                del cache[f]
        out = out.transpose(0, 1).reshape(a.shape[0], self.hl * self.hd)
        return tp_all_reduce(out @ self.w[f"l{i}.wo"], self.group, self.world_size)

    def _cross_attn(self, i: int, a: torch.Tensor) -> torch.Tensor:
        q = self._heads(a @ self.w[f"l{i}.cq"])
        k, v = self.cross[i]
        out = F.scaled_dot_product_attention(q, k, v).transpose(0, 1).reshape(a.shape[0], self.hl * self.hd)
        return tp_all_reduce(out @ self.w[f"l{i}.co"], self.group, self.world_size)
