"""``python -m benchmarks --quick``, run as a user would: every section measured, every number positive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import SCHEMA, SECTIONS

REPO = Path(__file__).resolve().parent.parent
# The quick bench (~50 s) runs once, for one test that checks every section. As separate tests, xdist spread
# them over both workers and each ran the whole bench: ``xdist_group`` no longer keeps a group on one worker
# (with pytest 9 a node id derives from its structured id, so xdist 3.8's ``--dist loadgroup`` suffix does
# not take), and a worker that came back to the module ran it again.


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out),
                           "--docs", str(out / "PERFORMANCE.md")], cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)  # a bound, not a speed
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads((out / "bench.json").read_text()), proc.stdout, out


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _schema_and_machine(bench) -> None:
    doc, _, _ = bench
    assert doc["schema"] == SCHEMA
    assert doc["quick"] is True
    machine = doc["machine"]
    assert _positive(machine["cpu_count"])
    assert machine["torch"] and machine["python"]
    assert list(doc["sections"]) == list(SECTIONS)
    for name, section in doc["sections"].items():
        assert "error" not in section, f"{name}: {section.get('error')}"


def _launch_numbers(bench) -> None:
    launch = bench[0]["sections"]["launch"]
    assert _positive(launch["zygote_start_s"])
    assert _positive(launch["ratio_subprocess_over_zygote"])
    for mode in ("zygote", "subprocess"):
        stats = launch["modes"][mode]["all_ranks_ms"]
        assert stats["n"] == 2 * launch["launches_per_mode"]
        assert all(_positive(stats[k]) for k in ("median", "p95", "max"))


def _time_to_crash_numbers(bench) -> None:
    ttc = bench[0]["sections"]["ttc"]
    assert ttc["scenarios"], "no guarded scenario measured"
    for row in ttc["scenarios"]:
        assert "/" not in row["id"], "--quick measures the FMs' own ids only"
        assert row["ttc_s"]["n"] == row["runs"] == 3, row
        assert all(_positive(row["ttc_s"][k]) for k in ("median", "p95", "max")), row
        assert all(_positive(v) for v in row["anchor_over_p95"].values()), row


def _overhead_numbers(bench) -> None:
    overhead = bench[0]["sections"]["overhead"]
    assert set(overhead["world_sizes"]) == {"2", "4"}
    for rows in overhead["world_sizes"].values():
        assert set(rows) == {"none", "all/bring-up", "all/optimised"}
        for row in rows.values():
            assert _positive(row["run_median_ms"]["median"])
        for name in ("all/bring-up", "all/optimised"):
            assert isinstance(rows[name]["overhead_pct"]["median"], float)


def _reference_and_suite_numbers(bench) -> None:
    doc = bench[0]
    for ops in doc["sections"]["reference"]["world_sizes"].values():
        assert ops and all(_positive(op["median_us"]) for op in ops.values())
    runs = doc["sections"]["suite"]["runs"]
    assert runs and all(_positive(r["wall_s"]) and r["returncode"] == 0 for r in runs.values())


def _markdown_printed_and_written(bench) -> None:
    doc, stdout, out = bench
    text = (out / "bench.md").read_text()
    assert text in stdout
    for heading in ("## Targets", "## 1. Launch cost", "## 2. Time to crash", "## 3. Guardrail overhead",
                    "## 4. Reference", "## 5. Break-it suite"):
        assert heading in text
    assert len(doc["targets"]) >= 4
    assert all(t["verdict"] in ("met", "missed") for t in doc["targets"])


def _detection_numbers(bench) -> None:
    sections = bench[0]["sections"]
    flight = sections["flight"]
    assert _positive(flight["per_collective_us"]) and _positive(flight["cost_pct"])
    assert flight["collectives_per_chunk"] >= 6  # at least the envelope broadcasts and a generator call's reduces
    hang = sections["hang"]
    assert len(hang["scenarios"]) == 2 and all(r["runs"] == 1 for r in hang["scenarios"])
    assert all(_positive(r["verdict_s"]["p95"]) for r in hang["scenarios"] if r["outcomes"].get("HUNG"))
    alarm = sections["false_alarm"]
    assert alarm["runs"] == 2 and alarm["peer_lost"] == 0 and alarm["not_clean"] == 0
    targets = {row["target"].split(" ")[0] for row in bench[0]["targets"]}
    assert {"flight", "fault", "zero"} <= targets
    assert all(r["stall_verdicts"] == r["outcomes"].get("HUNG", 0) for r in hang["scenarios"])  # none waited out a deadline


def _engine_numbers(bench) -> None:
    sections = bench[0]["sections"]
    cost = sections["engine_cost"]
    assert cost["per_collective"], "no world size timed"
    for row in cost["per_collective"].values():
        for config in ("none", "disarmed", "armed"):
            assert all(_positive(row[config][kind]["median"]) for kind in ("cpu_us", "wall_us")), row
        assert all(_positive(row[f"{c}_over_none"]["cpu"]["median"]) for c in ("disarmed", "armed")), row
    assert cost["engine"] is None, "--quick times c10d_ops.py only, no whole fixture-engine run"
    hang = sections["engine_hang"]
    assert hang["runs"] == 1 and sum(hang["outcomes"].values()) == 1
    if hang["outcomes"].get("HUNG"):
        assert all(_positive(hang["verdict_s"][k]) for k in ("median", "p95", "max")), hang
    targets = [row["target"] for row in bench[0]["targets"]]
    assert any(t.startswith("zero-touch bootstrap") for t in targets)
    assert any(t.startswith("zero-touch hang verdict") for t in targets)


def _docs_page_is_the_report(bench) -> None:
    _, _, out = bench
    page = (out / "PERFORMANCE.md").read_text()
    assert page.startswith("# Performance\n") and "do not edit by hand" in page
    assert (out / "bench.md").read_text().strip() in page, "docs/PERFORMANCE.md is the bench's own report, whole"


CHECKS = (_schema_and_machine, _launch_numbers, _time_to_crash_numbers, _overhead_numbers,
          _reference_and_suite_numbers, _markdown_printed_and_written, _detection_numbers, _engine_numbers,
          _docs_page_is_the_report)


def test_the_quick_bench_measures_every_section(bench):
    failed = []
    for check in CHECKS:  # every section's verdict, not only the first that fails
        try:
            check(bench)
        except (AssertionError, KeyError) as exc:
            failed.append(f"{check.__name__[1:]}: {type(exc).__name__}: {exc}")
    assert not failed, "\n".join(failed)


def test_a_missed_hang_target_says_whether_the_deadline_or_a_late_hang_is_why():
    from benchmarks.targets import _hang_bound

    late = {"id": "X/off", "verdict_s": {"p95": 1.54}, "outcomes": {"HUNG": 5}, "stall_verdicts": 5}
    deadline = {**late, "stall_verdicts": 3}
    assert "every run a stall verdict; the run still moved about 0.54 s after the fault" in _hang_bound(late, 1.0)
    assert "2 of 5 HUNG runs called by the deadline" in _hang_bound(deadline, 1.0)
