"""What of the GPU path can be checked without a GPU: device and dtype settings, refusals, saved outputs,
the dtype probe (on gloo/CPU, against the table verified with two ranks) and the GPU report's verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu, gpu_render
from tp import config

REPO = Path(__file__).resolve().parents[1]
BASE = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_device_and_dtype_follow_the_backend_unless_set():
    gloo = config.from_env(BASE)
    assert (gloo.device_type, gloo.dtype_name) == ("cpu", "float64")
    nccl = config.from_env(BASE, backend="nccl")
    assert (nccl.device_type, nccl.dtype_name) == ("cuda", "float32")
    both = config.from_env({**BASE, "TP_DEVICE": "cuda", "TP_DTYPE": "float32"})
    assert (both.device_type, both.dtype_name) == ("cuda", "float32")


@pytest.mark.parametrize(("env", "backend", "message"), [
    ({"TP_DEVICE": "gpu"}, "gloo", "invalid TP_DEVICE 'gpu': choose cpu or cuda"),
    ({"TP_DEVICE": "cpu"}, "nccl", "TP_DEVICE cpu cannot run on backend nccl"),
    ({"TP_DTYPE": "float16"}, "gloo", "invalid TP_DTYPE 'float16': choose float32 or float64"),
])
def test_bad_device_settings_are_refused(env, backend, message):
    with pytest.raises(config.ConfigError, match=message):
        config.from_env({**BASE, **env}, backend=backend)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the refusal cannot happen here")
def test_cuda_without_a_gpu_is_refused_before_any_rank_talks(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tp", "--world-size", "1", "--chunks", "1"], cwd=REPO, text=True,
                          capture_output=True, timeout=120, env={**_env(), "TP_DEVICE": "cuda"})
    assert proc.returncode == 2
    assert "tensors on CUDA (TP_DEVICE cuda) but this machine has no usable CUDA device" in proc.stderr


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TP_")}


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, str]]:
    """One ``python -m tp --world-size 1 --chunks 2 --output`` run per dtype: its saved output and its log.
    Launched once for the module: the tolerance test and the init-event test read the same runs."""
    tmp = tmp_path_factory.mktemp("saved")
    runs = {}
    for dtype in ("float64", "float32"):
        out = tmp / f"{dtype}.pt"
        proc = subprocess.run([sys.executable, "-m", "tp", "--world-size", "1", "--chunks", "2", "--output", str(out)],
                              cwd=REPO, text=True, capture_output=True, timeout=120, env={**_env(), "TP_DTYPE": dtype})
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[dtype] = (torch.load(out), proc.stdout + proc.stderr)
    return runs


def test_output_saves_the_delivered_frames_and_float32_stays_within_the_gpu_tolerance(saved_runs):
    """The GPU check compares NCCL's float32 output with the CPU's float64 one; the same pair on CPU shows
    the tolerance is not vacuous (the outputs differ) and not too tight."""
    runs = {dtype: saved for dtype, (saved, _) in saved_runs.items()}
    for dtype, saved in runs.items():
        assert saved["dtype"] == dtype and saved["chunks"] == [0, 1]
    diff = max(float((a - b).abs().max()) for a, b in zip(runs["float64"]["frames"], runs["float32"]["frames"],
                                                         strict=True))
    assert 0 < diff <= gpu.TOLERANCE


def test_dtype_probe_on_gloo_cpu_agrees_with_the_two_rank_table():
    """The world-size-1 probe the GPU run uses, on the backend whose table two real ranks verified: it must
    find no unsafe and no conservative entry, and explain the one refusal a single rank cannot observe."""
    rows = gpu.probe("gloo", "cpu")
    from tp.dtypes import DTYPE_NAMES

    assert [r["dtype"] for r in rows] == list(DTYPE_NAMES)
    result = gpu.compare(rows, "gloo")
    assert result["unsafe"] == [] and result["conservative"] == []
    assert [(e["dtype"], e["op"]) for e in result["explained"]] == [("bool", "all_reduce")]


def test_compare_flags_a_table_that_lets_a_refused_dtype_through():
    rows = [{"dtype": "uint16", "create": None, "broadcast": {"ok": False, "error": "Invalid scalar type"},
             "all_reduce": {"ok": False, "error": "Invalid scalar type"}},
            {"dtype": "float32", "create": None, "broadcast": {"ok": False, "error": "boom"},
             "all_reduce": {"ok": True, "error": None}}]
    result = gpu.compare(rows, "gloo")
    assert [(e["dtype"], e["op"]) for e in result["unsafe"]] == [("float32", "broadcast")]


def test_report_verdict_fails_on_any_problem():
    clean = {"sections": {"outputs": 1.0}, "outputs": {"a": {"ok": True, "check": "x", "exit": 0}}}
    assert gpu_render.all_ok(clean)
    bad = json.loads(json.dumps(clean))
    bad["outputs"]["a"]["ok"] = False
    assert not gpu_render.all_ok(bad)
    assert "outputs a: x failed" in gpu_render.markdown(bad)
    errored = {"sections": {"suite": 1.0}, "suite": {"error": "Traceback"}}
    assert gpu_render.problems_of(errored) == ["section suite failed"]


def test_nccl_reduces_float8_only_from_2_24_and_never_the_fnuz_pair(monkeypatch):
    """An H200 with NCCL 2.28.9 reduced e4m3fn/e5m2 and refused the fnuz pair (docs/GPU.md)."""
    from tp import dtypes

    new, old = dtypes.nccl_reduce_table(fp8=True), dtypes.nccl_reduce_table(fp8=False)
    assert new - old == {torch.float8_e4m3fn, torch.float8_e5m2}
    assert not {torch.float8_e4m3fnuz, torch.float8_e5m2fnuz} & new
    assert new <= dtypes.SUPPORTED["nccl"]
    for version, expected in (((2, 23, 4), False), ((2, 24, 3), True), ((2, 28, 9), True)):
        monkeypatch.setattr(torch.cuda.nccl, "version", lambda v=version: v)
        assert dtypes._nccl_reduces_fp8() is expected

    def no_nccl():
        raise AttributeError("module 'torch._C' has no attribute '_nccl_version'")

    monkeypatch.setattr(torch.cuda.nccl, "version", no_nccl)
    assert dtypes._nccl_reduces_fp8() is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the refusal cannot happen here")
def test_harness_device_cuda_is_refused_where_no_gpu_is(tmp_path):
    """``--device cuda`` on a machine without a GPU is the harness's refusal, in one line, before any rank starts
    (each rank's own refusal of TP_DEVICE cuda is test_cuda_without_a_gpu_is_refused_before_any_rank_talks)."""
    proc = subprocess.run([sys.executable, "-m", "harness", "run", "CTL-healthy", "--device", "cuda", "-q",
                           "--report-dir", str(tmp_path)], cwd=REPO, text=True, capture_output=True, timeout=180,
                          env=_env())
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "invalid device 'cuda' from --device: this machine has no GPU" in proc.stderr
    assert not list(tmp_path.iterdir()), "a run directory was made"
    bad = subprocess.run([sys.executable, "-m", "harness", "run", "CTL-healthy", "--device", "gpu"], cwd=REPO,
                         text=True, capture_output=True, timeout=60, env=_env())
    assert bad.returncode == 2 and "invalid device 'gpu'" in bad.stderr and "cuda" in bad.stderr


def test_init_event_says_where_tensors_live(saved_runs):
    log = saved_runs["float32"][1]
    init = next(json.loads(line.split("TP-EVENT ", 1)[1]) for line in log.splitlines()
                if "TP-EVENT" in line and '"init"' in line)
    assert (init["device"], init["dtype"]) == ("cpu", "float32")
