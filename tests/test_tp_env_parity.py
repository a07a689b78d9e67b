"""Every env-parity key, proven by a real run: the last of 4 ranks differs on it, every rank exits at init.

The keys are written out here, independently of ``tp.config.ENV_PARITY_KEYS``: a key dropped from the
tuple (or from the values ranks publish) fails the comparison below *and* its own run, and a key added
to the tuple without a run here fails the comparison. Ranks are real ``python -m tp`` processes forked
from the harness's zygote around a launcher-hosted store (``LaunchSpec.rank_env`` may set
``TP_GUARDRAILS`` per rank, which a Scenario may not).
"""

from __future__ import annotations

import queue
import re
import sys
import time
from pathlib import Path

import pytest

from harness.launch import Launch, LaunchSpec
from tp import config

REPO = Path(__file__).resolve().parents[1]
WORLD_SIZE = 4
LAST = WORLD_SIZE - 1
EXIT_WITHIN_S = 20.0
"""Crash-vs-hang bound: the verdict comes within the 10 s handshake timeout; a rank still running at 20 s hangs."""

# key -> (the last rank's differing value, the fatal code every rank must exit with, what the detail names)
DIFFERING = {
    "TP_GUARDRAILS": ("all,-digest", "ENV_PARITY_MISMATCH", "env TP_GUARDRAILS differs"),
    "TP_DIGEST_EVERY": ("2", "ENV_PARITY_MISMATCH", "env TP_DIGEST_EVERY differs"),
    "TP_SYNC_KV_STATS": ("1", "ENV_PARITY_MISMATCH", "env TP_SYNC_KV_STATS differs"),
    "TP_KV_RECOMPUTE": ("0", "ENV_PARITY_MISMATCH", "env TP_KV_RECOMPUTE differs"),
    # A rank that believes in another driver is refused by the role check, which runs before env parity.
    "TP_DRIVER_RANK": (str(LAST), "PLAN_MISMATCH", "driver rank (role) differs"),
}
EXITS = {"ENV_PARITY_MISMATCH": 43, "PLAN_MISMATCH": 44}


def test_the_keys_proven_here_are_the_keys_ranks_compare() -> None:
    env = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert sorted(config.ENV_PARITY_KEYS) == sorted(DIFFERING)
    assert sorted(config.from_env(env).env_parity) == sorted(DIFFERING)


def _run(tmp_path: Path, rank_env: dict[str, str]) -> dict[int, tuple[int | None, str]]:
    """Start 4 ranks, the last with ``rank_env``; wait for every exit (bounded); return (exit, log) per rank."""
    spec = LaunchSpec(command=(sys.executable, "-m", "tp", "--chunks", "2"), world_size=WORLD_SIZE,
                      log_dir=tmp_path, env={"TP_GUARDRAILS": "all"}, rank_env={LAST: rank_env}, cwd=REPO)
    launch = Launch(spec)
    exits: dict[int, int | None] = {}
    try:
        launch.start()
        deadline_at = time.monotonic() + EXIT_WITHIN_S
        while len(exits) < WORLD_SIZE:
            try:
                kind, rank, code, _ = launch.events.get(timeout=max(0.0, deadline_at - time.monotonic()))
            except queue.Empty:
                break
            if kind == "exit":
                exits[rank] = code
    finally:
        launch.close()
    return {r: (exits.get(r), launch.log_paths[r].read_text()) for r in range(WORLD_SIZE)}


@pytest.mark.parametrize("key", sorted(DIFFERING))
def test_the_last_rank_differing_on_one_key_stops_every_rank_at_init(tmp_path, key: str) -> None:
    value, code, names = DIFFERING[key]
    ranks = _run(tmp_path, {key: value})
    for rank, (exit_code, log) in ranks.items():
        assert exit_code == EXITS[code], f"rank {rank} exited {exit_code}:\n{log[-2000:]}"
        fatal = re.search(rf"^TP-FATAL \S+ code={code} rank={rank} .*{re.escape(names)}.*\[{LAST}\]", log, re.MULTILINE)
        assert fatal, f"rank {rank} did not name {key} and rank {LAST}:\n{log[-2000:]}"
        assert '"event": "chunk"' not in log, f"rank {rank} ran a chunk before the verdict"
