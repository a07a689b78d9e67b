"""Reference rows: what bounds the other numbers on this box.

Runs ``benchmarks.collective_rank`` through the harness (zygote launch, the
same store hosting as a scenario) at each world size and reports per-op
latency of gloo collectives and of one store round trip, plus how many
collectives a steady-state chunk of the TP path runs. A chunk cannot be
faster than its collectives, and a guardrail that adds one collective per
chunk costs at least that collective's latency.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.launch import Launch, LaunchSpec
from harness.supervise import logs
from harness.supervise.loop import Limits, supervise

TIMEOUT_S = 60.0


def collectives_per_chunk() -> dict:
    """Collectives of one steady-state chunk (KV recompute + every denoise step) on the TP path."""
    from tp.config import RankConfig
    from tp.driver import DENOISING_STEPS
    from tp.model import ModelConfig

    calls = len(DENOISING_STEPS) + 1
    per_call = ModelConfig().layers * 3
    return {"generator_calls": calls, "all_reduces": calls * per_call,
            "envelope_broadcasts": "header + meta + one per tensor (4-5)", "digest_all_gathers": 1,
            "watchdog_heartbeat_s": RankConfig.__dataclass_fields__["heartbeat_s"].default}


def measure(*, world_size: int, iters: int, log_dir: Path, cwd: Path) -> dict:
    """Per-op latency at ``world_size`` (rank 0's view)."""
    spec = LaunchSpec(command=(sys.executable, "-m", "benchmarks.collective_rank", "--iters", str(iters)),
                      world_size=world_size, log_dir=log_dir, mode="zygote", cwd=cwd)
    launch = Launch(spec)
    try:
        launch.start()
        obs = supervise(launch, limits=Limits(deadline_s=TIMEOUT_S, run_timeout_s=TIMEOUT_S))
    finally:
        launch.close()
    bad = {r: e.returncode for r, e in obs.exits.items() if e.returncode != 0}
    if obs.hung or bad:
        raise RuntimeError(f"collective micro-benchmark at world size {world_size} failed "
                           f"({obs.hang_reason or bad}); logs in {log_dir}")
    final = logs.final_json(logs.read_text(log_dir / "rank0.log"), "collective_bench")
    if final is None:
        raise RuntimeError(f"collective micro-benchmark: rank 0 printed no result; log in {log_dir}")
    return final["collective_bench"]


def run(*, world_sizes: tuple[int, ...], iters: int, work_dir: Path, cwd: Path, say) -> dict:
    """The ``reference`` section of bench.json."""
    out = {"iters": iters, "launch": "zygote", "per_chunk": collectives_per_chunk(), "world_sizes": {}}
    for ws in world_sizes:
        ops = measure(world_size=ws, iters=iters, log_dir=work_dir / f"ws{ws}", cwd=cwd)
        out["world_sizes"][str(ws)] = ops
        say(f"reference: ws{ws} " + "  ".join(f"{name.split(' (')[0]} {v['median_us']} us" for name, v in ops.items()))
    return out
