"""One process of the dtype probe: every torch dtype through broadcast and all_reduce on a world-size-1 group.

``python -m benchmarks.gpu_probe --backend nccl --device cuda [--start K]`` prints one JSON line per dtype,
flushed as it goes, so a parent (``benchmarks.gpu``) that sees this process die mid-way knows which dtype
killed it and starts another one after it. A world-size-1 group still runs the backend's own dtype
dispatch (NCCL maps the dtype before launching; gloo switches on it), so it answers "can this dtype travel
on this backend" without a second GPU; it cannot show bytes moving between two devices.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist

from tp.dtypes import DTYPE_NAMES


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]


def _raw(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Eight elements' worth of bytes (0 and 1: a valid bool, a small value or a subnormal elsewhere)."""
    return torch.tensor([1, 0, 1, 1, 0, 1, 0, 1] * max(dtype.itemsize, 1), dtype=torch.uint8, device=device)


def _op(name: str, fn, device: torch.device) -> dict:
    try:
        ok = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # an asynchronous launch error surfaces here, not later
        return {"ok": bool(ok), "error": None if ok else "value changed"}
    except Exception as exc:
        return {"ok": False, "error": _first_line(exc)}


def probe(dtype: torch.dtype, device: torch.device) -> dict:
    """Broadcast and all_reduce(SUM) of one dtype on a world-size-1 group; each says ok or the error."""
    try:
        before = _raw(dtype, device)
        x = before.clone().view(dtype)
    except Exception as exc:
        return {"create": _first_line(exc), "broadcast": None, "all_reduce": None}

    def bcast() -> bool:
        dist.broadcast(x, src=0)
        return torch.equal(x.view(torch.uint8), before)

    def reduce() -> bool:
        y = before.clone().view(dtype)
        dist.all_reduce(y)  # SUM over one rank: the identity
        return torch.equal(y.view(torch.uint8), before)

    return {"create": None, "broadcast": _op("broadcast", bcast, device), "all_reduce": _op("all_reduce", reduce, device)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_probe", description=__doc__)
    p.add_argument("--backend", choices=("gloo", "nccl"), required=True)
    p.add_argument("--device", choices=("cpu", "cuda"), required=True)
    p.add_argument("--start", type=int, default=0, help="index into the sorted dtype names to start from")
    args = p.parse_args(argv)
    device = torch.device("cuda:0" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory(prefix="probe-store-") as tmp:
        dist.init_process_group(args.backend, init_method=f"file://{tmp}/store", rank=0, world_size=1,
                                timeout=timedelta(seconds=60))
        names = list(DTYPE_NAMES)
        for index in range(args.start, len(names)):
            print(json.dumps({"index": index, "dtype": names[index], **probe(DTYPE_NAMES[names[index]], device)}),
                  flush=True)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
