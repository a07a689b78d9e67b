"""Soak: run the break-it suite N times, rotating serial, ``-n 2`` and ``-n 2`` under CPU oversubscription.

Each run is a plain ``python -m pytest scenarios -m breakit`` with its own
JUnit file, report directory and run marker (``BREAKIT_RUN``). Afterwards:
flakes per scenario (a scenario that failed in some runs and passed in
others), failures, and leftover processes (anything still carrying the run's
marker once pytest has exited; they are listed, then killed). The busy loops
that oversubscribe the CPUs are started here, carry no marker, die with this
process (PR_SET_PDEATHSIG) and are always killed at the end of their run.

    python -m tools.soak --runs 3            # writes reports/soak/soak.json and soak.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from harness.launch import lifetime, wait_gone

MODES = ("serial", "xdist", "oversubscribed")
REPO = Path(__file__).resolve().parent.parent
LEFTOVER_GRACE_S = 5.0


@contextlib.contextmanager
def busy_loops(count: int):
    """``count`` processes spinning on a CPU each; killed (and reaped) however the block ends."""
    env = {k: v for k, v in os.environ.items() if k != lifetime.RUN_ENV}
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], env=env, stdin=subprocess.DEVNULL,
                              start_new_session=True, preexec_fn=lifetime.child_preexec()) for _ in range(count)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def junit_outcomes(path: Path) -> dict[str, str]:
    """``{test id: passed|failed|error|skipped}`` from a JUnit XML file ({} if it is missing or broken)."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    names = {"failure": "failed", "error": "error", "skipped": "skipped"}
    out = {}
    for case in root.iter("testcase"):
        kinds = [names[child.tag] for child in case if child.tag in names]
        out[f"{case.get('classname')}::{case.get('name')}"] = kinds[0] if kinds else "passed"
    return out


def flakes(runs: list[dict]) -> dict[str, dict]:
    """Per scenario: runs seen, outcomes counted; a flake is one that did not give the same outcome every run."""
    seen: dict[str, Counter] = {}
    for run in runs:
        for test, outcome in run["outcomes"].items():
            seen.setdefault(test, Counter())[outcome] += 1
    return {test: {"runs": sum(c.values()), **c, "flaky": len(c) > 1} for test, c in sorted(seen.items())}


def _leftovers(marker: str) -> list[str]:
    """Processes still carrying ``marker`` after a grace for the dying; listed, then killed."""
    import psutil

    procs = []
    for pid in lifetime.marked(lifetime.RUN_ENV, marker):
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    survivors = wait_gone(procs, timeout_s=LEFTOVER_GRACE_S)
    listed = lifetime.describe([p.pid for p in survivors]).splitlines()
    for proc in survivors:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return listed


def one_run(index: int, mode: str, *, out: Path, busy: int, extra: list[str]) -> dict:
    where = out / "runs" / f"{index:03d}-{mode}"
    where.mkdir(parents=True, exist_ok=True)
    marker = f"soak-{os.getpid()}-{index}"
    cmd = [sys.executable, "-m", "pytest", "scenarios", "-m", "breakit", "-p", "no:randomly", "-q",
           "-n", "0" if mode == "serial" else "2", f"--junitxml={where / 'junit.xml'}",
           f"--breakit-report-dir={where / 'reports'}", *extra]
    env = {**os.environ, lifetime.RUN_ENV: marker}
    started = time.monotonic()
    with busy_loops(busy if mode == "oversubscribed" else 0) as spinners, (where / "pytest.log").open("w") as log:
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    outcomes = junit_outcomes(where / "junit.xml")
    counts = Counter(outcomes.values())
    return {"index": index, "mode": mode, "rc": rc, "seconds": round(seconds, 1), "busy_loops": len(spinners),
            "tests": len(outcomes), **{k: counts.get(k, 0) for k in ("passed", "failed", "error", "skipped")},
            "leftovers": _leftovers(marker), "outcomes": outcomes, "dir": str(where)}


def _markdown(doc: dict) -> str:
    t = doc["totals"]
    lines = [f"# Soak: {t['runs']} runs of the break-it suite", "",
             f"{t['scenario_runs']} scenario runs, {t['failed']} failed, {t['flaky_scenarios']} flaky scenario(s), "
             f"{t['leftovers']} leftover process(es), {t['red_runs']} red run(s).", "",
             "| run | mode | rc | seconds | tests | passed | failed | error | leftovers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in doc["runs"]:
        lines.append(f"| {r['index']} | {r['mode']} | {r['rc']} | {r['seconds']} | {r['tests']} | {r['passed']} | "
                     f"{r['failed']} | {r['error']} | {len(r['leftovers'])} |")
    bad = {k: v for k, v in doc["scenarios"].items() if v["flaky"] or v.get("failed") or v.get("error")}
    lines += ["", "## Scenarios that failed or flaked", ""]
    lines += [f"- `{k}`: {v}" for k, v in bad.items()] or ["none"]
    left = [f"- run {r['index']}: `{line}`" for r in doc["runs"] for line in r["leftovers"]]
    lines += ["", "## Leftover processes", "", *(left or ["none"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3, help="suite runs, rotating serial / -n 2 / oversubscribed")
    p.add_argument("--busy", type=int, default=2 * (os.cpu_count() or 2),
                   help="busy-loop processes during oversubscribed runs (default 2 per CPU)")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "soak", help="where soak.json/soak.md go")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = p.parse_args(argv)
    if args.runs < 1 or args.busy < 0:
        p.error("--runs must be >= 1 and --busy >= 0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # finally blocks kill the spinners
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(args.runs):
        run = one_run(i, MODES[i % len(MODES)], out=args.out, busy=args.busy, extra=args.pytest_args)
        print(f"soak run {i} ({run['mode']}): rc {run['rc']}, {run['passed']}/{run['tests']} passed, "
              f"{len(run['leftovers'])} leftovers, {run['seconds']} s", flush=True)
        runs.append(run)
    scenarios = flakes(runs)
    totals = {"runs": len(runs), "scenario_runs": sum(r["tests"] for r in runs),
              "failed": sum(r["failed"] + r["error"] for r in runs),
              "flaky_scenarios": sum(v["flaky"] for v in scenarios.values()),
              "leftovers": sum(len(r["leftovers"]) for r in runs), "red_runs": sum(r["rc"] != 0 for r in runs)}
    doc = {"totals": totals, "runs": runs, "scenarios": scenarios}
    (args.out / "soak.json").write_text(json.dumps(doc, indent=1))
    (args.out / "soak.md").write_text(_markdown(doc))
    print(_markdown(doc).split("\n\n")[1])
    return 0 if totals["failed"] == totals["leftovers"] == totals["red_runs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
