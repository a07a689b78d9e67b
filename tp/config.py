"""Rank configuration from torchrun's variables, ``TP_*`` env and the CLI.

Every bad value is a clear error naming where it came from
(``invalid TP_PEER_TIMEOUT_S '5x': expected seconds > 0``), raised before any
process group exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tp import PLAN, PROTOCOL_VERSION, guardrails
from tp.failpoints import Armed, FailpointError
from tp.failpoints import parse as parse_failpoints

DEFAULT_MAX_META_BYTES = 64 * 1024
"""Meta is ~0.7 KB per envelope; 64 KiB leaves room for richer plans and refuses what the wire cannot justify."""
DEFAULT_MAX_ENVELOPE_BYTES = 64 * 1024 * 1024
"""The model's tensors are ~12 KB per envelope (48x8 latents, 8x64 embeds, float64); 64 MiB fits real geometries."""

ENV_PARITY_KEYS = ("TP_GUARDRAILS", "TP_DIGEST_EVERY", "TP_SYNC_KV_STATS", "TP_KV_RECOMPUTE", "TP_DRIVER_RANK")
"""Env keys every rank must agree on: each changes which collectives a rank runs."""


# NCCL's own knobs, set for a crash-only deployment before init_process_group (runtime, backend nccl only;
# an operator's own value wins).
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

class ConfigError(ValueError):
    """A bad configuration value; the message names its source."""


@dataclass(frozen=True, kw_only=True)
class RankConfig:
    rank: int
    """Global rank (``RANK``)."""
    world_size: int
    """Number of ranks (``WORLD_SIZE``)."""
    local_rank: int
    """Device index on this host (``LOCAL_RANK``)."""
    master_addr: str
    """Rendezvous store host (``MASTER_ADDR``)."""
    master_port: int
    """Rendezvous store port (``MASTER_PORT``)."""
    host_store: bool
    """Whether rank 0 hosts the store (false under torchrun's agent store or the harness)."""
    backend: str = "gloo"
    """``gloo`` (CPU or CUDA tensors) or ``nccl`` (CUDA tensors, one GPU per rank)."""
    device: str = ""
    """Where tensors live (``TP_DEVICE``): ``cpu`` or ``cuda``; empty picks cuda for nccl, cpu for gloo."""
    dtype: str = ""
    """Model dtype (``TP_DTYPE``): ``float64`` or ``float32``; empty picks float64 for gloo, float32 for nccl."""
    output: str | None = None
    """Where the driver saves the delivered frames (``--output``, a torch file); None saves nothing."""
    chunks: int = 8
    """Chunks rank 0 drives before SHUTDOWN."""
    reset_every: int = 4
    """A hard cut (cache reset, new cache epoch) every this many chunks."""
    guardrails: frozenset[str] = field(default_factory=lambda: guardrails.parse("all"))
    """Guardrails that are on (``TP_GUARDRAILS``)."""
    failpoints: tuple[Armed, ...] = ()
    """Failpoints to arm (``TP_FAILPOINTS``), parsed: a bad spec is a ConfigError like a bad guardrail."""
    protocol_version: int = PROTOCOL_VERSION
    """Protocol this rank speaks (``TP_PROTOCOL_VERSION_OVERRIDE`` for skew tests)."""
    plan: str = PLAN
    """Execution plan this rank believes in (``TP_PLAN``)."""
    driver_rank: int = 0
    """Which rank this rank believes is the driver (``TP_DRIVER_RANK``)."""
    kv_recompute: bool = True
    """Feature flag: KV recompute between chunks (``TP_KV_RECOMPUTE``)."""
    sync_kv_stats: bool = False
    """Debug flag: all_reduce KV statistics at chunk end (``TP_SYNC_KV_STATS``); gates a collective."""
    heartbeat_s: float = 0.05
    """Watchdog poll/heartbeat interval (``TP_HEARTBEAT_S``)."""
    peer_timeout_s: float = 2.0
    """Ceiling of the adaptive peer timeout (``TP_PEER_TIMEOUT_S``); also the timeout until gaps are known."""
    peer_timeout_min_s: float = 0.5
    """Floor of the adaptive peer timeout (``TP_PEER_TIMEOUT_MIN_S``), see ``tp.liveness``."""
    progress_timeout_s: float = 60.0
    """Busy without progress this long is fatal; twice this while waiting in a collective (``TP_PROGRESS_TIMEOUT_S``)."""
    handshake_timeout_s: float = 10.0
    """Init handshake deadline (``TP_HANDSHAKE_TIMEOUT_S``)."""
    startup_timeout_s: float = 30.0
    """Bound of start-up, from ``main`` to the handshake verdict: store connect, store reads, the handshake
    (``TP_STARTUP_TIMEOUT_S``; with the ``startup`` guardrail)."""
    collective_timeout_s: float | None = None
    """Process-group timeout (``TP_COLLECTIVE_TIMEOUT_S``); None keeps PyTorch's default."""
    digest_every: int = 1
    """Digest exchange every N chunks; 1 is bring-up mode (``TP_DIGEST_EVERY``)."""
    env_parity: dict[str, str] = field(default_factory=dict)
    """The values of ``ENV_PARITY_KEYS`` as this rank sees them."""
    max_meta_bytes: int = DEFAULT_MAX_META_BYTES
    """Largest envelope meta a receiver accepts, bytes (``TP_MAX_META_BYTES``)."""
    max_envelope_bytes: int = DEFAULT_MAX_ENVELOPE_BYTES
    """Largest sum of tensor bytes per envelope a receiver allocates (``TP_MAX_ENVELOPE_BYTES``)."""

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"RANK {self.rank} must be in [0, WORLD_SIZE={self.world_size})")
        if self.backend not in ("gloo", "nccl"):
            raise ConfigError(f"invalid backend {self.backend!r} from --backend; choose gloo or nccl")
        if self.device not in ("", "cpu", "cuda"):
            raise ConfigError(f"invalid TP_DEVICE {self.device!r}: choose cpu or cuda (or leave it unset)")
        if self.backend == "nccl" and self.device == "cpu":
            raise ConfigError("TP_DEVICE cpu cannot run on backend nccl (NCCL carries CUDA tensors only); "
                              "use --backend gloo or TP_DEVICE cuda")
        if self.dtype not in ("", "float32", "float64"):
            raise ConfigError(f"invalid TP_DTYPE {self.dtype!r}: choose float32 or float64 (or leave it unset)")
        if self.chunks < 1:
            raise ConfigError(f"invalid --chunks {self.chunks}: expected >= 1")
        if self.peer_timeout_min_s > self.peer_timeout_s:
            raise ConfigError(f"invalid TP_PEER_TIMEOUT_MIN_S {self.peer_timeout_min_s:g}: must not exceed "
                              f"TP_PEER_TIMEOUT_S {self.peer_timeout_s:g} (floor and ceiling of the peer timeout)")
        if not 0 <= self.driver_rank < self.world_size:
            raise ConfigError(f"invalid TP_DRIVER_RANK {self.driver_rank}: expected 0..{self.world_size - 1}")
        if self.heartbeat_s > self.peer_timeout_s:
            raise ConfigError(f"TP_HEARTBEAT_S {self.heartbeat_s:g} is longer than TP_PEER_TIMEOUT_S "
                              f"{self.peer_timeout_s:g}: every peer would look lost; keep the heartbeat shorter")

    @property
    def role(self) -> str:
        return "driver" if self.rank == self.driver_rank else "worker"

    @property
    def device_type(self) -> str:
        """``cuda`` or ``cpu``: ``TP_DEVICE``, else what the backend carries."""
        return self.device or ("cuda" if self.backend == "nccl" else "cpu")

    @property
    def dtype_name(self) -> str:
        """``TP_DTYPE``, else float64 for gloo (TP exact to well below the digest's 1e-6 quantum at every
        world size) and float32 for nccl (what GPUs run fast)."""
        return self.dtype or ("float64" if self.backend == "gloo" else "float32")


def _int(env: dict, name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"invalid {name} {raw!r}: expected an integer >= {minimum}") from None
    if value < minimum:
        raise ConfigError(f"invalid {name} {raw!r}: expected an integer >= {minimum}")
    return value


MAX_SECONDS = 86400.0
"""Upper bound of every ``*_S`` variable: a day. Beyond it (or ``inf``) timers overflow at run time."""


def _seconds(env: dict, name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    expected = f"expected seconds > 0 (finite, at most {MAX_SECONDS:g})"
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"invalid {name} {raw!r}: {expected}") from None
    if not 0 < value <= MAX_SECONDS:  # False for nan and inf too
        raise ConfigError(f"invalid {name} {raw!r}: {expected}")
    return value


def _flag(env: dict, name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    if raw not in ("0", "1"):
        raise ConfigError(f"invalid {name} {raw!r}: expected 0 or 1")
    return raw == "1"


def _parity(env: dict, on: frozenset[str]) -> dict[str, str]:
    """Env-parity values as they take effect, so unset and the default compare equal."""
    return {
        "TP_GUARDRAILS": guardrails.describe(on),
        "TP_DIGEST_EVERY": str(_int(env, "TP_DIGEST_EVERY", 1, minimum=1)),
        "TP_SYNC_KV_STATS": str(int(_flag(env, "TP_SYNC_KV_STATS", False))),
        "TP_KV_RECOMPUTE": str(int(_flag(env, "TP_KV_RECOMPUTE", True))),
        "TP_DRIVER_RANK": str(_int(env, "TP_DRIVER_RANK", 0)),
    }


def protocol_override(env: dict) -> int:
    """``TP_PROTOCOL_VERSION_OVERRIDE``: a non-negative integer, or the built-in version."""
    return _int(env, "TP_PROTOCOL_VERSION_OVERRIDE", PROTOCOL_VERSION, minimum=0)


def from_env(env: dict | None = None, **cli: object) -> RankConfig:
    env = dict(os.environ if env is None else env)
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ConfigError(f"{name} is not set (or empty); run under torchrun, the harness, "
                              f"or `python -m tp --world-size N`")
    try:
        on = guardrails.parse(env.get("TP_GUARDRAILS"))
        armed = tuple(parse_failpoints(env.get("TP_FAILPOINTS", "")))
    except (guardrails.GuardrailError, FailpointError) as exc:
        raise ConfigError(str(exc)) from None
    plan = env.get("TP_PLAN") or PLAN
    return RankConfig(
        rank=_int(env, "RANK", 0), world_size=_int(env, "WORLD_SIZE", 1, minimum=1),
        local_rank=_int(env, "LOCAL_RANK", 0), master_addr=env["MASTER_ADDR"],
        master_port=_int(env, "MASTER_PORT", 0, minimum=1),
        host_store=env.get("TORCHELASTIC_USE_AGENT_STORE", "False") != "True",
        guardrails=on, failpoints=armed,
        protocol_version=protocol_override(env), plan=plan,
        driver_rank=_int(env, "TP_DRIVER_RANK", 0),
        kv_recompute=_flag(env, "TP_KV_RECOMPUTE", True),
        sync_kv_stats=_flag(env, "TP_SYNC_KV_STATS", False),
        heartbeat_s=_seconds(env, "TP_HEARTBEAT_S", 0.05),
        peer_timeout_s=_seconds(env, "TP_PEER_TIMEOUT_S", 2.0),
        peer_timeout_min_s=_seconds(env, "TP_PEER_TIMEOUT_MIN_S", 0.5),
        progress_timeout_s=_seconds(env, "TP_PROGRESS_TIMEOUT_S", 60.0),
        handshake_timeout_s=_seconds(env, "TP_HANDSHAKE_TIMEOUT_S", 10.0),
        startup_timeout_s=_seconds(env, "TP_STARTUP_TIMEOUT_S", 30.0),
        collective_timeout_s=_seconds(env, "TP_COLLECTIVE_TIMEOUT_S", None),
        digest_every=_int(env, "TP_DIGEST_EVERY", 1, minimum=1),
        device=env.get("TP_DEVICE", ""), dtype=env.get("TP_DTYPE", ""),
        env_parity=_parity(env, on),
        max_meta_bytes=_int(env, "TP_MAX_META_BYTES", DEFAULT_MAX_META_BYTES, minimum=1),
        max_envelope_bytes=_int(env, "TP_MAX_ENVELOPE_BYTES", DEFAULT_MAX_ENVELOPE_BYTES, minimum=1),
        **cli,
    )
