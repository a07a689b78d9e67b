"""The judge on zero-touch runs: whose fault it was, and why an output could not be read.

Real ranks of stand-in engines (real gloo process groups, the bootstrap's real faults), run through
``python -m harness run --engine``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

LATE_DEATH = """\
import atexit, os, time
from datetime import timedelta
import torch, torch.distributed as dist

dist.init_process_group("gloo")
if dist.get_rank() == 0:
    atexit.register(time.sleep, 8)  # a slow teardown: rank 0 ends long after it failed
    dist.all_reduce(torch.ones(4))  # pairs with rank 1's second: rank 1 skipped its first
    dist.all_reduce(torch.ones(4), async_op=True).wait(timeout=timedelta(seconds=1))  # never paired: times out
else:
    dist.all_reduce(torch.ones(4))
    dist.all_reduce(torch.ones(4))
    time.sleep(3)  # the engine's work after its last collective, then a native abort (no Python traceback)
    os.abort()
"""
"""Rank 1's fault (a skipped all_reduce) makes rank 0's engine timeout raise (its TP-FATAL comes first); rank 1
then dies of SIGABRT with no TP-FATAL, and only then rank 0 ends, after its slow teardown."""


def _run(tmp_path: Path, engine: str, *args: str, command: str = "python engine.py",
         deadline: str = "60") -> tuple[subprocess.CompletedProcess, dict]:
    """``run --engine COMMAND`` with ``engine`` as engine.py in ``tmp_path``; its output and its result.json."""
    (tmp_path / "engine.py").write_text(engine)
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--engine", command, "--deadline", deadline,
                           "--report-dir", str(tmp_path / "r"), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=200)
    result = json.loads(next((tmp_path / "r").glob("2*/adhoc-ws*/result.json")).read_text())
    return proc, result


def test_the_faulted_rank_that_died_first_is_the_root_cause_without_a_fatal_line(tmp_path: Path) -> None:
    proc, result = _run(tmp_path, LATE_DEATH, "--fault", "collective.all_reduce=skip@rank=1,call=1", "--expect",
                        "crash")
    assert result["observed"] == "CRASHED", proc.stdout + proc.stderr
    ranks = {r["rank"]: r for r in result["ranks"]}
    assert ranks[1]["exit"] == "SIGABRT" and ranks[1]["code"] is None
    assert ranks[0]["code"] == "UNCAUGHT_EXCEPTION", "rank 0's engine timeout printed its TP-FATAL before rank 1 died"
    assert result["root_cause"]["rank"] == 1, result["root_cause"]
    assert (ranks[1]["role"], ranks[0]["role"]) == ("root cause", "collateral")
    assert "its own fault fired" in result["root_cause"]["how"], result["root_cause"]


def test_an_output_regex_that_matches_nothing_says_so_with_rank_0s_last_lines(tmp_path: Path) -> None:
    engine = "print('loading', flush=True)\nprint('tokens: [4, 41]', flush=True)\n"
    proc, result = _run(tmp_path, engine, "--world-size", "1", "--output-regex", r"answer: (\d+)")
    assert proc.returncode == 1 and result["observed"] == "HARNESS_ERROR", proc.stdout + proc.stderr
    assert ("output regex 'answer: (\\\\d+)' matched nothing in rank 0's stdout (last lines: loading | "
            "tokens: [4, 41])") in result["reason"], result["reason"]


ENGINE = Path(__file__).resolve().parent.parent / "fixtures" / "engines" / "dtensor_engine.py"


def _fixture_engine(tmp_path: Path, fault: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The fixture engine with a 3 s process-group timeout of its own, supervised as if a hang were wanted."""
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--engine", f"{sys.executable} {ENGINE}",
                           "--env", "ENGINE_PG_TIMEOUT_S=3", "--fault", fault, "--expect", "hang", "--deadline", "30",
                           "--report-dir", str(tmp_path / "r")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=200)
    return proc, json.loads(next((tmp_path / "r").glob("2*/adhoc-ws*/result.json")).read_text())


def test_an_engine_s_own_timeout_decides_the_verdict_not_what_was_expected(tmp_path: Path) -> None:
    # Rank 1 skips a collective: the ranks pair the wrong calls and stall; the engine's 3 s group timeout ends
    # them. HUNG was allowed, yet the proven stall at ~1 s does not end the run while that timeout is due.
    proc, result = _fixture_engine(tmp_path, "collective.all_reduce=skip@rank=1,call=3")
    assert result["observed"] == "CRASHED", proc.stdout + proc.stderr
    assert result["stall"] and result["stall"]["at_s"] < 3, result["stall"]
    assert "own 3 s timeout on its" in result["stall"]["awaited"], result["stall"]
    assert 3 <= result["first_failure_s"] <= result["time_to_crash_s"] < 10, result
    # Whichever rank's timeout printed first, the skip began it.
    assert result["root_cause"]["rank"] == 1, result["root_cause"]
    assert "its injected fault (skip) fired" in result["root_cause"]["how"], result["root_cause"]


def test_a_rank_frozen_by_its_own_fault_is_reaped_when_alone_whatever_was_expected(tmp_path: Path) -> None:
    proc, result = _fixture_engine(tmp_path, "collective.all_reduce=kill(SIGSTOP)@rank=1,call=3")
    assert result["observed"] == "CRASHED", proc.stdout + proc.stderr
    ranks = {r["rank"]: r for r in result["ranks"]}
    assert ranks[0]["code"] == "UNCAUGHT_EXCEPTION" and ranks[1]["frozen"], ranks
    assert result["root_cause"]["rank"] == 1 and result["time_to_crash_s"] < 10, result


def test_an_engine_run_with_the_bootstrap_off_is_judged_on_the_same_output(tmp_path: Path) -> None:
    # CONTRACT §7's opt-out: the bootstrap does nothing, so the harness reads rank 0's answer from its log, and
    # digests it as the bootstrap digested the healthy run's (which ran with it on): the same answer, CLEAN.
    engine = "import sys\nprint('warming up', file=sys.stderr)\nprint('tokens: [4, 41, 7]', flush=True)\n"
    proc, result = _run(tmp_path, engine, "--world-size", "1", "--output-regex", r"tokens: (.*)", "--expect", "clean",
                        "--env", "BREAKIT_ENGINE_BOOT=0")
    assert result["observed"] == "CLEAN" and result["passed"], proc.stdout + proc.stderr
    assert result["digests"]["rank0_final"] == result["digests"]["baseline"], result["digests"]


TWO_CALLS = """\
import torch, torch.distributed as dist

dist.init_process_group("gloo")
dist.all_reduce(torch.ones(4))
dist.all_reduce(torch.ones(4))
print("tokens: [1]", flush=True)
"""


def test_a_rank_under_a_wrapper_that_did_not_exec_it_is_judged_by_its_own_death_and_said_so(tmp_path: Path) -> None:
    # The shell reports the rank's SIGKILL as its own exit 137; without exec the harness started the shell.
    (tmp_path / "run.sh").write_text("python engine.py\n")
    proc, result = _run(tmp_path, TWO_CALLS, "--fault", "collective.all_reduce=kill(SIGKILL)@rank=1,call=1",
                        "--expect", "crash", command="bash run.sh")
    assert result["observed"] == "CRASHED" and result["passed"], proc.stdout + proc.stderr
    assert result["root_cause"]["rank"] == 1 and result["ranks"][1]["exit"] == "SIGKILL", result["root_cause"]
    assert "(a wrapper that did not exec it)" in result["reason"] and "'exec python ...'" in result["reason"]


def test_an_engine_that_exits_2_is_not_said_to_reject_a_contract_configuration(tmp_path: Path) -> None:
    engine = "import sys\nprint('usage: engine [--layers N]', file=sys.stderr)\nsys.exit(2)\n"
    proc, result = _run(tmp_path, engine, "--world-size", "1", "--expect", "clean", "--env", "A=1")
    assert result["observed"] == "HARNESS_ERROR", proc.stdout + proc.stderr
    assert "the engine command failed in rank 0 (exit 2): usage: engine [--layers N]" in result["reason"]
    assert "CONTRACT §3" not in result["reason"], result["reason"]


def test_a_rank_frozen_under_a_wrapper_that_did_not_exec_it_is_seen_frozen(tmp_path: Path) -> None:
    # The harness signals and watches the rank its init event names, not the shell: rank 0's own 3 s timeout
    # ends it, and rank 1, stopped under its shell, is reaped as frozen by its own fault.
    (tmp_path / "run.sh").write_text("python engine.py\n")
    timed = TWO_CALLS.replace('init_process_group("gloo")',
                              'init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=3))')
    proc, result = _run(tmp_path, timed, "--fault", "collective.all_reduce=kill(SIGSTOP)@rank=1,call=1", "--expect",
                        "crash", command="bash run.sh", deadline="20")
    assert result["observed"] == "CRASHED" and result["passed"], proc.stdout + proc.stderr
    assert result["ranks"][1]["frozen"] and result["root_cause"]["rank"] == 1, result["reason"]
    assert not result["leftovers"], result["leftovers"]


TP_GROUP = """\
import torch, torch.distributed as dist

dist.init_process_group("gloo")
tp = dist.new_group(list(range(dist.get_world_size())))  # the model's collectives run on a group of their own
dist.barrier()
for _ in range(3):
    dist.all_reduce(torch.ones(4), group=tp)
print("tokens: [1]", flush=True)
"""


def test_a_hang_in_a_tp_group_of_every_rank_is_proven_from_its_traces(tmp_path: Path) -> None:
    # Only the default group was traced: a hang in the TP group showed no open collective, waited for the
    # deadline, and named no divergence ("none: the traced ranks agree ... up to seq 0 barrier").
    proc, result = _run(tmp_path, TP_GROUP, "--fault", "collective.all_reduce=hang@rank=1,call=2", "--expect", "hang",
                        "--deadline", "30")
    assert result["observed"] == "HUNG", proc.stdout + proc.stderr
    assert result["hang_verdict_s"] is not None and result["hang_verdict_s"] < 10, result["reason"]
    line = result["divergence"]["line"]
    assert line.startswith("seq 1 of process group 1: rank 0 all_reduce float32[4] (all_reduce call 2"), line
    assert "rank 1 never entered it" in line, line


WATCHDOG = """\
import os, threading, time
import torch, torch.distributed as dist

dist.init_process_group("gloo")
def watchdog():  # the engine's own guardrail: a step that takes too long ends the process, no traceback
    time.sleep(2.0)
    print("watchdog: decode step stuck for 2 s, exiting", flush=True)
    os._exit(3)
threading.Thread(target=watchdog, daemon=True).start()
dist.all_reduce(torch.ones(4))
dist.all_reduce(torch.ones(4))
print("tokens: [1]", flush=True)
os._exit(0)
"""


def test_an_engine_s_own_exit_status_after_the_fault_is_its_crash(tmp_path: Path) -> None:
    # A watchdog's os._exit(3) prints no TP-FATAL (it skips every hook): an engine promised no contract, so after
    # the fault fired that exit is how it crashed, not an end "outside the contract".
    proc, result = _run(tmp_path, WATCHDOG, "--fault", "collective.all_reduce=hang@rank=1,call=2", "--expect", "crash",
                        "--deadline", "30")
    assert result["observed"] == "CRASHED", proc.stdout + proc.stderr
    assert [r["exit"] for r in result["ranks"]] == ["exit 3", "exit 3"] and result["root_cause"]["rank"] == 1, result


LAUNCHER = """\
import subprocess, sys
# The engine's launcher starts the worker that prints the answer: the bootstrap watches the launcher only.
subprocess.run([sys.executable, "-c", "print('tokens: [7, 7]', flush=True)"], check=True)
"""


def test_an_answer_the_bootstrap_did_not_see_is_read_from_the_log_in_the_healthy_run_too(tmp_path: Path) -> None:
    proc, result = _run(tmp_path, LAUNCHER, "--world-size", "1", "--output-regex", r"tokens: (.*)", "--expect",
                        "clean", "--env", "A=1")
    assert result["observed"] == "CLEAN" and result["passed"], proc.stdout + proc.stderr
    assert result["digests"]["rank0_final"] == result["digests"]["baseline"] is not None, result["digests"]


def test_the_trace_s_group_numbering_is_one_number() -> None:
    from harness.engine.boot import _breakit_flight
    from harness.supervise import trace

    assert _breakit_flight.GROUP_STRIDE == trace.GROUP_STRIDE  # the bootstrap cannot import the harness
