"""The generator: seeded weights, colwise/rowwise sharding, and TP == no TP (ranks as threads)."""

from __future__ import annotations

import ast
import inspect
import threading
from pathlib import Path

import pytest
import torch

import tp.model
from tp.model import Generator, ModelConfig, expected_fingerprints, fingerprint, full_weights, shard, tp_all_reduce

CFG = ModelConfig()
TOKENS = 16  # (HEIGHT // PATCH) * (WIDTH // PATCH) in tp.runtime
COLWISE = ("wqkv", "cq", "ckv", "w1")
ROWWISE = ("wo", "co", "w2")


def test_weights_are_a_pure_function_of_the_seed() -> None:
    a, b = full_weights(CFG, torch.float64), full_weights(CFG, torch.float64)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = full_weights(ModelConfig(seed=CFG.seed + 1), torch.float64)
    assert all(not torch.equal(a[k], other[k]) for k in a)
    assert fingerprint(a) == fingerprint(b) != fingerprint(other)


def test_every_weight_is_classified_colwise_rowwise_or_replicated() -> None:
    kinds = {name.split(".")[-1] for name in full_weights(CFG, torch.float64)}
    assert kinds == set(COLWISE) | set(ROWWISE) | {"w_in", "w_t", "w_out"}


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_shards_reassemble_into_the_full_weights(world_size: int) -> None:
    full = full_weights(CFG, torch.float64)
    shards = [shard(CFG, full, r, world_size) for r in range(world_size)]
    for name, w in full.items():
        parts = [s[name] for s in shards]
        assert all(p.is_contiguous() for p in parts)
        kind = name.split(".")[-1]
        if kind in ("wqkv", "ckv"):
            n = 3 if kind == "wqkv" else 2  # q|k|v (or k|v) blocks, each split by heads
            split = [p.chunk(n, dim=1) for p in parts]
            rebuilt = torch.cat([torch.cat([s[j] for s in split], dim=1) for j in range(n)], dim=1)
        elif kind in ("cq", "w1"):
            rebuilt = torch.cat(parts, dim=1)
        elif kind in ROWWISE:
            rebuilt = torch.cat(parts, dim=0)
        else:
            assert all(torch.equal(p, w) for p in parts), f"{name} must be replicated"
            rebuilt = parts[0]
        assert torch.equal(rebuilt, w), name
        if kind in COLWISE + ROWWISE and world_size > 1:
            assert all(p.numel() == w.numel() // world_size for p in parts), name


def test_check_world_size_rejects_what_does_not_divide_heads_and_hidden() -> None:
    for ok in (1, 2, 4, 8):  # one full 8-GPU node included
        CFG.check_world_size(ok)
    for bad in (3, 5, 6, 12, 16):
        with pytest.raises(ValueError, match=rf"world size {bad} must divide heads \(8\) and mlp_hidden \(256\); valid world sizes: 1, 2, 4, 8"):
            CFG.check_world_size(bad)
    with pytest.raises(ValueError, match="world size 3"):
        Generator(CFG, rank=0, world_size=3, tokens_per_frame=TOKENS, dtype=torch.float64, device=torch.device("cpu"))


def test_model_config_checks_heads_divide_dim() -> None:
    with pytest.raises(ValueError, match="dim 64 must be divisible by heads 3"):
        ModelConfig(heads=3)


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_expected_fingerprints_are_per_rank_and_match_the_generator_shards(world_size: int) -> None:
    prints = expected_fingerprints(CFG, world_size, torch.float64)
    assert len(prints) == len(set(prints)) == world_size
    for rank in range(world_size):
        gen = Generator(CFG, rank=rank, world_size=world_size, tokens_per_frame=TOKENS, dtype=torch.float64,
                        device=torch.device("cpu"))
        assert fingerprint(gen.w) == prints[rank]
    assert expected_fingerprints(CFG, world_size, torch.float32) != prints


def test_a_one_element_perturbation_changes_the_fingerprint() -> None:
    w = shard(CFG, full_weights(CFG, torch.float64), 0, 2)
    bumped = {**w, "l0.w1": w["l0.w1"].clone()}
    bumped["l0.w1"][0, 0] += 1e-3
    assert fingerprint(bumped) != fingerprint(w)


def test_single_rank_all_reduce_is_the_identity_without_a_process_group() -> None:
    t = torch.ones(3)
    assert tp_all_reduce(t, None, 1) is t


def test_all_reduce_lives_in_one_named_function() -> None:
    # Every module of the TP path, not only the model: a chunk-end all_reduce elsewhere is one too.
    owners = []
    for path in sorted(Path(inspect.getsourcefile(tp.model)).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        owners += [f"{path.stem}.{fn.name}" for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
                   for node in ast.walk(fn) if isinstance(node, ast.Attribute) and node.attr == "all_reduce"]
    assert owners == ["model.tp_all_reduce"]


def test_the_model_communicates_only_through_it() -> None:
    tree = ast.parse(Path(inspect.getsourcefile(tp.model)).read_text())
    owners = [fn.name for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef)
              for node in ast.walk(fn) if isinstance(node, ast.Attribute)
              and (node.attr.startswith("all_") or node.attr in ("broadcast", "send", "recv"))]
    assert owners == ["tp_all_reduce"]


def test_calling_before_the_cross_attention_cache_exists_is_an_error() -> None:
    gen = Generator(CFG, rank=0, world_size=1, tokens_per_frame=TOKENS, dtype=torch.float64, device=torch.device("cpu"))
    with pytest.raises(RuntimeError, match="reset_crossattn_cache"):
        gen(torch.zeros(TOKENS, CFG.channels, dtype=torch.float64), 1000.0, start_frame=0, write_cache=False)


# -- TP equivalence: N ranks as threads, all_reduce through a barrier -------------------

class _ThreadGroup:
    """A stand-in process group: every rank deposits its partial, all read the rank-ordered sum."""

    def __init__(self, world_size: int) -> None:
        self.slots: list[torch.Tensor | None] = [None] * world_size
        self.barrier = threading.Barrier(world_size, timeout=30)
        self.calls = 0

    def all_reduce(self, rank: int, partial: torch.Tensor) -> torch.Tensor:
        self.slots[rank] = partial.clone()
        self.barrier.wait()
        total = torch.stack(self.slots).sum(0)
        if rank == 0:
            self.calls += 1
        self.barrier.wait()  # nobody overwrites a slot before everyone has read it
        return partial.copy_(total)


class _RankHandle:
    def __init__(self, group: _ThreadGroup, rank: int) -> None:
        self.group, self.rank = group, rank


def _fake_all_reduce(partial: torch.Tensor, group: _RankHandle | None, world_size: int) -> torch.Tensor:
    return partial if world_size == 1 else group.group.all_reduce(group.rank, partial)


def _session(gen: Generator) -> list[torch.Tensor]:
    """Two chunks shaped like the driver's: reset, denoise; recompute into the cache; denoise with history."""
    frames, dtype = 3, gen.dtype
    rng = torch.Generator().manual_seed(5)
    cond = torch.randn(CFG.cond_tokens, CFG.dim, generator=rng, dtype=torch.float64).to(dtype)
    x0 = torch.randn(frames * TOKENS, CFG.channels, generator=rng, dtype=torch.float64).to(dtype)
    x1 = torch.randn(frames * TOKENS, CFG.channels, generator=rng, dtype=torch.float64).to(dtype)
    gen.reset_kv_cache()
    gen.reset_crossattn_cache(cond)
    outs = [gen(x0, 1000.0, start_frame=0, write_cache=False), gen(x0, 0.0, start_frame=0, write_cache=True)]
    outs.append(gen(x1, 750.0, start_frame=frames, write_cache=False, attention_bias=-0.5))
    outs.append(gen(x1, 0.0, start_frame=frames, write_cache=True))
    outs.append(gen(x1, 250.0, start_frame=2 * frames, write_cache=False))
    return outs


def _run_tp(world_size: int, monkeypatch) -> tuple[list[list[torch.Tensor]], _ThreadGroup]:
    monkeypatch.setattr(tp.model, "tp_all_reduce", _fake_all_reduce)
    group = _ThreadGroup(world_size)
    gens = [Generator(CFG, rank=r, world_size=world_size, tokens_per_frame=TOKENS, dtype=torch.float64,
                      device=torch.device("cpu"), group=_RankHandle(group, r)) for r in range(world_size)]
    results: list = [None] * world_size
    errors: list[BaseException] = []

    def one(rank: int) -> None:
        try:
            results[rank] = _session(gens[rank])
        except BaseException as exc:  # surfaced below; a broken barrier unblocks the others
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=one, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return results, group


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_tensor_parallel_output_equals_the_unsharded_generator(world_size: int, monkeypatch) -> None:
    reference, _ = _run_tp(1, monkeypatch)
    results, group = _run_tp(world_size, monkeypatch)
    for rank_out in results:
        for got, want in zip(rank_out, reference[0], strict=True):
            # float64: only the summation order differs; far below the 1e-6 digest quantum.
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for got in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(got, results[0], strict=True)), "ranks must agree bitwise"
    assert group.calls == 5 * 3 * CFG.layers  # 5 calls, three all_reduces per block


def test_the_session_is_not_trivially_constant(monkeypatch) -> None:
    (outs,), _ = _run_tp(1, monkeypatch)
    assert not torch.equal(outs[0], outs[2]) and not torch.equal(outs[2], outs[4])
    assert torch.isfinite(torch.stack(outs)).all()


def test_kv_history_and_attention_bias_change_the_answer() -> None:
    gen = Generator(CFG, rank=0, world_size=1, tokens_per_frame=TOKENS, dtype=torch.float64, device=torch.device("cpu"))
    x = torch.randn(3 * TOKENS, CFG.channels, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gen.reset_crossattn_cache(torch.ones(CFG.cond_tokens, CFG.dim, dtype=torch.float64))
    cold = gen(x, 500.0, start_frame=3, write_cache=False)
    gen(x, 0.0, start_frame=0, write_cache=True)
    warm = gen(x, 500.0, start_frame=3, write_cache=False)
    biased = gen(x, 500.0, start_frame=3, write_cache=False, attention_bias=-2.0)
    assert not torch.allclose(cold, warm) and not torch.allclose(warm, biased)
    gen.reset_kv_cache()
    torch.testing.assert_close(gen(x, 500.0, start_frame=3, write_cache=False), cold, rtol=0, atol=0)


def test_kv_cache_keeps_only_the_window() -> None:
    gen = Generator(CFG, rank=0, world_size=1, tokens_per_frame=TOKENS, dtype=torch.float64, device=torch.device("cpu"))
    gen.reset_crossattn_cache(torch.zeros(CFG.cond_tokens, CFG.dim, dtype=torch.float64))
    x = torch.zeros(3 * TOKENS, CFG.channels, dtype=torch.float64)
    for start in range(0, 15, 3):
        gen(x, 0.0, start_frame=start, write_cache=True)
    window = CFG.kv_window_frames
    for layer in gen.kv:
        assert sorted(layer) == list(range(15 - window, 15))
        assert all(k.shape == (CFG.heads, TOKENS, CFG.dim // CFG.heads) for k, _ in layer.values())


def test_the_plan_places_every_weight_and_refuses_one_it_does_not_name():
    """Sharding is a plan, not a naming convention: a weight the plan does not name is an error, never replicated."""
    cfg = ModelConfig(layers=2)
    weights = full_weights(cfg, torch.float64)
    assert {tp.model.placement(name).style for name in weights} == {"colwise", "rowwise", "replicate"}
    with pytest.raises(ValueError, match=r"weight 'l1\.wq_new' has no placement in tp\.model\.TP_PLAN"):
        shard(cfg, {**weights, "l1.wq_new": torch.zeros(cfg.dim, cfg.dim)}, 0, 2)
    with pytest.raises(ValueError, match="'bias' has no placement"):
        shard(cfg, {"bias": torch.zeros(cfg.dim)}, 0, 2)


def test_rowwise_rows_match_colwise_columns_of_the_same_heads():
    """A rank's rowwise rows of ``wo`` are the heads its colwise ``wqkv`` columns produce (q, k and v alike)."""
    cfg = ModelConfig()
    weights = full_weights(cfg, torch.float64)
    hd, ws = cfg.dim // cfg.heads, 4
    for rank in range(ws):
        mine = shard(cfg, weights, rank, ws)
        width = cfg.heads // ws * hd
        q, k, v = weights["l0.wqkv"].chunk(3, dim=1)
        cols = slice(rank * width, (rank + 1) * width)
        assert torch.equal(mine["l0.wqkv"], torch.cat([q[:, cols], k[:, cols], v[:, cols]], dim=1))
        assert torch.equal(mine["l0.wo"], weights["l0.wo"][cols, :])
        assert torch.equal(mine["w_in"], weights["w_in"])
