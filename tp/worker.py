"""A worker: receive an envelope, run exactly its plan, repeat until SHUTDOWN."""

from __future__ import annotations

from tp import log
from tp.chunk import ChunkRules, ChunkRunner
from tp.config import RankConfig
from tp.crash import Fatal
from tp.envelope import Action, Envelope
from tp.failpoints import failpoint
from tp.transport import Transport
from tp.watchdog import Progress


class Worker:
    def __init__(self, *, cfg: RankConfig, transport: Transport, runner: ChunkRunner, rules: ChunkRules,
                 progress: Progress, ctx: dict) -> None:
        self.cfg, self.transport, self.runner, self.rules = cfg, transport, runner, rules
        self.progress, self.ctx = progress, ctx
        self.cache_epoch = 0
        self.chunks = 0
        self.last: Envelope | None = None
        self.before_cut: Envelope | None = None  # the last envelope of the previous cache epoch

    def run(self) -> dict:
        while True:
            self.progress.idle("waiting for a header")
            env = self.transport.recv()
            header = env.header
            if header.action == Action.SHUTDOWN:
                log.info(f"SHUTDOWN received at call_id {header.call_id}")
                return {"chunks": self.chunks}
            if header.action == Action.NOOP:
                continue
            self.rules.begin(header.chunk_index, header.call_id)
            env = self._delivered(env)
            self._fence(env)
            result = self.runner.run(env)
            self.rules.end(env, result)
            self.last = env
            self.chunks += 1

    def _delivered(self, env: Envelope) -> Envelope:
        """The envelope this rank acts on: the received one, or (failpoint) a late duplicate from before the cut.

        A received hard cut moves the fence's epoch whatever this rank then acts on: a duplicate of the old
        epoch acted on at the cut itself is as stale as one a chunk later.
        """
        if env.meta["tp_reset_kv_cache"]:
            self.before_cut = self.last
            self.cache_epoch = env.header.cache_epoch
        if failpoint("worker.replay", False, **self.ctx) and self.before_cut is not None:
            return self.before_cut
        return env

    def _fence(self, env) -> None:
        epoch = env.header.cache_epoch
        if epoch != self.cache_epoch and "epoch_fence" in self.cfg.guardrails:
            raise Fatal("STALE_EPOCH", f"envelope of cache epoch {epoch} while this rank is in epoch {self.cache_epoch}")
