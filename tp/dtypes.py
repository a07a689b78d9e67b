"""Which tensor dtypes can travel on which c10d backend, and dtype wire names.

A tensor whose dtype the backend cannot carry must be refused *before* the
collective (``wire_check``), on every rank, with a message naming the field,
rather than discovered as an exception inside one rank's collective.

Sources (read, not remembered):
  * installed torch 2.13.0+cpu, git cf30153c4c131c8164ee7798e5022d810682e2cb
    (``torch.version.git_version``); its shipped headers under
    ``torch/include/torch/csrc/distributed/c10d/``.
  * pytorch/pytorch ``torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp``, a
    recent stored revision (HeartbeatMonitor/Watchdog classes,
    ``isUnsupportedFloat8``) from a code index that did not report its commit;
    .cpp files are not in the wheel, so it is not pinned to cf30153c.
  * installed ``torch/distributed/distributed_c10d.py`` (``broadcast``,
    ``all_reduce``: complex tensors go through ``torch.view_as_real``).
"""

from __future__ import annotations

import torch

# --- gloo -------------------------------------------------------------------
# Source: c10d/ProcessGroupGlooDetail.hpp @ cf30153c, macro GENERATE_ALL_TYPES:
# cases Float, Double, Half, BFloat16, Char, Byte, Bool (carried as uint8),
# Int, Long; ``default: TORCH_CHECK(false, "Invalid scalar type")``.
# Both broadcast and allreduce dispatch through it. Complex dtypes never reach
# it: distributed_c10d.broadcast/all_reduce call view_as_real first (complex32
# -> Half, complex64 -> Float, complex128 -> Double).
# Verified on this machine (2 gloo ranks, real TCPStore, every torch dtype):
# exactly these 12 travel byte-exact; all others (int16, uint16/32/64, every
# float8, float4, sub-byte, quantized, bits*) fail with "Invalid scalar type"
# on both ranks, symmetrically, and the group stays usable. Source and
# experiment agree. Note int16 (Short) is NOT supported on gloo.
_GLOO = frozenset({
    torch.float32, torch.float64, torch.float16, torch.bfloat16,
    torch.int8, torch.uint8, torch.bool, torch.int32, torch.int64,
    torch.complex32, torch.complex64, torch.complex128,
})

# --- nccl -------------------------------------------------------------------
# Source: c10d/NCCLUtils.hpp @ cf30153c, map ``ncclDataType`` (looked up by
# getNcclDataType; a miss raises "Input tensor data type is not supported for
# NCCL process group: <type>" -- the old "Unsupported data type for NCCL
# process group" wording is from older releases):
#   kChar, kByte, kFloat, kDouble, kInt, kLong, kHalf, kBool (as ncclUint8),
#   kFloat8_e5m2/kFloat8_e4m3fn (native under NCCL_SUPPORTS_FP8 i.e. NCCL
#   >= 2.24, else as ncclUint8), kFloat8_e4m3fnuz/kFloat8_e5m2fnuz (always
#   as ncclUint8), kBFloat16 (#if HAS_NCCL_BF16_DATATYPE, true for NCCL >= 2,
#   and NCCLUtils.hpp static_asserts NCCL >= 2.23).
# Complex: ProcessGroupNCCL::broadcast/allreduce call at::view_as_real.
# Checked on one GPU (world size 1, NCCL 2.28.9, torch 2.11): these 16 and
# no other dtype broadcast (docs/GPU.md, ``python -m benchmarks.gpu``).
_NCCL = frozenset({
    torch.float32, torch.float64, torch.float16, torch.bfloat16,
    torch.int8, torch.uint8, torch.bool, torch.int32, torch.int64,
    torch.float8_e5m2, torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
    torch.complex32, torch.complex64, torch.complex128,
})

SUPPORTED: dict[str, frozenset[torch.dtype]] = {"gloo": _GLOO, "nccl": _NCCL}
"""dtypes each backend can carry in ``broadcast`` (bytes arrive intact)."""

# Reductions are narrower than broadcast:
# * nccl: ProcessGroupNCCL::allreduce does TORCH_CHECK(!isUnsupportedFloat8(..),
#   "Unsupported Float8 type for NCCL reduction"); isUnsupportedFloat8 is
#   always true for e4m3fnuz/e5m2fnuz/e8m0fnu and, #ifndef NCCL_SUPPORTS_FP8
#   (NCCL < 2.24), also for e5m2/e4m3fn. So e5m2/e4m3fn reduce only where
#   the NCCL in use is 2.24 or newer (``_nccl_reduces_fp8``); an H200 with
#   NCCL 2.28.9 reduced both and refused the fnuz pair (docs/GPU.md). Bool
#   SUM is mapped to ncclMax in getNcclReduceOp (a logical OR); bool AVG is
#   refused.
# * gloo: bool is reduced as uint8 with gloo::sum, so SUM of two True gives
#   byte value 2 inside a bool tensor (two ranks: [2, 2, 0, 2, ...]): it
#   "succeeds" but yields non-canonical bools, so bool is excluded.
# * complex (both): only SUM/AVG are meaningful (distributed_c10d
#   supports_complex refuses MAX/MIN/PRODUCT/B*); we only all_reduce SUM.
NCCL_FP8_REDUCE = frozenset({torch.float8_e5m2, torch.float8_e4m3fn})
"""Float8 types NCCL reduces natively from 2.24 (torch's ``NCCL_SUPPORTS_FP8``)."""


def _nccl_reduces_fp8() -> bool:
    """Whether the NCCL this torch loads is 2.24 or newer; False on builds without NCCL."""
    try:
        return tuple(torch.cuda.nccl.version()) >= (2, 24)
    except (AttributeError, RuntimeError, TypeError):
        return False


def nccl_reduce_table(*, fp8: bool) -> frozenset[torch.dtype]:
    """What NCCL all_reduces: never the fnuz float8 pair; e4m3fn/e5m2 only with ``fp8`` (NCCL >= 2.24)."""
    return _NCCL - {torch.float8_e4m3fnuz, torch.float8_e5m2fnuz} - (frozenset() if fp8 else NCCL_FP8_REDUCE)


SUPPORTED_REDUCE: dict[str, frozenset[torch.dtype]] = {
    "gloo": _GLOO - {torch.bool},
    "nccl": nccl_reduce_table(fp8=_nccl_reduces_fp8()),
}
"""dtypes each backend can ``all_reduce`` (SUM) with a meaningful result."""


class UnsupportedDtype(ValueError):
    """A tensor's dtype cannot travel on the chosen backend."""


def _known_backend(backend: str) -> None:
    if backend not in SUPPORTED:
        known = ", ".join(sorted(SUPPORTED))
        raise ValueError(f"unknown backend {backend!r}; known backends: {known}")


def wire_check(backend: str, dtype: torch.dtype, *, field: str, reduce: bool = False) -> None:
    """Raise ``UnsupportedDtype`` unless ``dtype`` can travel on ``backend``.

    ``reduce=True`` checks against ``SUPPORTED_REDUCE`` (for ``all_reduce``).
    """
    _known_backend(backend)
    table = (SUPPORTED_REDUCE if reduce else SUPPORTED)[backend]
    if dtype not in table:
        verb = "cannot be all_reduced on" if reduce else "cannot travel on"
        choices = ", ".join(sorted(dtype_name(d) for d in table))
        raise UnsupportedDtype(
            f"tensor {field!r}: dtype {dtype} {verb} {backend}; supported: {choices}"
        )


# --- wire names ---------------------------------------------------------------
# Every dtype the installed torch exposes, under its canonical name
# (str(dtype) without "torch."); aliases such as "float"/"half"/"long" are
# deliberately not accepted, so one dtype has exactly one wire spelling.
DTYPE_NAMES: dict[str, torch.dtype] = dict(sorted(
    (str(d).removeprefix("torch."), d)
    for d in {v for v in vars(torch).values() if isinstance(v, torch.dtype)}
))


def dtype_from_name(name: str) -> torch.dtype:
    """The dtype for a wire name such as ``"float32"``; ValueError if unknown."""
    try:
        return DTYPE_NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dtype name {name!r}; known: {', '.join(DTYPE_NAMES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """The wire name of ``dtype`` (inverse of ``dtype_from_name``)."""
    name = str(dtype).removeprefix("torch.")
    if not isinstance(dtype, torch.dtype) or DTYPE_NAMES.get(name) is not dtype:
        raise ValueError(f"not a known torch dtype: {dtype!r}; known: {', '.join(DTYPE_NAMES)}")
    return name


# --- NCCL knobs for a crash-only deployment ------------------------------------
# Names: c10d/ProcessGroupNCCL.hpp @ cf30153c (``static std::vector<std::string>
# TORCH_NCCL_*``); defaults: ProcessGroupNCCL.cpp (ProcessGroupNCCL ctor,
# HeartbeatMonitor ctor, Watchdog ctor). Set them before init_process_group.
NCCL_ENV_KNOBS: dict[str, str] = {
    # 3 = SkipCleanUp (the default): the watchdog tears the process down on a
    # failed/timed-out collective without calling ncclCommAbort, which can
    # itself hang; pinned so an inherited "0" (NoHandling) cannot disable it.
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    # Blocking wait disables the watchdog thread, and synchronous collectives
    # (async_op=False) return no Work to wait on, so nothing would enforce the
    # timeout: keep it off.
    "TORCH_NCCL_BLOCKING_WAIT": "0",
    # Heartbeat monitor: aborts the process when the watchdog itself is stuck
    # (e.g. in a hung CUDA/NCCL call).
    "TORCH_NCCL_ENABLE_MONITORING": "1",
    # Default 480 s (8 min); the monitor also sleeps this long again before
    # terminating, so the worst case is about twice this.
    "TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC": "30",
    # Dump the flight recorder on timeout/exception (needs a buffer > 0).
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
    # Flight recorder ring size (default 2000 in recent source; 0 disables).
    "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
    # Bound the extra wait for that dump before exiting (default 15 000 ms).
    "TORCH_NCCL_WAIT_TIMEOUT_DUMP_MILSEC": "5000",
    # Propagate a rank's NCCL error to all ranks through the TCPStore
    # (default off), so peers fail instead of waiting out their timeout.
    "TORCH_NCCL_PROPAGATE_ERROR": "1",
}

# Default collective timeouts, seconds.
# gloo: kBackendDefaultTimeout = 30 min (c10d/Backend.hpp), exposed as
#   torch.distributed.constants.default_pg_timeout (1800 s on this install).
# nccl: kProcessGroupNCCLDefaultTimeout = 10 min (c10d/ProcessGroupNCCL.hpp),
#   exposed as constants.default_pg_nccl_timeout (None on CPU-only builds);
#   chosen per backend by distributed_c10d._get_default_timeout.
DEFAULT_TIMEOUT_S: dict[str, int] = {"gloo": 30 * 60, "nccl": 10 * 60}
