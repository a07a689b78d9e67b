"""A 63-bit digest of a tensor's bytes, computed on the tensor's own device.

The digest guardrail hashes every input of a chunk. On the host that is
blake2b over the bytes (``tp.envelope.digest``); for a CUDA tensor it would
mean one device-to-host copy and one stream synchronisation per tensor. Here
the bytes are hashed where they live with elementwise integer ops and one
sum, so a chunk's digests stay on the GPU until the exchange copies them
back together: one synchronisation per exchange.

The hash: the bytes as little-endian 64-bit words (zero-padded), each word
XORed with a position key and mixed by SplitMix64's finaliser, summed modulo
2^64 (integer addition is associative, so the parallel reduction's order
cannot change the value), and the sum mixed once more with the byte count.
A changed byte changes one word's mix; a moved word changes its key. It is
a consistency check between ranks that run the same code, not a
cryptographic hash. The same ops give the same value on CPU and GPU (checked
on a GPU by ``python -m benchmarks.gpu``).
"""

from __future__ import annotations

import torch

DEVICE_MIN_BYTES = 256 * 1024
"""CUDA tensors at least this large are hashed on their device; smaller ones are copied and hashed on the host.

From ``python -m benchmarks.gpu``'s size sweep on an H200 (docs/GPU.md): the device hash costs a fixed
~0.3 ms (its kernel launches) and the host one ~2 us per KiB (copy, then blake2b), so they cross near
150-165 KiB; at 256 KiB the device hash is about 1.5x faster, at 128 MiB about 165x. Every rank must use the
same value: the two methods give different digests of the same bytes."""

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64
_M1 = 0xBF58476D1CE4E5B9 - 2**64
_M2 = 0x94D049BB133111EB - 2**64


def _shr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` on a signed type is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser; int64 products wrap modulo 2^64 on CPU and CUDA alike."""
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def on_device(t: object) -> bool:
    """Whether ``lazy_digest`` hashes ``t`` where it lives rather than on the host."""
    return isinstance(t, torch.Tensor) and t.is_cuda and t.nbytes >= DEVICE_MIN_BYTES


def device_digest(t: torch.Tensor) -> torch.Tensor:
    """The digest of ``t``'s bytes as a 0-d int64 tensor on ``t.device``, in [0, 2^63); no synchronisation."""
    data = t.detach().contiguous().reshape(-1).view(torch.uint8)
    nbytes = data.numel()
    pad = (-nbytes) % 8
    if pad or data.storage_offset() % 8:
        data = torch.cat([data, data.new_zeros(pad)])
    words = data.view(torch.int64)
    keys = _mix(torch.arange(1, words.numel() + 1, dtype=torch.int64, device=words.device) * _GOLDEN)
    total = _mix(words ^ keys).sum()
    return _shr(_mix(total ^ nbytes), 1)
