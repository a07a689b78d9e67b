"""The device-side digest (tp.devhash) and the digest exchange that mixes it with host digests.

The hash runs on CPU tensors here with the same ops it runs on a GPU; that CPU and GPU give equal values
is checked on a real GPU by ``python -m benchmarks.gpu`` (docs/GPU.md).
"""

from __future__ import annotations

import tempfile
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist

from tp.chunk import exchange_digests
from tp.devhash import device_digest, on_device
from tp.envelope import DIGEST_KEYS, digest, lazy_digest


def _d(t: torch.Tensor) -> int:
    return int(device_digest(t))


def test_deterministic_and_in_63_bits():
    t = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    values = {_d(t), _d(t.clone()), _d(t.view(torch.uint8).clone().view(torch.float64))}
    assert len(values) == 1
    assert 0 <= values.pop() < 2**63


def test_every_single_bit_flip_in_a_small_tensor_changes_it():
    t = torch.arange(40, dtype=torch.int32)
    ref = _d(t)
    for pos in range(t.nbytes):
        for bit in range(8):
            u = t.clone()
            u.view(torch.uint8)[pos] ^= 1 << bit
            assert _d(u) != ref, (pos, bit)


def test_position_length_and_dtype_of_the_bytes_matter():
    t = torch.arange(1, 17, dtype=torch.int64)
    assert _d(t.flip(0)) != _d(t)  # same words, other places
    assert _d(torch.cat([t, t.new_zeros(1)])) != _d(t)  # a trailing zero word is data
    b = torch.tensor([1, 2, 3], dtype=torch.uint8)
    assert _d(torch.cat([b, b.new_zeros(1)])) != _d(b)  # padding is not data: the byte count is hashed
    assert _d(t.double()) != _d(t)


def test_views_with_odd_offsets_and_exotic_dtypes():
    base = torch.arange(101, dtype=torch.uint8)
    assert _d(base[1:]) == _d(base[1:].clone())
    for dtype in (torch.bool, torch.bfloat16, torch.complex64, torch.float16):
        t = torch.ones(5, dtype=dtype)
        assert _d(t) == _d(t.clone())
    assert _d(torch.tensor(3.5)) == _d(torch.tensor([3.5]))  # 0-d: the same bytes


def test_every_byte_reaches_the_device_hash():
    """A digest blind to some bytes lets the digest guardrail pass ranks that differ there."""
    base = torch.arange(64, dtype=torch.uint8)
    for i in (0, 1, 7, 8, 63):
        changed = base.clone()
        changed[i] ^= 0x80
        assert _d(changed) != _d(base), f"byte {i} does not reach the device hash"


def test_cpu_tensors_keep_the_host_digest():
    t = torch.randn(8)
    assert not on_device(t) and not on_device(b"x") and not on_device(None)
    assert lazy_digest(t) == digest(t) and isinstance(lazy_digest(t), int)


@pytest.fixture()
def one_rank_group():
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1,
                                timeout=timedelta(seconds=30))
        try:
            yield
        finally:
            dist.destroy_process_group()


def test_exchange_mixes_tensor_digests_with_host_ones(one_rank_group):
    """Digests hashed on a device arrive as 0-d tensors; the exchange must carry their values unchanged."""
    values = {key: 1000 + i for i, key in enumerate(DIGEST_KEYS)}
    values[DIGEST_KEYS[0]] = device_digest(torch.arange(5))
    table = exchange_digests(values, rank=0, world_size=1, device=torch.device("cpu"))  # one rank: nothing differs
    expected = [int(values[k]) for k in DIGEST_KEYS]
    assert table.tolist() == [expected] and expected[0] == int(device_digest(torch.arange(5)))


def test_exchange_names_the_key_that_differs():
    """Two real gloo ranks: a digest computed as a tensor on one side differs from the other's."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, torch, torch.distributed as dist
        from datetime import timedelta
        from tp.devhash import device_digest
        from tp.envelope import DIGEST_KEYS
        from tp.chunk import exchange_digests
        rank = int(sys.argv[1])
        dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2,
                                timeout=timedelta(seconds=30))
        values = {k: 7 for k in DIGEST_KEYS}
        values["latents"] = device_digest(torch.arange(4) + rank)
        try:
            exchange_digests(values, rank=rank, world_size=2, device=torch.device("cpu"))
        except Exception as exc:
            print(type(exc).__name__, exc)
    """)
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen([sys.executable, "-c", code, str(r), f"{tmp}/store"], stdout=subprocess.PIPE,
                                  text=True) for r in range(2)]
        outs = [p.communicate(timeout=90)[0] for p in procs]
    for out in outs:
        assert out.startswith("Fatal "), out
        assert "tensor 'latents' differs across ranks" in out
