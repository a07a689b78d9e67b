"""tp.liveness: the adaptive peer timeout learns from heartbeat gaps, within its floor and ceiling."""

from __future__ import annotations

import random

import pytest

from tp.config import ConfigError, from_env
from tp.liveness import Arrivals


def _feed(det: Arrivals, gaps) -> None:
    if det.last is None:
        det.arrived(0.0)
    t = det.last
    for gap in gaps:
        t += gap
        det.arrived(t)


def test_before_any_gap_the_expected_interval_gives_the_floor() -> None:
    det = Arrivals(floor_s=0.5, ceiling_s=2.0, expected_s=0.05)
    assert det.timeout() == 0.5  # a peer frozen right after start is caught as fast as any other
    slow = Arrivals(floor_s=0.5, ceiling_s=2.0, expected_s=0.5)
    assert 0.5 < slow.timeout() < 2.0  # made-up gaps 0.375 and 0.625 s: mean + 8 std = 1.5 s
    _feed(det, [0.05] * 10)
    assert det.timeout() == 0.5  # steady 50 ms beats: mean + k*std is far below the floor


def test_jittery_beats_raise_the_timeout_and_the_ceiling_bounds_it() -> None:
    rng = random.Random(7)
    det = Arrivals(floor_s=0.5, ceiling_s=2.0, expected_s=0.05)
    _feed(det, [0.05 + rng.expovariate(1 / 0.08) for _ in range(200)])
    mean = sum(det.gaps) / len(det.gaps)
    assert 0.5 < det.timeout() < 2.0 and det.timeout() > mean + 4 * 0.05
    _feed(det, [rng.choice([0.05, 1.5]) for _ in range(200)])
    assert det.timeout() == 2.0


def test_the_window_forgets_old_gaps() -> None:
    det = Arrivals(floor_s=0.1, ceiling_s=5.0, expected_s=1.0, window=20)
    _feed(det, [1.0] * 20)
    assert det.timeout() == pytest.approx(1.0)
    _feed(det, [0.05] * 20)
    assert det.timeout() == pytest.approx(0.1)


def test_floor_above_ceiling_is_a_config_error() -> None:
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234",
           "TP_PEER_TIMEOUT_S": "1", "TP_PEER_TIMEOUT_MIN_S": "1.5"}
    with pytest.raises(ConfigError, match="TP_PEER_TIMEOUT_MIN_S 1.5: must not exceed TP_PEER_TIMEOUT_S 1"):
        from_env(env)
    assert from_env({**env, "TP_PEER_TIMEOUT_MIN_S": "0.25"}).peer_timeout_min_s == 0.25
