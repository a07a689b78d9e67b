"""Interrupts a third-party engine can trigger: after a time, after a log line, after a chunk reported under
torch's default-store prefix; and a run whose interrupt never fired says so first.

Against the stand-in engine (fixtures/ranks/fake_tp.py); ``FAKE_PREFIX_STORE`` makes it write its progress
through ``PrefixStore("default_pg", store)``, as an engine using ``init_process_group``'s store does, and its own
timeout (``FAKE_TIMEOUT_S``) ends the survivors of a SIGKILLed rank.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import Expect, Interrupt, Scenario
from harness.pipeline.runner import RunConfig, run_scenario

RANKS = Path(__file__).resolve().parent.parent / "fixtures" / "ranks"
FOLLOW = Expect.crash({0: r"TP-FATAL .*code=FAKE_TIMEOUT"})


def _run(tmp_path: Path, interrupt: Interrupt, expect: Expect = FOLLOW, chunks: int = 200, **env: str):
    config = RunConfig(run_dir=tmp_path / "run", tp_command=(sys.executable, "-m", "fake_tp"), cwd=RANKS,
                       deadline_s=8.0)
    scenario = Scenario(id="FM-14/interrupt", title="t", proves="watchdog", chunks=chunks, interrupt=interrupt,
                        expect=expect, env={"FAKE_CHUNK_S": "0.1", "FAKE_TIMEOUT_S": "1", **env})
    return run_scenario(scenario, config)


@pytest.mark.parametrize(
    ("interrupt", "env", "sent"),
    [(Interrupt(rank=1, signal="SIGKILL", after_s=0.5), {}, " s after init"),
     (Interrupt(rank=1, signal="SIGKILL", after_line=r'"event": "chunk".*"chunk": 3\b'), {}, "after its line"),
     (Interrupt(rank=1, signal="SIGKILL", after_chunk=3), {"FAKE_PREFIX_STORE": "1"}, "at chunk 3")],
    ids=["after-a-time", "after-a-log-line", "after-a-chunk-under-the-default-store-prefix"],
)
def test_an_interrupt_fires_on_what_the_engine_shows(tmp_path, interrupt, env, sent) -> None:
    result = _run(tmp_path, interrupt, **env)
    assert result.observed == "CRASHED" and result.passed, result.reason
    assert result.interrupt.startswith(f"sent SIGKILL to rank 1 (pid {result.ranks[1].pid}) ") and sent in \
        result.interrupt, result.interrupt
    assert result.anchor == "interrupt" and result.ranks[1].exit == "SIGKILL"


def test_a_run_whose_interrupt_never_fired_says_so_first(tmp_path) -> None:
    result = _run(tmp_path, Interrupt(rank=1, signal="SIGKILL", after_line="never printed"), chunks=3)
    assert not result.passed
    assert result.reason.startswith("the interrupt never fired: SIGKILL to rank 1 after a log line matching "
                                    "/never printed/ was never sent"), result.reason


def test_one_trigger_per_interrupt() -> None:
    with pytest.raises(ValueError, match="give one trigger of after_chunk, after_s, after_line; got after_chunk, "
                                         "after_s"):
        Interrupt(after_chunk=1, after_s=2.0)
    assert Interrupt().after_chunk == 2 and Interrupt(after_s=1).after_chunk is None
