"""A zygote that never becomes ready is given up at its deadline, and ended: no process is left waiting on it."""

from __future__ import annotations

import psutil
import pytest

from harness.launch import wait_gone, zygote


def test_a_zygote_stuck_before_ready_is_killed_when_given_up(tmp_path, monkeypatch) -> None:
    (tmp_path / "stuck_import.py").write_text("import threading\nthreading.Event().wait()\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the zygote imports its preload list before it says ready
    stuck = zygote.Zygote(preload=("stuck_import",))
    try:
        with pytest.raises(zygote.ZygoteError, match="did not become ready within 2 s"):
            stuck.spawn(module="nothing", argv=[], env={}, cwd=str(tmp_path), log=str(tmp_path / "log"),
                        on_exit=lambda *_: None, timeout_s=2)
        try:
            left = wait_gone([psutil.Process(stuck.pid)], timeout_s=10)
        except psutil.NoSuchProcess:  # killed and reaped already
            left = []
        assert left == [], "the stuck zygote outlived being given up"
    finally:
        stuck.close()
