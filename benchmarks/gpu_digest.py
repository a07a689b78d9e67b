"""The digest on a GPU: device hash equal to the CPU's, flips caught, and what each method costs.

``python -m benchmarks.gpu_digest`` prints one JSON object. Run as its own process by ``benchmarks.gpu``
so that the parent never creates a CUDA context (it forks the harness's zygote and ranks).

* ``agree``: ``tp.devhash.device_digest`` of the same bytes on CPU and on the GPU (dtypes, sizes, odd
  offsets): every pair must be equal, or ranks on different devices could never agree.
* ``flips``: one flipped bit at a random position of a 1 MiB CUDA tensor must change the digest, every time.
* ``sizes``: per size, the host method (``tp.envelope.digest``: copy to the host, blake2b) against the
  device method (hash on the GPU, copy 8 bytes), median microseconds with the GPU idle before each.
* ``chunk``: the model's real chunk inputs (what ``ChunkResult.input_digests`` hashes), both ways.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from tp.devhash import device_digest
from tp.envelope import digest


def _median_us(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return round(statistics.median(times), 1)


def agree(dev: torch.device) -> dict:
    gen = torch.Generator().manual_seed(1)
    cases = []
    for dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.int32,
                  torch.uint8, torch.bool, torch.complex64):
        for n in (1, 3, 8, 1000, 12289):
            base = torch.randint(0, 2 if dtype is torch.bool else 255, (n + 1,), generator=gen)
            t = base.to(dtype)[1:]  # an odd storage offset
            cases.append((f"{dtype}[{n}]", t))
    mismatches = [name for name, t in cases if int(device_digest(t)) != int(device_digest(t.to(dev)))]
    return {"cases": len(cases), "mismatches": mismatches}


def flips(dev: torch.device, trials: int = 200) -> dict:
    t = torch.randn(1 << 17, dtype=torch.float64, device=dev)  # 1 MiB
    ref = int(device_digest(t))
    gen = torch.Generator().manual_seed(2)
    missed = 0
    for _ in range(trials):
        u = t.clone()
        raw = u.view(torch.uint8)
        pos = int(torch.randint(0, raw.numel(), (1,), generator=gen))
        bit = int(torch.randint(0, 8, (1,), generator=gen))
        raw[pos] ^= 1 << bit
        missed += int(device_digest(u)) == ref
    return {"trials": trials, "missed": missed}


def sizes(dev: torch.device) -> list[dict]:
    rows = []
    for nbytes in (12 * 1024, 96 * 1024, 1 << 20, 16 << 20, 128 << 20):
        t = torch.randn(nbytes // 8, dtype=torch.float64, device=dev)
        reps = 50 if nbytes <= (1 << 20) else 7
        digest(t), int(device_digest(t))  # warm-up: allocator, kernels
        rows.append({"bytes": nbytes, "host_us": _median_us(lambda t=t: digest(t), reps),
                     "device_us": _median_us(lambda t=t: int(device_digest(t)), reps)})
    return rows


def chunk(dev: torch.device) -> dict:
    """The inputs of one chunk as the model sends them (tp.driver), hashed as the digest guardrail does."""
    from tp.model import ModelConfig
    from tp.runtime import FRAMES_PER_CHUNK, HEIGHT, PATCH, WIDTH

    cfg = ModelConfig()
    rows = FRAMES_PER_CHUNK * (HEIGHT // PATCH) * (WIDTH // PATCH)
    inputs = [torch.randn(rows, cfg.channels, dtype=torch.float64, device=dev),
              torch.randn(cfg.cond_tokens, cfg.dim, dtype=torch.float64, device=dev),
              torch.tensor([1000, 750, 500, 250], device=dev),
              torch.randn(rows, cfg.channels, dtype=torch.float64, device=dev)]

    def host() -> list[int]:
        return [digest(t) for t in inputs]

    def on_device() -> list[int]:
        return torch.stack([device_digest(t) for t in inputs]).cpu().tolist()

    host(), on_device()
    return {"tensors": [list(t.shape) for t in inputs], "bytes": sum(t.nbytes for t in inputs),
            "host_us": _median_us(host, 100), "device_us": _median_us(on_device, 100)}


def main() -> int:
    dev = torch.device("cuda:0")
    torch.cuda.set_device(dev)
    out = {"agree": agree(dev), "flips": flips(dev), "sizes": sizes(dev), "chunk": chunk(dev)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
