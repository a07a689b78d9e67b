"""The progress deadline: who is blamed when a rank stops making progress.

The watchdog reads the main thread's stack. These tests run its check on the test's own thread: a call
made from code whose file lives under torch/distributed stands for a rank blocked in a collective.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch.distributed as dist

from tp.watchdog import Progress, Watchdog, in_collective

TIMEOUT_S = 1.0
_FAKE_C10D = "/site-packages/torch/distributed/distributed_c10d.py"
_namespace: dict = {}
exec(compile("def all_reduce(check):\n    return check()\n", _FAKE_C10D, "exec"), _namespace)
inside_a_collective = _namespace["all_reduce"]


class Died(Exception):
    """What ``Crash.die`` would have done (it exits the process)."""


class _Crash:
    def die(self, fatal, *, dump_stack: bool = False):
        raise Died(fatal)


def _watchdog(*, stalled_for: float, busy: bool = True) -> Watchdog:
    progress = Progress()
    (progress.busy if busy else progress.idle)("generator denoise call 7")
    progress.last = time.monotonic() - stalled_for
    return Watchdog(crash=_Crash(), store_factory=dist.HashStore, rank=0, driver_rank=0, world_size=1, heartbeat_s=0.05,
                    peer_timeout_s=2.0, progress_timeout_s=TIMEOUT_S, progress=progress)


def test_in_collective_reads_the_stack_not_the_thread_name() -> None:
    assert in_collective(sys._getframe()) is False
    assert inside_a_collective(lambda: in_collective(sys._getframe())) is True
    assert in_collective(None) is False


def test_a_rank_stuck_in_python_dies_at_the_deadline_and_names_itself_fm15() -> None:
    with pytest.raises(Died) as info:
        _watchdog(stalled_for=1.5 * TIMEOUT_S)._check_progress()
    fatal = info.value.args[0]
    assert fatal.code == "PROGRESS_TIMEOUT" and fatal.fm == "FM-15"
    assert "stuck outside any collective" in fatal.detail and "'generator denoise call 7'" in fatal.detail


def test_a_rank_waiting_in_a_collective_gives_the_stuck_peer_the_first_word() -> None:
    inside_a_collective(_watchdog(stalled_for=1.5 * TIMEOUT_S)._check_progress)  # no death yet
    with pytest.raises(Died) as info:
        inside_a_collective(_watchdog(stalled_for=2.5 * TIMEOUT_S)._check_progress)
    fatal = info.value.args[0]
    assert fatal.code == "PROGRESS_TIMEOUT" and fatal.fm is None and "waiting in a collective" in fatal.detail


def test_inside_the_deadline_or_idle_nothing_happens() -> None:
    _watchdog(stalled_for=0.5 * TIMEOUT_S)._check_progress()
    _watchdog(stalled_for=100 * TIMEOUT_S, busy=False)._check_progress()
