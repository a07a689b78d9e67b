"""One rank's life: store, handshake, process group, watchdog, then drive or work.

Every exception anywhere ends in ``Crash.die``: a ``TP-FATAL`` line with a
code from ``tp.codes``, the abort key, ``os._exit``. A clean run ends with
SHUTDOWN, a ``result`` event on every rank and exit 0.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from tp import ENVELOPE_VERSION, PROTOCOL_VERSION, failpoints, flight, handshake, log, signals, startup
from tp.chunk import ChunkRules, ChunkRunner
from tp.config import NCCL_ENV_KNOBS, ConfigError, RankConfig
from tp.crash import (
    HOST_LINGER_S,
    Crash,
    Fatal,
    done_key,
    exit_key,
    from_another,
    gone_peers,
    lost_fm,
    lost_peer,
    peer_abort,
    publish_identity,
    read_abort,
    wait_for_peers,
)
from tp.envelope import EnvelopeError, Limits
from tp.failpoints import failpoint
from tp.model import Generator, ModelConfig, expected_fingerprints, fingerprint
from tp.transport import Transport
from tp.watchdog import Progress, Watchdog

FRAMES_PER_CHUNK = 3
HEIGHT = WIDTH = 16
PATCH = 4
SIGTERM_ABORT_WAIT_S = 1.0
"""How long a SIGTERM waits for the watchdog to read a peer's abort (two polls take 0.1 s by default)."""
SIGTERM_FATAL_WAIT_S = HOST_LINGER_S + 2.0
"""How long a SIGTERM lets a fatal exit under way finish (a store host lingers up to ``HOST_LINGER_S``)."""
HOST_DONE_WAIT_S = 30.0
"""How long a store-hosting rank keeps the store up at a clean end for peers still finishing."""


class Rank:
    def __init__(self, cfg: RankConfig) -> None:
        self.cfg = cfg
        self.crash = Crash(rank=cfg.rank, world_size=cfg.world_size)
        self.ctx = {"rank": cfg.rank, "chunk": -1, "call_id": -1}
        self.progress = Progress()
        self.device = rank_device(cfg)
        self.dtype = getattr(torch, cfg.dtype_name)
        self.store: dist.Store | None = None
        self.watchdog: Watchdog | None = None
        self.phase: startup.Phase | None = None
        """Start-up's deadline and guard (the ``startup`` guardrail), from ``_main`` to the handshake verdict."""
        self.stop = threading.Event()
        self.driving = False
        """True once the driver's chunk loop runs: from then on a SIGTERM asks it to stop, not to die."""
        self.rules = ChunkRules(cfg=cfg, ctx=self.ctx, crash=self.crash, progress=self.progress, device=self.device)
        self.calls = 0

    # -- lifecycle -----------------------------------------------------------

    def main(self) -> int:
        flight.install(flight.Recorder(rank=self.cfg.rank, world_size=self.cfg.world_size, ctx=self.ctx,
                                       report_dir=os.environ.get("TP_REPORT_DIR")))
        signals.on(signal.SIGTERM, self._on_sigterm)
        try:
            return self._main()
        except Fatal as fatal:
            self._die(fatal)
        except EnvelopeError as exc:
            self._die(Fatal(exc.code, str(exc)))
        except failpoints.InjectedFault as exc:
            self._die(Fatal("FAULT_INJECTED", str(exc)))
        except Exception as exc:  # crash-only: even a bug exits with a line that says what happened
            self._die(self._classify(exc))
        return 1

    def _die(self, fatal: Fatal) -> None:
        """``Crash.die``; a rank that dies before it reached the store first tries to, so its peers learn why.

        Without that its peers could only wait out the handshake for a rank that never published.
        """
        if self.store is None and self.phase is not None and fatal.code not in startup.STORE_CODES \
                and not (self.cfg.host_store and self.cfg.rank == 0):
            self.crash.store = startup.reach(self.cfg)
        self.crash.die(fatal)

    def _on_sigterm(self) -> None:
        """SIGTERM (on the signal thread): a peer's published abort first, else the driver stops and a worker ends.

        Launchers end the survivors of a failed rank with SIGTERM (torchrun's agent, at once, every local
        rank of the failed one); the abort the failed rank published says why, so the watchdog dies of it
        with PEER_ABORT naming the cause, or of PEER_LOST naming a peer gone without one (SIGKILL). With
        neither, the SIGTERM is a request to stop: a driver in its chunk loop stops before the next chunk
        (a second SIGTERM ends it, for a driver that never gets there); any other rank ends by the signal,
        as it would without a handler, once a fatal exit already under way (lingering for peers, dumping
        stacks) has finished.
        """
        stopping = self.driving and not self.stop.is_set()
        if self.watchdog is not None:
            self.watchdog.recheck(within_s=SIGTERM_ABORT_WAIT_S, leaving=not stopping)
        if stopping:  # a second SIGTERM is the usual way to insist
            log.info("SIGTERM: the driver stops before its next chunk (a second SIGTERM ends it now)")
            self.stop.set()
            return
        self.crash.hold(within_s=SIGTERM_FATAL_WAIT_S)
        signals.die_by(signal.SIGTERM)

    def _classify(self, exc: Exception) -> Fatal:
        text = f"{type(exc).__name__}: {exc}".splitlines()[0][:400]
        lost = lost_peer(text)
        # Look for vanished peers *before* the abort key: a rank that died on a fatal path published
        # the key before exiting, so any peer seen gone here has either published by now or died hard.
        gone = self._wait_for_gone_peer() if lost else []
        abort = read_abort(self.store) if self.store is not None else None
        if from_another(abort, self.cfg.rank):
            return peer_abort(abort)
        if self._store_gone(exc):
            return self.phase.store_gone(f"{self.cfg.master_addr}:{self.cfg.master_port}", text,
                                         hosted_by_rank0=self.cfg.host_store)
        if lost:
            if gone:
                suspect, who = gone[0], f"rank {', '.join(map(str, gone))} (process gone)"
            else:  # another host, or not reaped yet: the heartbeat that moved least recently
                suspect = self.watchdog.stalest_peer() if self.watchdog is not None else None
                who = f"rank {suspect} (stalest heartbeat)" if suspect is not None else "a peer"
            return Fatal("PEER_LOST", f"{who} is gone: the collective failed with {text}",
                         fm=lost_fm(suspect, self.cfg.driver_rank))
        if isinstance(exc, dist.DistError) or any(w in text for w in ("gloo", "NCCL", "ProcessGroup", "Invalid scalar type")):
            return Fatal("COLLECTIVE_ERROR", text)
        return Fatal("INTERNAL_ERROR", text)

    def _wait_for_gone_peer(self, within_s: float = 0.5) -> list[int]:
        """A closed socket arrives while the dead peer is still being torn down: poll, bounded."""
        if self.store is None:
            return []
        deadline_at = time.monotonic() + within_s
        while True:
            gone = gone_peers(self.store, rank=self.cfg.rank, world_size=self.cfg.world_size)
            if gone or time.monotonic() >= deadline_at:
                return gone
            self.stop.wait(0.01)

    def _store_gone(self, exc: Exception) -> bool:
        """True for a store connection that broke during start-up, once reached: no collective exists yet."""
        phase = self.phase
        return (phase is not None and phase.contacted and not phase.settled.is_set()
                and isinstance(exc, dist.DistNetworkError) and not self.crash.hosts_store)

    def _connect(self, *, host: bool = False) -> dist.Store:
        """A connection to the job's one store; ``host`` serves it from this process.

        Exactly one process per job serves the store (rank 0 under an srun-style launch, else the
        torchrun agent or the harness); every other connection, on any rank, is a client. With the
        ``startup`` guardrail the connect is bounded by the start-up deadline (``tp.startup``).
        """
        cfg = self.cfg
        if not host:
            failpoint("store.connect", **self.ctx)
        if self.phase is not None:
            return startup.serve(cfg) if host else startup.connect(cfg, self.phase, hosted_by_rank0=cfg.host_store)
        return dist.TCPStore(cfg.master_addr, cfg.master_port, cfg.world_size, is_master=host,
                             timeout=timedelta(seconds=max(30.0, cfg.handshake_timeout_s)), wait_for_workers=False)

    def _main(self) -> int:
        cfg = self.cfg
        if self.device.type == "cuda":
            # Bring the device up before the liveness clock starts: creating a CUDA context takes seconds
            # on a cold GPU, and a heartbeat thread that starts first could be starved meanwhile. Before
            # ``init`` too, so a supervisor's time to crash measures the TP path, not the CUDA driver.
            torch.cuda.set_device(self.device)
            torch.zeros(1, device=self.device)
        log.event("init", rank=cfg.rank, world_size=cfg.world_size, backend=cfg.backend, device=str(self.device),
                  dtype=cfg.dtype_name, role=cfg.role,
                  plan=cfg.plan, protocol=cfg.protocol_version, guardrails=sorted(cfg.guardrails),
                  env_parity=cfg.env_parity, pid=os.getpid(), flight=flight.SCHEMA)
        hosts = cfg.host_store and cfg.rank == 0
        self._open_store(hosts)
        # Before the model loads and the handshake runs: a rank stuck in Python there (a hung failpoint, a
        # deadlocked import) must still read the abort its peers publish when their handshake times out.
        if "watchdog" in cfg.guardrails:
            self.progress.mark("connecting the watchdog to the rendezvous store")
            self.watchdog = Watchdog(crash=self.crash, store_factory=self._connect, rank=cfg.rank,
                                     driver_rank=cfg.driver_rank, store_host=0 if cfg.host_store else None,
                                     world_size=cfg.world_size, heartbeat_s=cfg.heartbeat_s,
                                     peer_timeout_s=cfg.peer_timeout_s, peer_timeout_min_s=cfg.peer_timeout_min_s,
                                     progress_timeout_s=cfg.progress_timeout_s,
                                     progress=self.progress, startup_grace_s=cfg.startup_timeout_s,
                                     watch_startup="startup" in cfg.guardrails)
            self.watchdog.start()
        model_cfg = ModelConfig()
        model_cfg.check_world_size(cfg.world_size)
        gen = Generator(model_cfg, rank=cfg.rank, world_size=cfg.world_size, tokens_per_frame=(HEIGHT // PATCH) * (WIDTH // PATCH),
                        dtype=self.dtype, device=self.device,
                        timestep_scale=1000.0 if cfg.protocol_version == PROTOCOL_VERSION else 1.0)
        gen.w["l0.w1"] = failpoint("model.shard", gen.w["l0.w1"], **self.ctx)
        if "handshake" in cfg.guardrails:
            self._handshake(gen, model_cfg)
        if self.watchdog is not None:
            self.watchdog.settle()
        if self.phase is not None:
            self.phase.settle()
        self._join_group()
        transport = Transport(rank=cfg.rank, src=cfg.driver_rank, backend=cfg.backend, device=self.device,
                              guards=cfg.guardrails, model_dtype=self.dtype, ctx=self.ctx,
                              limits=Limits(max_meta_bytes=cfg.max_meta_bytes, max_envelope_bytes=cfg.max_envelope_bytes))
        transport.on_header = self.progress.busy
        runner = ChunkRunner(gen=gen, rank=cfg.rank, role=cfg.role, guards=cfg.guardrails, ctx=self.ctx,
                             frames_per_chunk=FRAMES_PER_CHUNK, on_call=self._on_call, kv_recompute=cfg.kv_recompute)
        self.rules.store = self.store
        if cfg.role == "driver":
            from tp.driver import Driver
            self.driving = True
            try:
                summary = Driver(cfg=cfg, transport=transport, runner=runner, rules=self.rules,
                                 progress=self.progress, stop=self.stop).run()
            finally:
                self.driving = False
        else:
            from tp.worker import Worker
            summary = Worker(cfg=cfg, transport=transport, runner=runner, rules=self.rules, progress=self.progress,
                             ctx=self.ctx).run()
        self.finish(summary)
        return 0

    def _handshake(self, gen: Generator, model_cfg: ModelConfig) -> None:
        cfg = self.cfg
        record = failpoint("handshake.publish", {
            "protocol": cfg.protocol_version, "envelope_version": ENVELOPE_VERSION, "plan": cfg.plan,
            "role": cfg.role, "driver_rank": cfg.driver_rank, "env": cfg.env_parity,
            "shard_fingerprint": fingerprint(gen.w)}, **self.ctx)
        expected = expected_fingerprints(model_cfg, cfg.world_size, self.dtype) if cfg.rank == 0 else None
        timeout_s = cfg.handshake_timeout_s
        if self.phase is not None:  # rank 0 names the missing ranks before anyone's start-up deadline
            timeout_s = max(0.1, min(timeout_s, self.phase.remaining() - 1.0))
        self.progress.mark("the init handshake (every rank's record, then rank 0's verdict)")
        handshake.run(self.store, rank=cfg.rank, world_size=cfg.world_size, record=record,
                      timeout_s=timeout_s, expected_fingerprints=expected)
        log.event("handshake", rank=cfg.rank, ok=True)

    def _open_store(self, hosts: bool) -> None:
        """Serve or reach the store, claim this rank in it; with the ``startup`` guardrail under its deadline."""
        cfg = self.cfg
        if "startup" in cfg.guardrails:
            self.phase = startup.Phase(crash=self.crash, timeout_s=cfg.startup_timeout_s,
                                       doing=lambda: repr(self.progress.what),
                                       die_via=lambda: self.watchdog.store if self.watchdog is not None else None,
                                       watch=(lambda: startup.rank0_lost(cfg)) if cfg.host_store and not hosts else None)
            self.phase.start()
        addr = f"{cfg.master_addr}:{cfg.master_port}"
        self.progress.mark(f"serving the rendezvous store at {addr}" if hosts else f"connecting to the rendezvous store at {addr}")
        self.store = self._connect(host=hosts)
        self.crash.store, self.crash.hosts_store = self.store, hosts
        self.progress.mark(f"claiming rank {cfg.rank} in the rendezvous store")
        if self.phase is None:
            publish_identity(self.store, cfg.rank)
            return
        startup.claim_rank(self.store, cfg.rank)
        if cfg.host_store and not hosts:
            startup.note_store_host(self.store, self.phase)

    def _join_group(self) -> None:
        cfg = self.cfg
        if cfg.backend == "nccl":
            for name, value in NCCL_ENV_KNOBS.items():  # crash fast instead of waiting out NCCL's timeout
                os.environ.setdefault(name, value)
        pg_timeout = timedelta(seconds=cfg.collective_timeout_s) if cfg.collective_timeout_s else None
        dist.init_process_group(cfg.backend, store=self.store, rank=cfg.rank, world_size=cfg.world_size,
                                 **({"timeout": pg_timeout} if pg_timeout else {}))

    def _on_call(self, kind: str) -> None:
        self.ctx["call_id"] += 1
        self.crash.call_id = self.ctx["call_id"]
        self.calls += 1
        self.progress.mark(f"generator {kind} call {self.ctx['call_id']}")
        failpoint("generator.call", **self.ctx)

    def finish(self, summary: dict) -> None:
        cfg = self.cfg
        # Stop watching before saying done: a store-hosting rank exits once every peer is done, and a
        # watchdog still polling then would call the vanished store a lost peer.
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.store is not None:
            self.store.set(done_key(cfg.rank), "1")
            if self.crash.hosts_store:
                late = wait_for_peers(self.store, rank=cfg.rank, world_size=cfg.world_size, keys=(done_key, exit_key),
                                      within_s=HOST_DONE_WAIT_S)
                if late:
                    log.info(f"ranks {late} not done {HOST_DONE_WAIT_S} s after this rank; the store goes down now")
                if self.phase is not None:
                    startup.forget_served(cfg)
        log.event("result", rank=cfg.rank, output_digest=self.rules.outputs.hexdigest()[:16], calls=self.calls,
                  **{k: v for k, v in summary.items() if k not in ("output_digest", "calls")})
        flight.dump("exit")
        log.event("exit", rank=cfg.rank, code="OK", exit=0)
        if cfg.role == "driver":
            print(json.dumps(summary, sort_keys=True), flush=True)
        try:
            dist.destroy_process_group()
        except Exception as exc:
            log.info(f"destroy_process_group: {exc}")


def rank_device(cfg: RankConfig) -> torch.device:
    """This rank's device: NCCL needs a GPU per rank (``LOCAL_RANK``); gloo may share GPUs round-robin."""
    if cfg.device_type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "TP_DEVICE cuda" if cfg.device else f"backend {cfg.backend}"
        raise ConfigError(f"tensors on CUDA ({why}) but this machine has no usable CUDA device; "
                          f"use --backend gloo with TP_DEVICE cpu (or unset)")
    count = torch.cuda.device_count()
    if cfg.backend == "nccl":
        if cfg.local_rank >= count:
            raise ConfigError(f"LOCAL_RANK {cfg.local_rank} needs GPU {cfg.local_rank} but this host has {count}: "
                              f"NCCL needs one GPU per rank")
        return torch.device(f"cuda:{cfg.local_rank}")
    return torch.device(f"cuda:{cfg.local_rank % count}")

