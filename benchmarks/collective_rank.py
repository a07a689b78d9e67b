"""One rank of the reference micro-benchmark: ``python -m benchmarks.collective_rank``.

Started by the harness like a TP rank (CONTRACT §1 env, the launcher hosts
the store). Times, per operation, what the guardrails and the generator are
made of on this box's gloo: the generator's ``all_reduce`` of one activation
(48 tokens x 64 wide, float64), the digest exchange (``all_gather`` of 7
int64), the envelope header ``broadcast``, one rendezvous-store round trip and
the store traffic of one watchdog poll. Rank 0 also times, with the TP path's
own functions, hashing one chunk's inputs (the digest guardrail) and the
preflight of one envelope. Rank 0's last stdout line is JSON with
``collective_bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from tp.envelope import DIGEST_KEYS, HEADER_LEN, digest

ACTIVATION = (48, 64)
"""Generator activation per call: 3 frames x 16 tokens, model width 64."""
DIGEST_WORDS = len(DIGEST_KEYS)
"""int64 words one digest exchange gathers per rank."""


def _time(op, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        op()
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def _summary_us(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(values), "median_us": round(statistics.median(values), 1),
            "p95_us": round(ordered[int(0.95 * (len(ordered) - 1))], 1), "min_us": round(ordered[0], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.collective_rank", description=__doc__)
    parser.add_argument("--iters", type=int, default=300, help="timed repetitions per operation (default 300)")
    parser.add_argument("--chunks", type=int, default=0, help="ignored (the harness appends it)")
    parser.add_argument("--backend", default="gloo", help="ignored: gloo only")
    args = parser.parse_args()
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False,
                          timeout=timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    activation = torch.randn(*ACTIVATION, dtype=torch.float64)
    words = torch.arange(DIGEST_WORDS, dtype=torch.int64)
    gathered = [torch.empty_like(words) for _ in range(world_size)]
    header = torch.zeros(HEADER_LEN, dtype=torch.int64)
    ops = {
        "all_reduce 48x64 f64 (generator)": lambda: dist.all_reduce(activation),
        f"all_gather {DIGEST_WORDS} int64 (digest exchange)": lambda: dist.all_gather(gathered, words),
        f"broadcast {HEADER_LEN} int64 (envelope header)": lambda: dist.broadcast(header, src=0),
        "store add round trip (watchdog)": lambda: store.add(f"bench/hb/{rank}", 1),
    }
    results = {}
    for name, op in ops.items():
        dist.barrier()
        _time(op, max(10, args.iters // 10))
        dist.barrier()
        results[name] = _summary_us(_time(op, args.iters))
    peers = [r for r in range(world_size) if r != rank]
    results["watchdog beat (store round trips of one poll)"] = _summary_us(_time(_beat(store, rank, peers), args.iters))
    if rank == 0:
        results["digest of one chunk's inputs (CPU)"] = _summary_us(_time(_hash_inputs(), args.iters))
        results["preflight of one envelope (CPU)"] = _summary_us(_time(_preflight(activation), args.iters))
        print(json.dumps({"collective_bench": results, "world_size": world_size, "iters": args.iters}), flush=True)
    dist.barrier()
    dist.destroy_process_group()
    return 0


def _beat(store, rank: int, peers: list[int]):
    """The store traffic of one watchdog poll (tp.watchdog): beat, read the abort key, read each peer."""
    def run() -> None:
        store.add(f"bench/hb/{rank}", 1)
        store.check(["bench/abort"])
        for r in peers:
            store.check([f"bench/done/{r}"])
            store.add(f"bench/hb/{r}", 0)

    return run


def _preflight(activation: torch.Tensor):
    """What the preflight guardrail does before a steady-state INFER header, with the TP path's functions."""
    from tp import ENVELOPE_VERSION, PLAN
    from tp.envelope import encode_meta, make_specs, materialise, validate_override, validate_plan, validate_schema

    tensors = {"latents": torch.randn(48, 8, dtype=torch.float64), "conditioning_embeds": activation[:8].clone(),
               "denoising_step_list": torch.tensor([1000, 750, 500, 250]),
               "context_frames_override": torch.randn(48, 8, dtype=torch.float64)}
    meta = {"tp_plan": PLAN, "tp_envelope_version": ENVELOPE_VERSION, "height": 16, "width": 16,
            "current_start_frame": 3, "init_cache": False, "manage_cache": True, "tp_reset_kv_cache": False,
            "tp_reset_crossattn_cache": False, "tp_do_kv_recompute": True, "tp_num_denoise_steps": 4,
            "tp_expected_generator_calls": 5, "kv_cache_attention_bias": 0.0, "base_seed": 20261125,
            "context_frames_override": "tensor"}
    device = torch.device("cpu")

    def run() -> None:
        validate_schema(meta, set(tensors))
        validate_override(meta, set(tensors))
        validate_plan(meta, tensors["denoising_step_list"])
        ready = materialise(tensors, backend="gloo", device=device)
        encode_meta({**meta, "tensor_specs": make_specs(ready)})

    return run


def _hash_inputs():
    """Hash the tensors one chunk's digest covers, with the TP path's own digest function."""
    tensors = [torch.randn(48, 8, dtype=torch.float64), torch.randn(8, 64, dtype=torch.float64),
               torch.tensor([1000, 750, 500, 250]), torch.randn(48, 8, dtype=torch.float64)]
    meta = json.dumps({"k": list(range(60))}).encode()

    def run() -> None:
        for t in tensors:
            digest(t)
        digest(meta)

    return run


if __name__ == "__main__":
    raise SystemExit(main())
