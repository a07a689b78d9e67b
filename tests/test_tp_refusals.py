"""The TP path refuses what would only fail at run time, before any process group (or rank) exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tp import config, failpoints

REPO = Path(__file__).resolve().parent.parent
BASE = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TP_HEARTBEAT_S": "inf"}, "invalid TP_HEARTBEAT_S 'inf': expected seconds > 0 (finite, at most 86400)"),
        ({"TP_PEER_TIMEOUT_S": "inf"}, "invalid TP_PEER_TIMEOUT_S 'inf'"),
        ({"TP_PEER_TIMEOUT_S": "nan"}, "invalid TP_PEER_TIMEOUT_S 'nan'"),
        ({"TP_COLLECTIVE_TIMEOUT_S": "1e300"}, "invalid TP_COLLECTIVE_TIMEOUT_S '1e300'"),
        ({"TP_HEARTBEAT_S": "3", "TP_PEER_TIMEOUT_S": "2"}, "TP_HEARTBEAT_S 3 is longer than TP_PEER_TIMEOUT_S 2"),
    ],
)
def test_env_values_must_be_finite_and_sane(env: dict, message: str) -> None:
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.from_env({**BASE, **env})


def test_a_sleep_that_would_overflow_is_refused() -> None:
    with pytest.raises(failpoints.FailpointError, match=r"sleep needs seconds.*got '1e20' \(finite, 0\.\.86400\) at .* in TP_FAILPOINTS"):
        failpoints.parse("generator.call=sleep(1e20)")
    huge = "generator." + "x" * 120_000
    with pytest.raises(failpoints.FailpointError) as info:
        failpoints.parse(huge + "=raise")
    assert len(str(info.value)) < 1000 and "(120010 characters)" in str(info.value)


def _tp(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in BASE}
    return subprocess.run([sys.executable, "-m", "tp", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_world_size_the_model_cannot_split_is_refused_before_spawning() -> None:
    proc = _tp("--world-size", "12", "--chunks", "1")
    assert proc.returncode == 2
    assert proc.stderr.startswith("tp: --world-size: world size 12 must divide"), proc.stderr
    assert "[r0]" not in proc.stderr  # no rank was spawned


def test_check_flags_answer_one_json_line_per_value() -> None:
    proc = _tp("--check-failpoints", "generator.call=raise@rank=1", "--check-failpoints", "a.b=exit(999999)",
               "--check-guardrails", "all,-preflite", "--check-world-size", "2",
               "--check-env", '{"TP_PEER_TIMEOUT_S": "inf"}', "--check-env", '{"TP_PLAN": "v1_full_pipeline"}')
    assert proc.returncode == 2
    docs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(d["check"], d["ok"]) for d in docs] == [("failpoints", True), ("failpoints", False),
                                                     ("guardrails", False), ("world_size", True),
                                                     ("env", False), ("env", True)]
    assert "invalid TP_PEER_TIMEOUT_S 'inf'" in docs[4]["error"]
    assert "no such failpoint 'a.b'" in docs[1]["error"]
    assert "unknown guardrail 'preflite'" in docs[2]["error"]
