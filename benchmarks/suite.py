"""Wall time of the full break-it suite, run the way ``nox -s breakit`` runs it.

``python -m pytest scenarios -m breakit -p no:randomly -q`` in a subprocess,
with ``-n 2`` (pytest-xdist) and serially, each writing its reports into the
bench's own directory (``reports/latest`` is left alone). The suite's
``summary.json`` tells where the time goes: a guardrail-off proof must wait
out its hang deadline before it can call the run HUNG.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.stats import load

TARGET_S = 60.0
SERIAL_TARGET_S = 35.0
TWO_WORKERS_TARGET_S = 20.0
"""The issue's suite targets with stall verdicts (hang proofs no longer wait out a fixed deadline)."""
TIMEOUT_S = 600.0
_COUNTS = re.compile(r"(\d+) (passed|failed|error|errors|skipped|deselected)")


def run_suite(*, workers: int, report_dir: Path, cwd: Path, marker: str) -> dict:
    """One suite run; its wall time, pytest's counts and where the scenario time went."""
    cmd = [sys.executable, "-m", "pytest", "scenarios", "-m", marker, "-p", "no:randomly", "-q",
           "--breakit-report-dir", str(report_dir)]
    if workers > 1:
        cmd += ["-n", str(workers)]
    load_before = load()
    started_at = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        wall = time.monotonic() - started_at
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        wall = time.monotonic() - started_at
        partial = exc.stdout or ""
        output = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        rc = None
    last = next((ln for ln in reversed(output.splitlines()) if " in " in ln and _COUNTS.search(ln)), "")
    counts = {kind: int(n) for n, kind in _COUNTS.findall(last)}
    return {
        "command": " ".join(["python", *cmd[1:]]),
        "workers": workers,
        "wall_s": round(wall, 2),
        "returncode": rc,
        "counts": counts,
        "pytest_summary": last.strip("= "),
        "failed_tests": [ln.split(" - ")[0] for ln in output.splitlines() if ln.startswith("FAILED ")],
        "load_before": load_before,
        "where_time_went": _where_time_went(report_dir),
    }


def _where_time_went(report_dir: Path) -> dict:
    """Summed scenario durations by observed outcome, from the suite's own result.json files."""
    by_outcome: dict[str, dict] = {}
    runs = [d for d in report_dir.iterdir() if d.is_dir() and not d.is_symlink()] if report_dir.is_dir() else []
    for path in (p for run in runs for p in run.glob("*/result.json")):  # not via 'latest', a link to one of them
        doc = json.loads(path.read_text())
        slot = by_outcome.setdefault(doc["observed"], {"scenarios": 0, "seconds": 0.0, "deadlines_s": set()})
        slot["scenarios"] += 1
        slot["seconds"] += doc.get("duration_s") or 0.0
        if doc["observed"] == "HUNG":
            slot["deadlines_s"].add(doc["deadline_s"])
    for slot in by_outcome.values():
        slot["seconds"] = round(slot["seconds"], 2)
        slot["deadlines_s"] = sorted(slot["deadlines_s"])
    return by_outcome


def run(*, modes: tuple[int, ...], work_dir: Path, cwd: Path, marker: str, say) -> dict:
    """The ``suite`` section of bench.json; ``modes`` are worker counts (1 = serial)."""
    out = {"marker": marker, "target_s": TARGET_S, "runs": {}}
    targets = {1: SERIAL_TARGET_S, 2: TWO_WORKERS_TARGET_S}
    for workers in modes:
        name = "serial" if workers == 1 else f"xdist-{workers}"
        result = run_suite(workers=workers, report_dir=work_dir / name, cwd=cwd, marker=marker)
        say(f"suite: {name}: {result['wall_s']} s ({result['pytest_summary'] or 'no pytest summary'})")
        result["target_s"] = targets.get(workers, TARGET_S)
        out["runs"][name] = result
    return out
