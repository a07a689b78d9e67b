"""The flight trace: a bounded ring, dumps as a file or a log line, SIGUSR1 off the main thread."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import torch

from tp import flight


def _recorder(tmp_path=None, entries=4) -> flight.Recorder:
    return flight.Recorder(rank=1, world_size=2, ctx={"chunk": 3, "call_id": 7}, entries=entries,
                           report_dir=str(tmp_path) if tmp_path else None)


def test_ring_keeps_the_last_entries_and_marks_open_ones() -> None:
    rec = _recorder()
    for i in range(6):
        entry = rec.enter("broadcast", torch.zeros(i + 1, dtype=torch.int64), "envelope header", 0)
        if i < 5:
            rec.leave(entry)
    doc = rec.document("exit")
    assert [e["seq"] for e in doc["entries"]] == [2, 3, 4, 5]
    assert doc["next_seq"] == 6
    last = doc["entries"][-1]
    assert last["leave"] is None and last["shapes"] == [[6]] and last["dtypes"] == ["int64"]
    assert last["root"] == 0 and last["chunk"] == 3 and last["call_id"] == 7
    assert all(e["leave"] >= e["enter"] for e in doc["entries"][:-1])


def test_generator_site_names_the_call() -> None:
    rec = _recorder()
    rec.enter("all_reduce", torch.zeros(2, 3, dtype=torch.float64), flight.GENERATOR_SITE)
    entry = rec.document("exit")["entries"][0]
    assert entry["site"] == "generator call 7" and entry["op"] == "all_reduce" and entry["dtypes"] == ["float64"]


def test_dump_writes_the_report_dir_file(tmp_path) -> None:
    rec = _recorder(tmp_path)
    rec.enter("all_gather", torch.zeros(7, dtype=torch.int64), "digest exchange")
    rec.dump("TP-FATAL DIGEST_MISMATCH")
    doc = json.loads((tmp_path / "flight_rank1.json").read_text())
    assert doc["schema"] == flight.SCHEMA and doc["reason"] == "TP-FATAL DIGEST_MISMATCH"
    assert not list(tmp_path.glob("*.tmp"))


def test_dump_without_a_dir_is_one_log_line(capsys) -> None:
    rec = _recorder()
    rec.enter("broadcast", torch.zeros(8, dtype=torch.int64), "envelope header", 0)
    rec.dump("exit")
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("TP-TRACE ")
    assert json.loads(out[0][len("TP-TRACE "):])["entries"][0]["site"] == "envelope header"


def test_sigusr1_dumps_while_the_main_thread_is_blocked(tmp_path) -> None:
    child = textwrap.dedent(f"""
        import os, sys, torch
        from tp import flight
        rec = flight.Recorder(rank=0, world_size=2, ctx={{"chunk": 1, "call_id": 2}}, report_dir={str(tmp_path)!r})
        flight.install(rec)
        rec.enter("all_reduce", torch.zeros(4), "chunk-end stats")
        print("ready", flush=True)
        r, _ = os.pipe()
        os.read(r, 1)  # blocked forever, like a rank inside a collective
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=os.getcwd())
    try:
        assert proc.stdout.readline().strip() == "ready"
        path = tmp_path / "flight_rank0.json"
        proc.send_signal(signal.SIGUSR1)
        deadline_at = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline_at:
            time.sleep(0.02)  # polling a file another process writes; the deadline bounds it
        doc = json.loads(path.read_text())
        assert doc["reason"] == "SIGUSR1" and doc["entries"][0]["leave"] is None
    finally:
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "Current thread" in err or "Thread 0x" in err, "SIGUSR1 must still dump every thread's stack"
    assert re.search(r'File "<string>", line \d+ in <module>', err), f"the main thread's frame is in the dump:\n{err}"


def test_sigusr1_storm_never_kills_a_rank_whose_threads_run_python() -> None:
    """The answer to SIGUSR1 reads frames with the GIL held, so threads busy in Python cannot free them under it.

    The same storm against faulthandler's own handler (the dump run inside the signal handler, as tp did) kills
    the process with SIGSEGV: that side shows this box can reproduce the race, so the first side can fail.
    """
    from tools import stack_race

    assert stack_race.rate("handler", runs=2, signals=300), "the race did not reproduce; the check below is moot"
    assert stack_race.rate("tp", runs=3, signals=300) == []
