"""Tests for tp.dtypes, including a real 2-rank gloo run over a TCPStore."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tp.config import NCCL_ENV_KNOBS
from tp.dtypes import (
    DTYPE_NAMES,
    SUPPORTED,
    SUPPORTED_REDUCE,
    UnsupportedDtype,
    dtype_from_name,
    dtype_name,
    wire_check,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool]
)
def test_common_dtypes_travel_on_gloo(dtype):
    assert dtype in SUPPORTED["gloo"]
    wire_check("gloo", dtype, field="x")


def test_reduce_tables_leave_out_what_the_backend_reduces_wrongly():
    # Each table is built from SUPPORTED minus these, so "a subset of SUPPORTED" could never fail: the
    # exclusions themselves are what matters (gloo sums bools into non-canonical bytes; NCCL refuses fnuz).
    assert torch.bool in SUPPORTED["gloo"] and torch.bool not in SUPPORTED_REDUCE["gloo"]
    assert SUPPORTED["gloo"] - SUPPORTED_REDUCE["gloo"] == {torch.bool}
    assert torch.float8_e4m3fnuz in SUPPORTED["nccl"]
    assert torch.float8_e4m3fnuz not in SUPPORTED_REDUCE["nccl"]


def test_uint16_rejected_on_gloo_with_named_field():
    with pytest.raises(UnsupportedDtype) as info:
        wire_check("gloo", torch.uint16, field="latents")
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'latents'" in msg
    assert "torch.uint16" in msg
    assert "gloo" in msg
    assert "supported: bfloat16, bool," in msg


def test_int16_rejected_on_gloo():
    with pytest.raises(UnsupportedDtype, match="int16"):
        wire_check("gloo", torch.int16, field="idx")


def test_reduce_check_on_gloo_bool():
    wire_check("gloo", torch.bool, field="mask")
    with pytest.raises(UnsupportedDtype, match="cannot be all_reduced on gloo"):
        wire_check("gloo", torch.bool, field="mask", reduce=True)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"unknown backend 'mpi'; known backends: gloo, nccl"):
        wire_check("mpi", torch.float32, field="x")


@pytest.mark.parametrize("name", list(DTYPE_NAMES))
def test_name_round_trip(name):
    dtype = dtype_from_name(name)
    assert dtype is DTYPE_NAMES[name]
    assert dtype_name(dtype) == name


def test_every_torch_dtype_has_a_name():
    every = {v for v in vars(torch).values() if isinstance(v, torch.dtype)}
    assert set(DTYPE_NAMES.values()) == every
    assert "uint16" in DTYPE_NAMES and "float8_e4m3fn" in DTYPE_NAMES


def test_unknown_dtype_name():
    with pytest.raises(ValueError, match="unknown dtype name 'float'; known: bfloat16, "):
        dtype_from_name("float")  # an alias, not a wire name
    with pytest.raises(ValueError, match="not a known torch dtype"):
        dtype_name("float32")


def test_nccl_knobs_exist_in_installed_headers():
    header = (
        Path(torch.__file__).parent
        / "include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp"
    )
    if not header.exists():
        pytest.skip("torch headers not installed")
    text = header.read_text()
    for name, value in NCCL_ENV_KNOBS.items():
        assert f'"{name}"' in text, name
        assert isinstance(value, str) and value


# One rank of the 2-rank gloo run. Prints one JSON line of results.
_RANK = textwrap.dedent(
    """
    import json, sys
    from datetime import timedelta
    import torch, torch.distributed as dist
    from tp.dtypes import SUPPORTED, SUPPORTED_REDUCE, dtype_name

    rank, port = int(sys.argv[1]), int(sys.argv[2])
    store = dist.TCPStore("127.0.0.1", port, 2, is_master=False,
                          timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))

    def raw(d):
        g = torch.Generator().manual_seed(7)
        hi = 2 if d is torch.bool else 256
        return torch.randint(0, hi, (8 * d.itemsize,), dtype=torch.uint8, generator=g)

    out = {"bcast": {}, "reduce": {}, "rejected": None}
    for d in sorted(SUPPORTED["gloo"], key=str):
        src = raw(d)
        buf = src.clone() if rank == 0 else torch.zeros_like(src)
        dist.broadcast(buf.view(d), src=0)
        out["bcast"][dtype_name(d)] = torch.equal(buf, src)
    for d in sorted(SUPPORTED_REDUCE["gloo"], key=str):
        wide = torch.complex128 if d.is_complex else torch.float64
        base = torch.arange(8, dtype=torch.float64).to(wide)
        t = base.to(d).clone()  # .to() is a no-op when d is already wide
        dist.all_reduce(t)  # SUM over 2 ranks
        out["reduce"][dtype_name(d)] = torch.equal(t.to(wide), base * 2)
    try:
        dist.broadcast(torch.zeros(4, dtype=torch.uint16), src=0)
    except RuntimeError as e:
        out["rejected"] = str(e)
    print("RESULT " + json.dumps(out), flush=True)
    dist.destroy_process_group()
    """
)


def test_two_rank_gloo_broadcast():
    store = dist.TCPStore(
        "127.0.0.1", 0, 2, is_master=True, wait_for_workers=False,
        timeout=timedelta(seconds=60),
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, str(rank), str(store.port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        )
        for rank in range(2)
    ]
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=90)  # a hang bound: importing torch alone takes seconds on a busy 2-core box
            assert p.returncode == 0, stderr[-2000:]
            lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
            outs.append(json.loads(lines[-1].removeprefix("RESULT ")))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    for rank, out in enumerate(outs):
        claimed = sorted(dtype_name(d) for d in SUPPORTED["gloo"])
        assert sorted(out["bcast"]) == claimed
        assert all(out["bcast"].values()), (rank, out["bcast"])
        assert sorted(out["reduce"]) == sorted(dtype_name(d) for d in SUPPORTED_REDUCE["gloo"])
        assert all(out["reduce"].values()), (rank, out["reduce"])
        assert out["rejected"] is not None and "Invalid scalar type" in out["rejected"]
