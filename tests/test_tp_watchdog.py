"""The progress deadline: who is blamed when a rank stops making progress.

The watchdog reads the main thread's stack. These tests run its check on the test's own thread: a call
made from code whose file lives under torch/distributed stands for a rank blocked in a collective.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from tp import handshake
from tp.watchdog import Progress, Watchdog, in_collective

TIMEOUT_S = 1.0
_FAKE_C10D = "/site-packages/torch/distributed/distributed_c10d.py"
_namespace: dict = {}
exec(compile("def all_reduce(check):\n    return check()\n", _FAKE_C10D, "exec"), _namespace)
inside_a_collective = _namespace["all_reduce"]


class Died(Exception):
    """What ``Crash.die`` would have done (it exits the process)."""


class _Crash:
    def die(self, fatal, *, dump_stack: bool = False, via=None):
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


# -- the handshake deferral: the main thread dies of rank 0's verdict, not of the abort that follows it ------


def _handshake_watchdog(store: dist.Store, main_ident: int) -> Watchdog:
    wd = Watchdog(crash=_Crash(), store_factory=lambda: store, rank=1, driver_rank=0, world_size=2, heartbeat_s=0.05,
                  peer_timeout_s=2.0, progress_timeout_s=TIMEOUT_S, progress=Progress())
    wd.main_ident = main_ident
    return wd


@pytest.fixture
def waiting_in_handshake():
    """A thread inside ``tp.handshake.run``, waiting for a verdict on a store of its own (it never gets one)."""
    main_store = dist.HashStore()
    record = {"protocol": 1}
    thread = threading.Thread(target=lambda: _swallow(lambda: handshake.run(
        main_store, rank=1, world_size=2, record=record, timeout_s=5.0)), daemon=True)
    thread.start()
    main_store.wait(["tp/hs/1"], timedelta(seconds=60))  # its record is out: it is in the verdict wait now
    yield thread.ident
    main_store.set(handshake.VERDICT, '{"ok": true}')
    thread.join(timeout=60)


def _swallow(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - a verdict or timeout ends the helper thread; the test reads the watchdog
        pass


def test_a_published_verdict_is_held_for_one_peer_timeout_while_the_main_thread_waits_for_it(waiting_in_handshake) -> None:
    store = dist.HashStore()  # the watchdog's own connection: the verdict is visible there first
    store.set(handshake.VERDICT, '{"ok": false, "code": "PLAN_MISMATCH", "detail": "plan differs"}')
    wd = _handshake_watchdog(store, waiting_in_handshake)
    now = time.monotonic()
    assert wd._defer(now) is True
    assert wd._defer(now + 1.9) is True
    assert wd._defer(now + 2.1) is False  # a main thread that never read it is stuck: the abort ends it
    wd.settle()
    assert wd._defer(now) is False


def test_nothing_is_held_before_a_verdict_exists(waiting_in_handshake) -> None:
    wd = _handshake_watchdog(dist.HashStore(), waiting_in_handshake)  # rank 0 died before publishing one
    assert wd._defer(time.monotonic()) is False


def test_nothing_is_held_for_a_main_thread_stuck_outside_the_handshake() -> None:
    store = dist.HashStore()
    store.set(handshake.VERDICT, '{"ok": false, "code": "HANDSHAKE_TIMEOUT", "detail": "rank(s) [1] did not publish"}')
    stuck = threading.Event()
    thread = threading.Thread(target=stuck.wait, args=(60,), daemon=True)  # stuck in Python before its handshake
    thread.start()
    try:
        assert _handshake_watchdog(store, thread.ident)._defer(time.monotonic()) is False
    finally:
        stuck.set()
        thread.join(timeout=60)
