"""What runs leave behind, and where.

    reports/
      latest -> 20260101-120000-4242/        newest run
      20260101-120000-4242/                  one run (pytest session or CLI call)
        summary.json  summary.md
        baseline.json                        healthy-run digests (shared by xdist workers)
        _baseline/...                        the healthy runs' rank logs
        FM-01-ws2/                           one scenario ('/' in ids becomes '_')
          result.json  rank0.log  rank1.log
        FM-01_off-ws2/ ...
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.declare.verdicts import Verdict
from harness.judge import explain
from harness.judge.result import RESULT_SCHEMA, Result
from harness.report import delta
from harness.report.html import write_html
from harness.report.rows import guardrail_table, guardrails_text, ttc_text  # noqa: F401 - ttc_text is part of this module's API

SUMMARY_SCHEMA = 1


def run_dir_name() -> str:
    """``<YYYYmmdd-HHMMSS>-<pid>``: unique per process, sortable by time."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def scenario_dir(run_dir: Path, scenario_id: str, world_size: int) -> Path:
    """Create and return a fresh directory for one scenario run."""
    base = f"{scenario_id.replace('/', '_')}-ws{world_size}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        path = run_dir / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"{run_dir}: too many runs of {scenario_id} at world size {world_size}")


def check_writable(root: Path) -> None:
    """Raise OSError unless run directories can be created under ``root`` (before any rank starts)."""
    root.mkdir(parents=True, exist_ok=True)
    probe = root / f".write-check-{os.getpid()}"
    probe.mkdir()
    probe.rmdir()


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)


class ReportWriteError(OSError):
    """A report file could not be written (a full filesystem, say); ``result`` is the verdict it was to hold,
    so that the caller can still print it."""

    def __init__(self, path: Path, cause: OSError, result: Result | None = None) -> None:
        super().__init__(cause.errno, f"could not write {path}: {cause.strerror or cause}")
        self.path, self.result = path, result


def write_result(result: Result, directory: Path) -> Path:
    """Write ``result.json`` (``"schema": 1``) into the scenario directory; ReportWriteError if it cannot."""
    path = directory / "result.json"
    try:
        _write_json(path, result.to_json())
    except OSError as exc:
        raise ReportWriteError(path, exc, result) from None
    return path


def write_planned(run_dir: Path, count: int) -> None:
    """Record how many scenarios this run means to run (every xdist worker writes the same number)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".planned-{os.getpid()}"
    tmp.write_text(str(count))
    tmp.replace(run_dir / "planned")


def read_planned(run_dir: Path) -> int | None:
    """The count ``write_planned`` left, or None."""
    try:
        return int((run_dir / "planned").read_text())
    except (OSError, ValueError):
        return None


def collect(run_dir: Path) -> list[dict]:
    """Every scenario result of a run, sorted by id then directory."""
    docs = []
    for path in sorted(run_dir.glob("*/result.json")):
        doc = json.loads(path.read_text())
        if doc.get("schema") != RESULT_SCHEMA:
            raise ValueError(f"{path}: result schema {doc.get('schema')!r}, expected {RESULT_SCHEMA}")
        docs.append(doc)
    return sorted(docs, key=lambda d: (d["id"], d["world_size"], d["dir"]))


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Where a run's summary went and what it says."""

    json_path: Path
    """``summary.json``."""
    md_path: Path
    """``summary.md``."""
    passed: bool
    """Overall verdict: every scenario passed (and there was at least one)."""
    total: int
    """Scenarios run."""
    failed: int
    """Scenarios whose verdict is FAIL."""
    overall: Verdict = Verdict.FAIL
    """``PASS``, ``FAIL`` or ``INCOMPLETE`` (interrupted, or fewer than planned ran)."""
    planned: int = 0
    """Scenarios the run meant to run."""

    @property
    def headline(self) -> str:
        """``PASS (5 passed)`` / ``INCOMPLETE (5 of 43 ran)``: the overall line of every report."""
        if self.overall == Verdict.INCOMPLETE:
            return f"INCOMPLETE ({self.total} of {self.planned} ran, {self.failed} failed)"
        return f"{self.overall} ({self.total - self.failed} passed, {self.failed} failed)"


def write_summary(run_dir: Path, *, planned: int | None = None, interrupted: bool = False,
                  baseline: Path | None = None, selection: str = "") -> Summary:
    """Aggregate every result.json of ``run_dir`` into summary.json and summary.md.

    A run is INCOMPLETE, whatever its results say, when it was ``interrupted``
    or fewer than ``planned`` scenarios ran: a partial run proves nothing
    about the scenarios that never ran.

    The run is compared with ``baseline`` (a run directory) or, by default, the
    last green run of the same configuration beside it (``harness.report.delta``); ``selection`` (the ids,
    files, ``-m``/``-k`` the run was asked for) is part of that configuration.
    """
    results = collect(run_dir)
    rows = [
        {
            "id": d["id"], "title": d["title"], "fm": d["fm"], "world_size": d["world_size"],
            "expected": "|".join(d["expected"]), "observed": d["observed"],
            "time_to_crash_s": d["time_to_crash_s"], "deadline_s": d["deadline_s"],
            "guardrails": d["guardrails"], "proves": d["proves"], "verdict": d["verdict"],
            "reason": d["reason"], "dir": os.path.relpath(d["dir"], run_dir) if d["dir"] else "",
            "divergence": (d.get("divergence") or {}).get("line"),
            "reason_parts": d.get("reason_parts") or {},
        }
        for d in results
    ]
    failed = sum(r["verdict"] != Verdict.PASS for r in rows)
    planned = max(planned or 0, len(rows))
    incomplete = interrupted or len(rows) < planned
    doc = {
        "schema": SUMMARY_SCHEMA,
        "run_dir": str(run_dir),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "overall": Verdict.INCOMPLETE if incomplete else Verdict.PASS if rows and not failed else Verdict.FAIL,
        "total": len(rows),
        "planned": planned,
        "failed": failed,
        "scenarios": rows,
        "guardrails": guardrail_table(rows),
        "config": {**delta.config_of(results), "selection": selection},
    }
    doc["delta"] = delta.for_run(run_dir, doc, baseline)
    json_path, md_path = run_dir / "summary.json", run_dir / "summary.md"
    _write_json(json_path, doc)
    md_path.write_text(markdown(doc))
    try:
        write_html(run_dir)
    except Exception as exc:  # the page is a convenience: the run's verdict stands without it
        print(f"harness: report.html not written: {type(exc).__name__}: {exc}", file=sys.stderr)
    return Summary(json_path=json_path, md_path=md_path, passed=doc["overall"] == Verdict.PASS,
                   total=len(rows), failed=failed, overall=doc["overall"], planned=planned)


def terminal_lines(doc: dict, verbosity: int) -> list[tuple[str, bool]]:
    """The plugin's terminal summary of a run's summary.json, as ``(line, red)`` before its verdict line.

    -q keeps the failing rows, -qq none.
    """
    out = []
    if doc.get("delta"):
        red = delta.regressed(doc["delta"])
        out += [(("baseline delta: " if i == 0 else "") + line, red) for i, line in enumerate(delta.lines(doc["delta"]))]
    for row in doc["scenarios"] if verbosity >= -1 else ():
        if verbosity >= 0 or row["verdict"] != Verdict.PASS:
            out.append((f"{row['id']:<22} ws{row['world_size']}  expected {row['expected']:<14} "
                        f"observed {row['observed']:<13} ttc {ttc_text(row):>9}  {row['verdict']}", False))
    return out


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _counts(doc: dict) -> str:
    passed = doc["total"] - doc["failed"]
    if doc["overall"] == Verdict.INCOMPLETE:
        return f"{doc['total']} of {doc.get('planned', doc['total'])} ran: {passed} passed, {doc['failed']} failed"
    return f"{passed} passed, {doc['failed']} failed"


def markdown(doc: dict) -> str:
    """summary.md: scenario table, guardrail table, then every failure's reason."""
    run = Path(doc["run_dir"]).name
    out = [
        f"# tp-breakit report {run}",
        "",
        f"Overall: **{doc['overall']}** ({_counts(doc)})",
        "",
        *_delta_md(doc.get("delta")),
        "| scenario | title | expected | observed | time to crash | deadline | guardrails | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["scenarios"]:
        ttc = ttc_text(r)
        out.append(
            f"| {_cell(r['id'])} (ws{r['world_size']}) | {_cell(r['title'])} | {_cell(r['expected'])} | {r['observed']} "
            f"| {ttc} | {r['deadline_s']:g} s | {_cell(guardrails_text(r))} | {r['verdict']} |"
        )
    out += ["", "## Invariants & guardrails", "",
            "| guardrail | guarded proofs (must crash cleanly) | guardrail-off proofs (hazard is real) |",
            "|---|---|---|"]
    for name, sides in doc["guardrails"].items():
        guarded, off = (_cell(", ".join(sides[k]) or "-") for k in ("guarded", "off"))
        out.append(f"| {name} | {guarded} | {off} |")
    diverged = [r for r in doc["scenarios"] if r.get("divergence")]
    if diverged:
        out += ["", "## First divergent collectives (flight traces)", ""]
        out += [f"* {_cell(r['id'])} (ws{r['world_size']}, {r['observed']}): {_cell(r['divergence'])}" for r in diverged]
    failures = [r for r in doc["scenarios"] if r["verdict"] != Verdict.PASS]
    if failures:
        out += ["", "## Failures"]
        for r in failures:
            reason = explain.markdown(r["reason_parts"]) if r.get("reason_parts") else [r["reason"]]
            out += ["", f"### {r['id']} (ws{r['world_size']})", "", *reason, "", f"Logs: `{r['dir']}/`"]
    return "\n".join(out) + "\n"


def _delta_md(d: dict | None) -> list[str]:
    """The delta against the last green run, right under the overall line."""
    if not d:
        return []
    head, *rest = delta.lines(d)
    return [f"Baseline delta: **{_cell(head)}**", "", *(f"* {_cell(x.strip())}" for x in rest),
            *([""] if rest else [])]


def update_latest(run_dir: Path) -> Path:
    """Point ``<report root>/latest`` at ``run_dir`` (atomic replace)."""
    link = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    tmp.replace(link)
    return link


def find_run_dir(path: Path) -> Path:
    """A run directory from a run directory or a report root (its ``latest``)."""
    if (path / "summary.md").exists() or (path / "summary.json").exists():
        return path
    if (path / "latest").exists():
        return (path / "latest").resolve()
    raise FileNotFoundError(f"{path} holds no summary.md and no 'latest' link; run 'python -m harness run' first")
