"""The driver: the whole pipeline per chunk, and the only source of randomness.

The driver is rank 0 unless ``TP_DRIVER_RANK`` names another rank. It owns
conditioning, timesteps, cache decisions, latents (drawn with a seeded
generator and broadcast: randomness is data), KV recompute, denoise, decode
(the driver only), advance ``current_start_frame``.
"""

from __future__ import annotations

import hashlib
import threading
import time

import torch

from tp import ENVELOPE_VERSION, flight, log
from tp.chunk import ChunkRules, ChunkRunner
from tp.config import RankConfig
from tp.crash import Fatal, lost_peer
from tp.envelope import Action, EnvelopeError, Header, quantise
from tp.failpoints import failpoint
from tp.transport import Transport
from tp.watchdog import Progress

DENOISING_STEPS = (1000, 750, 500, 250)


def embed_prompt(prompt: str, *, tokens: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """Deterministic conditioning: a stand-in text encoder keyed by the prompt's hash."""
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little") >> 1
    return torch.randn(tokens, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


class Driver:
    def __init__(self, *, cfg: RankConfig, transport: Transport, runner: ChunkRunner, rules: ChunkRules,
                 progress: Progress, stop: threading.Event) -> None:
        self.cfg, self.transport, self.runner, self.rules = cfg, transport, runner, rules
        self.progress, self.stop = progress, stop
        self.call_id = 0
        self.cache_epoch = 0
        self.results: list[tuple[int, int, torch.Tensor]] = []  # (cache_epoch, chunk, decoded)
        self.latencies: list[float] = []

    def run(self) -> dict:
        cfg, gen = self.cfg, self.runner.gen
        prompt = "a red fox running through fresh snow"
        cond = embed_prompt(prompt, tokens=gen.cfg.cond_tokens, dim=gen.cfg.dim, dtype=gen.dtype)
        previous: torch.Tensor | None = None
        start_frame = 0
        frames, tokens = self.runner.frames, gen.tokens_per_frame
        for chunk in range(cfg.chunks):
            # The driver is never legitimately idle between chunks: a rank stuck here in Python must hit the
            # progress deadline, while the workers, waiting for a header, are idle and must not.
            self.progress.busy(f"preparing chunk {chunk}")
            failpoint("driver.idle", rank=cfg.rank, chunk=chunk, call_id=self.call_id)
            if self.stop.is_set():
                log.info(f"SIGTERM: shutting down before chunk {chunk}")
                break
            t0 = time.monotonic()
            reset = chunk % cfg.reset_every == 0
            if reset:
                self.cache_epoch += 1
                start_frame, previous = 0, None
            recompute = (not reset) and cfg.kv_recompute
            self.rules.begin(chunk, self.call_id)
            steps = torch.tensor(DENOISING_STEPS, dtype=torch.int64)
            n_steps = failpoint("driver.plan", len(DENOISING_STEPS), rank=cfg.rank, chunk=chunk, call_id=self.call_id)
            latents = self._latents(chunk)
            override = previous if recompute else None
            override = failpoint("driver.override", override, rank=cfg.rank, chunk=chunk, call_id=self.call_id) if recompute else None
            tensors = {"latents": latents, "conditioning_embeds": cond, "denoising_step_list": steps}
            if override is not None:
                tensors["context_frames_override"] = override
            aux = self._aux(chunk)
            meta = {
                "tp_plan": cfg.plan, "tp_envelope_version": ENVELOPE_VERSION, "height": 16, "width": 16,
                "current_start_frame": start_frame, "init_cache": chunk == 0, "manage_cache": True,
                "tp_reset_kv_cache": reset, "tp_reset_crossattn_cache": reset, "tp_do_kv_recompute": recompute,
                "tp_num_denoise_steps": n_steps, "tp_expected_generator_calls": n_steps + int(recompute),
                "kv_cache_attention_bias": 0.0, "base_seed": cfg_seed(0),
                "context_frames_override": "tensor" if override is not None else None,
            }
            meta = failpoint("driver.meta", meta, rank=cfg.rank, chunk=chunk, call_id=self.call_id)
            header = Header(action=Action.INFER, call_id=self.call_id, chunk_index=chunk, cache_epoch=self.cache_epoch)
            env = self._send(header, meta, tensors, aux)
            if env is None:
                return self._idle_after_failure()
            result = self.runner.run(env)
            self.call_id += result.calls
            self.rules.end(env, result)
            self._deliver(chunk, result.latents, frames, tokens)
            previous = result.latents
            start_frame += frames
            self.latencies.append((time.monotonic() - t0) * 1e3)
            log.event("chunk", rank=cfg.rank, chunk=chunk, calls=result.calls, latency_ms=round(self.latencies[-1], 3),
                      cache_epoch=self.cache_epoch)
        self.transport.send_control(Header(action=Action.SHUTDOWN, call_id=self.call_id))
        return self._summary()

    def _latents(self, chunk: int) -> torch.Tensor:
        """This chunk's noise: the driver's randomness, sent as data."""
        gen, rows = self.runner.gen, self.runner.frames * self.runner.gen.tokens_per_frame
        latents = torch.randn(rows, gen.cfg.channels, dtype=torch.float64,
                              generator=torch.Generator().manual_seed(cfg_seed(chunk))).to(gen.dtype)
        latents = failpoint("driver.latents", latents, rank=self.cfg.rank, chunk=chunk, call_id=self.call_id)
        if isinstance(latents, str):  # set(DTYPE): the late dtype change FM-02 is made of
            from tp.dtypes import dtype_from_name
            latents = torch.zeros(rows, gen.cfg.channels).to(dtype_from_name(latents))
        return latents

    def _aux(self, chunk: int) -> torch.Tensor | None:
        """The legacy side channel outside the envelope's schema (FM-08), only when ``driver.aux`` flips."""
        if not failpoint("driver.aux", False, rank=self.cfg.rank, chunk=chunk, call_id=self.call_id):
            return None
        gen = self.runner.gen
        return torch.randn(self.runner.frames, gen.tokens_per_frame // 2, gen.cfg.channels, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(7)).to(gen.dtype)

    def _send(self, header, meta, tensors, aux):
        try:
            return self.transport.send(header, meta, tensors, aux)
        except (EnvelopeError, Fatal, RuntimeError, ValueError, TypeError) as exc:
            code = getattr(exc, "code", None)
            if not self.transport.header_sent:
                raise Fatal(code or "INTERNAL_ERROR", str(exc)) from None
            if "poison_on_post_header_error" in self.cfg.guardrails:
                if isinstance(exc, RuntimeError) and lost_peer(str(exc)):
                    raise  # a peer died mid-envelope: not this envelope's fault; the runtime names that peer
                raise Fatal("POST_HEADER_ERROR", f"after the header of call_id {header.call_id}: "
                                                 f"{type(exc).__name__}: {exc}") from None
            # Legacy serving loop: log, drop the request, wait for the next one.
            log.info(f"request failed after header ({type(exc).__name__}: {exc}); waiting for the next request")
            return None

    def _idle_after_failure(self) -> dict:
        self.progress.idle("waiting for the next request")
        if flight.recorder is not None:
            flight.recorder.idle = "waiting for the next request"
        self.stop.wait()
        self.transport.send_control(Header(action=Action.SHUTDOWN, call_id=self.call_id))
        return self._summary()

    def _deliver(self, chunk: int, latents: torch.Tensor, frames: int, tokens: int) -> None:
        """Decode (the driver only) and hand the frames to the output, fenced by cache epoch."""
        decoded = latents.reshape(frames, tokens, -1).mean(-1)
        if failpoint("driver.late_result", False, rank=self.cfg.rank, chunk=chunk, call_id=self.call_id):
            # A result computed in an earlier cache epoch arrives after the hard cut (before any cut there is none).
            late = [r for r in self.results if r[0] != self.cache_epoch]
            if late:
                self._accept(*late[-1])
        self._accept(self.cache_epoch, chunk, decoded)

    def _accept(self, epoch: int, chunk: int, decoded: torch.Tensor) -> None:
        if "epoch_fence" in self.cfg.guardrails and epoch != self.cache_epoch:
            log.event("stale_dropped", rank=self.cfg.rank, chunk=chunk, result_epoch=epoch, cache_epoch=self.cache_epoch)
            return
        self.results.append((epoch, chunk, decoded))

    def _summary(self) -> dict:
        h = hashlib.sha256()
        for _, _, decoded in self.results:
            h.update(quantise(decoded).numpy().tobytes())
        if self.cfg.output:
            self._save(self.cfg.output)
        return {"output_digest": h.hexdigest()[:16], "chunks": len(self.latencies), "calls": self.call_id,
                "chunk_latency_ms": [round(x, 3) for x in self.latencies], "world_size": self.cfg.world_size,
                "delivered": len(self.results)}

    def _save(self, path: str) -> None:
        """The delivered frames as a torch file, for comparing runs beyond the digest (``--output``)."""
        torch.save({"chunks": [chunk for _, chunk, _ in self.results],
                    "frames": [decoded.detach().cpu() for _, _, decoded in self.results],
                    "world_size": self.cfg.world_size, "backend": self.cfg.backend,
                    "device": self.cfg.device_type, "dtype": self.cfg.dtype_name}, path)
        log.info(f"saved {len(self.results)} delivered chunks to {path}")


def cfg_seed(chunk: int) -> int:
    return 20261125 + chunk
