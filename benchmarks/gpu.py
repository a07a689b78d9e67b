"""``python -m benchmarks.gpu`` (``nox -s gpu``): what one CUDA GPU shows about the NCCL and CUDA paths.

Sections, each bounded and recorded even when another fails (``gpu.json`` is rewritten after each):

* ``environment``: device, driver, torch, CUDA and NCCL versions.
* ``dtypes``: every torch dtype through broadcast and all_reduce on a world-size-1 group (NCCL on the
  GPU, gloo on the GPU, gloo on the CPU as the control whose table was verified with two ranks), compared
  with ``tp/dtypes.py``. ``unsafe``: the table lets a dtype through that the backend refuses (a crash inside
  a collective); ``conservative``: the table refuses what the backend carries.
* ``outputs``: ``python -m tp`` on CPU, gloo with CUDA tensors, and NCCL at world size 1 (float32 and
  float64): the float64 runs must give the CPU's output digest, float32 must stay within ``TOLERANCE``.
* ``suite``: the break-it suite at world size 2 on gloo, tensors on the CPU and on the GPU (both ranks on
  the one GPU): every scenario must give the same verdict on both.
* ``digest``: the device hash against the host one (``benchmarks.gpu_digest``).
* ``overhead``: guardrail overhead per chunk (bring-up and optimised against none) on the GPU and the CPU.

This process never creates a CUDA context itself: the harness forks its zygote and ranks, and CUDA does
not survive a fork, so everything that touches the GPU runs in a child process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks import gpu_render
from harness.supervise import logs

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
"""Largest |float32 output - float64 CPU output| accepted, on the decoded frames (values of order 1)."""
PROBES = (("nccl", "cuda"), ("gloo", "cuda"), ("gloo", "cpu"))


def say(msg: str) -> None:
    print(f"gpu: {msg}", file=sys.stderr, flush=True)


def _child(args: list[str], *, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


# -- environment -------------------------------------------------------------------------------------

_ENV_CODE = """
import json, platform, torch
p = torch.cuda.get_device_properties(0)
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                  "nccl": ".".join(map(str, torch.cuda.nccl.version())), "device": p.name,
                  "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                  "gpus": torch.cuda.device_count(), "git": torch.version.git_version}))
"""


def environment(args) -> dict:
    proc = _child(["-c", _ENV_CODE], timeout=120)
    info = (_json_lines(proc.stdout) or [{"error": proc.stderr[-2000:]}])[-1]
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    info["driver"] = smi.stdout.strip().split(", ")[-1] if smi.returncode == 0 else f"nvidia-smi: {smi.stderr.strip()}"
    info["cpus"] = os.cpu_count()
    return info


# -- CUDA context cost -------------------------------------------------------------------------------

_CTX_CODE = """
import os, sys, time
import torch
t0 = time.monotonic()
torch.zeros(1, device="cuda")
print(f"{time.monotonic() - t0:.4f}", flush=True)
sys.stdin.readline()
os._exit(0)
"""


def _contexts(n: int) -> dict:
    """``n`` processes create a CUDA context at once; then each is told to ``os._exit`` and timed to its end."""
    procs = [subprocess.Popen([sys.executable, "-c", _CTX_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(n)]
    create = [float(p.stdout.readline()) for p in procs]
    t0 = time.monotonic()
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
    for p in procs:
        p.wait(timeout=60)
    return {"processes": n, "create_s": create, "exit_all_s": round(time.monotonic() - t0, 4)}


def context(args) -> dict:
    """What a rank pays the CUDA driver: context creation (alone, and two ranks on one GPU) and exit."""
    return {"one": _contexts(1), "two": _contexts(2)}


# -- dtype tables ------------------------------------------------------------------------------------

def probe(backend: str, device: str) -> list[dict]:
    """Rows of ``benchmarks.gpu_probe``; a dtype that kills the process is recorded and skipped."""
    from tp.dtypes import DTYPE_NAMES

    names, rows, start = list(DTYPE_NAMES), [], 0
    while start < len(names):
        proc = _child(["-m", "benchmarks.gpu_probe", "--backend", backend, "--device", device,
                       "--start", str(start)], timeout=300)
        got = [r for r in _json_lines(proc.stdout) if "dtype" in r]
        rows += got
        if proc.returncode == 0:
            break
        tail = proc.stderr.strip().splitlines()[-1:] or ["no stderr"]
        died = {"ok": False, "error": f"process died (exit {proc.returncode}): {tail[0][:300]}"}
        if not got:  # died before its first dtype: the group itself cannot start, not a dtype's fault
            raise RuntimeError(f"probe {backend}/{device} from dtype {names[start]}: {died['error']}")
        dead = got[-1]["index"] + 1
        if dead >= len(names):
            break
        rows.append({"index": dead, "dtype": names[dead], "create": None, "broadcast": died, "all_reduce": died})
        start = dead + 1
    return rows


SEMANTIC_REFUSALS = {
    ("gloo", "bool", "all_reduce"): "gloo sums bools as bytes (two True give byte 2, seen with two ranks); "
                                    "one rank's SUM is the identity and cannot show it",
}
"""Refusals the table makes for a result's meaning, which a one-rank probe cannot observe."""


def compare(rows: list[dict], backend: str) -> dict:
    """The probe's rows against ``SUPPORTED``/``SUPPORTED_REDUCE`` of ``backend``."""
    from tp.dtypes import DTYPE_NAMES, SUPPORTED, SUPPORTED_REDUCE

    unsafe, conservative, explained = [], [], []
    for row in rows:
        dtype = DTYPE_NAMES[row["dtype"]]
        for op, table in (("broadcast", SUPPORTED), ("all_reduce", SUPPORTED_REDUCE)):
            seen = bool(row.get(op) and row[op]["ok"])
            allowed = dtype in table[backend]
            entry = {"dtype": row["dtype"], "op": op, "error": (row.get(op) or {}).get("error") or row.get("create")}
            if allowed and not seen:
                unsafe.append(entry)
            elif seen and not allowed:
                reason = SEMANTIC_REFUSALS.get((backend, row["dtype"], op))
                (explained if reason else conservative).append({**entry, "reason": reason})
    return {"dtypes": len(rows), "unsafe": unsafe, "conservative": conservative, "explained": explained,
            "carried": sorted(r["dtype"] for r in rows if r.get("broadcast") and r["broadcast"]["ok"]),
            "reduced": sorted(r["dtype"] for r in rows if r.get("all_reduce") and r["all_reduce"]["ok"])}


def dtypes(args) -> dict:
    out = {}
    for backend, device in PROBES:
        say(f"dtype probe {backend}/{device}")
        rows = probe(backend, device)
        out[f"{backend}/{device}"] = {"rows": rows, **compare(rows, backend)}
    return out


# -- outputs -----------------------------------------------------------------------------------------

OUTPUT_RUNS = {
    "cpu/gloo/ws1": ({}, ["--world-size", "1"]),
    "cpu/gloo/ws2": ({}, ["--world-size", "2"]),
    "cuda/gloo/ws2": ({"TP_DEVICE": "cuda"}, ["--world-size", "2"]),
    "cuda/nccl/ws1/float64": ({"TP_DTYPE": "float64"}, ["--world-size", "1", "--backend", "nccl"]),
    "cuda/nccl/ws1/float32": ({}, ["--world-size", "1", "--backend", "nccl"]),
}


def outputs(args) -> dict:
    import torch

    reference, out = None, {}
    with tempfile.TemporaryDirectory(prefix="gpu-outputs-") as tmp:
        for name, (env, argv) in OUTPUT_RUNS.items():
            say(f"python -m tp {name}")
            path = Path(tmp) / (name.replace("/", "-") + ".pt")
            t0 = time.monotonic()
            proc = _child(["-m", "tp", *argv, "--chunks", str(args.chunks), "--output", str(path)], timeout=300,
                          env={k: v for k, v in env.items()})
            final = logs.final_json(proc.stdout, "output_digest") or {}
            row = {"exit": proc.returncode, "seconds": round(time.monotonic() - t0, 2),
                   "output_digest": final.get("output_digest"),
                   "chunk_ms_median": round(statistics.median(final["chunk_latency_ms"][2:] or [0]), 3)
                   if final.get("chunk_latency_ms") else None}
            if proc.returncode != 0 or not path.exists():
                row["error"] = (proc.stderr or proc.stdout)[-1500:]
            else:
                frames = torch.load(path)["frames"]
                if reference is None:
                    reference = frames
                row["max_abs_diff"] = max(float((a.double() - b.double()).abs().max()) for a, b in zip(frames, reference, strict=True))
            out[name] = row
    ref = out["cpu/gloo/ws1"].get("output_digest")
    for name, row in out.items():
        exact = "float32" not in name
        row["check"] = ("digest equal to cpu/gloo/ws1" if exact else f"max |diff| <= {TOLERANCE:g}")
        row["ok"] = row.get("output_digest") is not None and (
            row["output_digest"] == ref if exact else row.get("max_abs_diff", 1.0) <= TOLERANCE)
    return out


# -- the break-it suite ------------------------------------------------------------------------------

def suite(args) -> dict:
    runs = {}
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        for device in ("cpu", "cuda"):
            say(f"break-it suite, tensors on {device}")
            rd = Path(tmp) / device
            t0 = time.monotonic()
            proc = _child(["-m", "pytest", "scenarios", "-m", "breakit", "-p", "no:randomly", "-p", "no:cacheprovider",
                           "-q", "-n", str(args.jobs), "--breakit-world-size", "2", f"--breakit-device={device}",
                           f"--breakit-report-dir={rd}"], timeout=args.suite_timeout)
            summary_path = rd / "latest" / "summary.json"
            summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"scenarios": []}
            runs[device] = {"exit": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
                            "tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout else [],
                            "scenarios": {f"{s['id']}@ws{s['world_size']}": {
                                "observed": s["observed"], "verdict": s["verdict"], "time_to_crash_s": s["time_to_crash_s"]}
                                for s in summary["scenarios"]}}
    cpu, cuda = runs["cpu"]["scenarios"], runs["cuda"]["scenarios"]
    differ = sorted(k for k in cpu.keys() & cuda.keys() if cpu[k]["observed"] != cuda[k]["observed"])
    failed = {d: sorted(k for k, v in runs[d]["scenarios"].items() if v["verdict"] != "PASS") for d in runs}
    return {"runs": runs, "same_verdict": len(cpu.keys() & cuda.keys()) - len(differ), "differ": differ,
            "only_cpu": sorted(cpu.keys() - cuda.keys()), "only_cuda": sorted(cuda.keys() - cpu.keys()),
            "failed": failed}


# -- digest and overhead -----------------------------------------------------------------------------

def digest(args) -> dict:
    proc = _child(["-m", "benchmarks.gpu_digest"], timeout=300)
    found = _json_lines(proc.stdout)
    return found[-1] if found else {"error": proc.stderr[-2000:]}


def overhead(args) -> dict:
    from benchmarks import overhead as oh

    out = {}
    plans = {"cuda/gloo": ("gloo", "cuda", {2: (args.reps, args.overhead_chunks)}),
             "cuda/nccl": ("nccl", "cuda", {1: (args.reps, args.overhead_chunks)}),
             "cpu/gloo": ("gloo", "cpu", {2: (args.reps, args.overhead_chunks)})}
    # Which guardrail costs what: the optimised mode without the watchdog, and the digest alone every chunk.
    extra = (oh.Config(name="all,-watchdog/optimised", guardrails="all,-watchdog", digest_every=8),
             oh.Config(name="none,+digest/bring-up", guardrails="none,+digest", digest_every=1))
    with tempfile.TemporaryDirectory(prefix="gpu-overhead-") as tmp:
        for name, (backend, device, plan) in plans.items():
            say(f"overhead {name}")
            out[name] = oh.run(plan=plan, run_dir=Path(tmp) / name.replace("/", "-"), cwd=REPO, say=say,
                               backend=backend, device=device, extra=extra)
    return out


SECTIONS = {"environment": environment, "context": context, "dtypes": dtypes, "outputs": outputs, "suite": suite, "digest": digest,
            "overhead": overhead}


def _write(doc: dict, out: Path) -> None:
    tmp = out / "gpu.json.tmp"
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
    tmp.replace(out / "gpu.json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "reports" / "gpu", help="receives gpu.json and gpu.md")
    p.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these sections (repeatable)")
    p.add_argument("--jobs", type=int, default=max(2, min(8, (os.cpu_count() or 2) // 2)), help="xdist workers")
    p.add_argument("--chunks", type=int, default=8, help="chunks per python -m tp run (default 8)")
    p.add_argument("--reps", type=int, default=4, help="overhead repetitions per configuration (default 4)")
    p.add_argument("--overhead-chunks", type=int, default=16, help="chunks per overhead run (default 16)")
    p.add_argument("--suite-timeout", type=float, default=400.0, help="bound on one break-it suite run, seconds")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict = {"schema": 1, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "sections": {}}
    for name, fn in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.monotonic()
        try:
            doc[name] = fn(args)
        except Exception:
            doc[name] = {"error": traceback.format_exc()[-3000:]}
        doc["sections"][name] = round(time.monotonic() - t0, 1)
        say(f"{name} done in {doc['sections'][name]} s")
        _write(doc, args.out)
    text = gpu_render.markdown(doc)
    (args.out / "gpu.md").write_text(text)
    print(text)
    return 0 if gpu_render.all_ok(doc) else 1


if __name__ == "__main__":
    sys.exit(main())
