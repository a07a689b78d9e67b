"""Bad input is refused in one line before anything starts; a full report directory ends the run in one line;
the harness's own store client keeps c10d's C++ stacks off the terminal."""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"
FAKE = ("--tp-command", "python -m fake_tp", "--report-dir", "reports")
HAS_GPU = bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def _env(tmp_path: Path, **extra: str) -> dict:
    (tmp_path / "pids").mkdir(exist_ok=True)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(RANKS)]),
            "FAKE_PIDFILE_DIR": str(tmp_path / "pids"), **extra}


def _cli(tmp_path: Path, *args: str, argv0: tuple[str, ...] = ("-m", "harness"), **env: str):
    return subprocess.run([sys.executable, *argv0, *args], check=False, cwd=tmp_path, env=_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=300)


def _refused(tmp_path: Path, proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not list((tmp_path / "pids").iterdir()), "a rank started"
    assert not (tmp_path / "reports").exists(), "a run directory was made"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--fault", "fake.chunk=raise", "--device", "cuda"), {"CUDA_VISIBLE_DEVICES": ""},
         "invalid device 'cuda' from --device: this machine has no GPU to put the ranks' tensors on "
         "(CUDA_VISIBLE_DEVICES='' hides every GPU); use cpu or auto"),
        pytest.param(("--fault", "fake.chunk=raise", "--device", "cuda"), {},
                     "invalid device 'cuda' from --device: this machine has no GPU",
                     marks=pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: nothing to refuse")),
        (("--fault", "fake.chunk=raise", "--chunks", "10000000000"), {},
         "invalid chunks '10000000000' from --chunks: must be an integer >= 1 and <= 1000000"),
        (("--fault", "fake.chunk=raise@chunk=99999999999999999999999"), {},
         "bad trigger 'chunk=99999999999999999999999' at fake.chunk in --fault; expected one of rank=N, chunk=N, "
         "call=N, hit=N (rank from 0, chunk from 0, call from 0, hit from 1; N <= 9223372036854775807, int64)"),
        (("--fault", "fake.chunk=raise@rank=0,hit=9223372036854775808"), {},
         "bad trigger 'hit=9223372036854775808' at fake.chunk in --fault"),
        ((), {}, "--expect crash without a --fault: nothing is armed, so a healthy TP path runs CLEAN"),
    ],
    ids=["cuda-hidden", "cuda-cpu-box", "chunks-1e10", "chunk-beyond-int64", "hit-beyond-int64", "crash-no-fault"],
)
def test_what_cannot_run_is_refused_in_one_line_before_anything_starts(tmp_path, args, env, message) -> None:
    _refused(tmp_path, _cli(tmp_path, "run", "--expect", "crash", *FAKE, *args, **env), message)


def test_a_crash_the_environment_causes_needs_no_fault(tmp_path) -> None:
    """--env can make a TP path crash by itself (a deadline of nothing, say): that run is not refused."""
    proc = _cli(tmp_path, "run", "--expect", "crash", "--env", "FAKE_CLOSE_STDOUT=1", *FAKE)
    assert proc.returncode == 1 and "FAIL adhoc (ws2)" in proc.stdout, proc.stdout + proc.stderr


# The CLI as users run it, over a report directory whose filesystem fills up at the first result.
FULL_DISK = textwrap.dedent("""
    import errno, sys
    from harness.report import files as report

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    report._write_json = no_space
    from harness.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def test_a_full_report_directory_ends_the_run_in_one_line_with_the_verdict(tmp_path) -> None:
    proc = _cli(tmp_path, "run", "--fault", "fake.chunk=raise@rank=0,chunk=1", "--expect", "crash", *FAKE,
                argv0=("-c", FULL_DISK))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("PASS adhoc (ws2): expected CRASHED, observed CRASHED"), proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("harness:")]
    assert line.startswith("harness: could not write the report in reports/"), line
    assert "No space left on device" in line and "pick another --report-dir" in line, line


DEAD_STORE = textwrap.dedent("""
    import subprocess, sys
    from datetime import timedelta
    from harness.launch.store import tcp_store_class

    TCPStore = tcp_store_class()
    server = subprocess.Popen([sys.executable, "-c", "import sys; from datetime import timedelta; "
                               "from torch.distributed import TCPStore; s = TCPStore('127.0.0.1', 0, is_master=True, "
                               "wait_for_workers=False, timeout=timedelta(seconds=30)); print(s.port, flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    client = TCPStore("127.0.0.1", int(server.stdout.readline()), is_master=False, timeout=timedelta(seconds=30))
    client.set("k", "v")
    server.kill()
    server.wait()
    try:
        client.check(["k"])
    except Exception as exc:
        print(f"read failed: {type(exc).__name__}", flush=True)
""")


def test_the_harness_store_client_reads_a_dead_server_without_a_cpp_stack(tmp_path) -> None:
    """As under srun when rank 0 exits: the harness's next read of its store fails, as expected, in silence."""
    proc = _cli(tmp_path, argv0=("-c", DEAD_STORE))
    assert proc.returncode == 0 and "read failed" in proc.stdout, proc.stdout + proc.stderr
    assert "TCPStore.cpp" not in proc.stderr and "frame #" not in proc.stderr, proc.stderr


def test_an_srun_run_leaves_no_cpp_stack_on_the_terminal(tmp_path) -> None:
    proc = _cli(tmp_path, "run", "--fault", "generator.call=kill(SIGKILL)@rank=0,chunk=1", "--expect", "crash",
                "--launch", "srun", "--report-dir", "reports")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "TCPStore.cpp" not in proc.stderr and "frame #" not in proc.stderr, proc.stderr


def test_several_expected_outcomes_allow_any_of_them() -> None:
    from harness.declare import adhoc

    s = adhoc.scenario(faults=["x.y=kill(SIGSTOP)@rank=1"], expect="crash,hang,crash", signatures=[], env=[])
    assert {o.value for o in s.expect.outcomes} == {"CRASHED", "HUNG"} and s.expect.frozen == {1}
    assert s.expect.deadline_s is None, "an ad-hoc run's deadline is --deadline's, whatever it expects"
    assert adhoc.expect_words("hang, clean") == "hang,clean"
    with pytest.raises(argparse.ArgumentTypeError, match="invalid choice: 'sideways'"):
        adhoc.expect_words("crash,sideways")
