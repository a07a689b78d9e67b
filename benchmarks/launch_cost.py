"""Launch cost: zygote vs plain subprocess, the two launch modes of ``harness.launch``.

Per rank: from the instant before ``Launch.start()`` (the store is hosted
inside it) to that rank's ``TP-EVENT init`` line, read from its ``mono``
field (``time.monotonic`` is system-wide, so the rank's clock is ours). The
ranks are killed once every one has printed ``init``: what comes after is the
TP path's own work, the same in both modes.

The one-time zygote start (``import torch`` in the zygote) is measured once,
before any zygote launch, and reported apart from the per-launch numbers.
A third row launches ``benchmarks.noop_rank`` from the zygote: the floor of
the mode before any TP code runs. The rows alternate launch by launch so that
load drifts hit all alike.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from benchmarks.stats import summary
from harness.launch import Launch, LaunchSpec, zygote
from harness.pipeline import options
from harness.supervise import logs

TP_RANK = (*options.default("tp_command"), "--chunks", "1", "--backend", "gloo")
NOOP_RANK = (sys.executable, "-m", "benchmarks.noop_rank")
ROWS = {
    "zygote": ("zygote", TP_RANK),
    "subprocess": ("subprocess", TP_RANK),
    "zygote, no-op rank (floor)": ("zygote", NOOP_RANK),
}
"""Row name -> (launch mode, rank command)."""
INIT_TIMEOUT_S = 60.0


def time_to_init(mode: str, command: tuple[str, ...], *, world_size: int, log_dir: Path,
                 cwd: Path) -> dict[int, float]:
    """Start ``world_size`` ranks in ``mode``; seconds from launch start to each rank's init."""
    spec = LaunchSpec(command=command, world_size=world_size, log_dir=log_dir, mode=mode, cwd=cwd,
                      env={"TP_FAILPOINTS": "", "TP_GUARDRAILS": "all"})
    launch = Launch(spec)
    followers = {r: logs.LogFollower(p) for r, p in launch.log_paths.items()}
    inits: dict[int, float] = {}
    started_at = time.monotonic()
    try:
        launch.start()
        give_up_at = started_at + INIT_TIMEOUT_S
        while len(inits) < world_size:
            if time.monotonic() > give_up_at:
                missing = sorted(set(range(world_size)) - set(inits))
                raise RuntimeError(f"{mode} launch: no init event from rank(s) {missing} within "
                                   f"{INIT_TIMEOUT_S:g} s; logs in {log_dir}")
            for rank, follower in followers.items():
                for text in follower.read_new():
                    line = logs.parse_line(text)
                    if line is not None and line.event == "init" and line.mono is not None:
                        inits.setdefault(rank, line.mono - started_at)
            time.sleep(0.005)  # the time comes from the log line, not from when it is read
    finally:
        launch.close()
    return inits


def zygote_start() -> float:
    """Seconds until the shared zygote (torch imported) is ready; 0 if it already was."""
    started_at = time.monotonic()
    forker = zygote.shared()
    if not forker._ready.wait(timeout=INIT_TIMEOUT_S):  # the client has no public readiness wait
        raise RuntimeError(f"the zygote was not ready within {INIT_TIMEOUT_S:g} s")
    return time.monotonic() - started_at


def run(*, launches: int, world_size: int, work_dir: Path, cwd: Path, say) -> dict:
    """The ``launch`` section of bench.json."""
    start_s = zygote_start()
    say(f"launch: zygote ready in {start_s:.2f} s; {launches} launches per mode at world size {world_size}")
    names = list(ROWS)
    samples: dict[str, dict[int, list[float]]] = {n: {r: [] for r in range(world_size)} for n in names}
    for i in range(launches):
        for j, name in enumerate(names[i % len(names):] + names[:i % len(names)]):
            mode, command = ROWS[name]
            got = time_to_init(mode, command, world_size=world_size, log_dir=work_dir / f"{i}-{j}", cwd=cwd)
            for rank, seconds in got.items():
                samples[name][rank].append(seconds * 1e3)
    modes = {}
    for mode, per_rank in samples.items():
        pooled = [ms for values in per_rank.values() for ms in values]
        modes[mode] = {
            "launch_mode": ROWS[mode][0],
            "rank_command": " ".join(["python", *ROWS[mode][1][1:]]),
            "per_rank_ms": {str(r): summary(v, digits=2) for r, v in per_rank.items()},
            "all_ranks_ms": summary(pooled, digits=2),
        }
    zyg = modes["zygote"]["all_ranks_ms"]["median"]
    sub = modes["subprocess"]["all_ranks_ms"]["median"]
    return {
        "world_size": world_size,
        "launches_per_mode": launches,
        "measured": "launch start (store hosting included) -> the rank's TP-EVENT init mono; ms",
        "zygote_start_s": round(start_s, 3),
        "modes": modes,
        "ratio_subprocess_over_zygote": round(sub / zyg, 1) if zyg else None,
    }
