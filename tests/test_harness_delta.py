"""Every run against the last green one: unit checks of the delta, then a planted regression on real ranks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.report import delta

REPO = Path(__file__).resolve().parent.parent
CONFIG = {"backend": ["gloo"], "launch": ["zygote"], "world_sizes": [2]}


def _row(sid: str, verdict: str = "PASS", observed: str = "CRASHED", ttc: float | None = 0.02) -> dict:
    return {"id": sid, "world_size": 2, "verdict": verdict, "observed": observed, "time_to_crash_s": ttc}


def _summary(overall: str, rows: list[dict], config: dict = CONFIG) -> dict:
    return {"overall": overall, "scenarios": rows, "config": config}


def _write(root: Path, name: str, doc: dict) -> Path:
    (root / name).mkdir(parents=True)
    (root / name / "summary.json").write_text(json.dumps(doc))
    return root / name


def test_compare_names_flips_additions_removals_and_regressions_beyond_the_band() -> None:
    before = _summary("PASS", [_row("FM-01"), _row("FM-02"), _row("FM-03", ttc=4.0), _row("FM-04")])
    after = _summary("FAIL", [_row("FM-01", ttc=0.02 + delta.NOISE_ABS_S + 0.01),  # just beyond the band
                              _row("FM-02", "FAIL", "HUNG", None),
                              _row("FM-03", ttc=4.0 + delta.NOISE_ABS_S + 0.25 * 4.0 - 0.01),  # just inside
                              _row("FM-05")])
    d = delta.compare(before, after, baseline="/r/20260101-000000-1")
    assert [s["scenario"] for s in d["ttc_regressions"]] == ["FM-01 (ws2)"]
    assert d["flips"] == [{"scenario": "FM-02 (ws2)", "was": "PASS", "now": "FAIL", "observed_was": "CRASHED",
                           "observed_now": "HUNG"}]
    assert d["added"] == ["FM-05 (ws2)"] and d["removed"] == ["FM-04 (ws2)"]
    assert delta.regressed(d)
    assert delta.headline(d) == ("vs 20260101-000000-1 (PASS): 1 verdict flip, 1 added, 1 removed, "
                                 "1 time-to-crash regression")
    same = delta.compare(before, before, baseline="/r/x")
    assert delta.headline(same) == "vs x (PASS): no change" and not delta.regressed(same)


def test_last_green_is_the_newest_earlier_pass_of_the_same_configuration(tmp_path) -> None:
    _write(tmp_path, "20260101-000001-1", _summary("PASS", [_row("FM-01")]))
    _write(tmp_path, "20260101-000002-1", _summary("PASS", [_row("FM-01")], {**CONFIG, "launch": ["srun"]}))
    _write(tmp_path, "20260101-000003-1", _summary("FAIL", [_row("FM-01", "FAIL")]))
    _write(tmp_path, "20260101-000009-1", _summary("PASS", [_row("FM-01")]))  # later than the run: not a baseline
    run = tmp_path / "20260101-000005-1"
    assert delta.last_green(run, CONFIG) == tmp_path / "20260101-000001-1"
    assert delta.for_run(run, _summary("PASS", []))["baseline"] == str(tmp_path / "20260101-000001-1")
    lonely = delta.for_run(run, _summary("PASS", [], {**CONFIG, "world_sizes": [8]}))
    assert lonely["baseline"] is None and "no earlier green run" in delta.headline(lonely)


BASE = """
    import pytest
    from scenarios.test_fm14_worker_lost import SCENARIOS as FM14

    @pytest.mark.breakit
    def test_fm14(breakit):
        breakit.check(SCENARIO)
"""
GUARDED = "SCENARIO = FM14[0]\n"
# The same guarded proof with a planted regression: rank 1 first sleeps 2 s in the call the fault kills it in.
PLANTED = textwrap.dedent("""
    import dataclasses
    from harness import Fault

    SLEEP = Fault(site="generator.call", action="sleep(2)", rank=1, chunk=2, hit=1)
    SCENARIO = dataclasses.replace(FM14[0], faults=(SLEEP, *FM14[0].faults))
""")


def _pytest(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_copy.py").write_text(textwrap.dedent(BASE) + body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "harness.plugin", "-p", "no:randomly", "-p",
                           "no:cacheprovider", "-n", "0", str(tmp_path / "test_copy.py"), "--rootdir", str(tmp_path),
                           "--breakit-report-dir", str(tmp_path / "reports"), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_planted_time_to_crash_regression_heads_every_report(tmp_path) -> None:
    green = _pytest(tmp_path, GUARDED)
    assert green.returncode == 0, green.stdout + green.stderr
    assert "baseline delta: baseline: none (no earlier green run" in green.stdout
    first = (tmp_path / "reports" / "latest").resolve()
    slow = _pytest(tmp_path, PLANTED, "--junitxml", str(tmp_path / "junit.xml"))
    assert slow.returncode == 0, slow.stdout + slow.stderr  # still a valid proof: only slower
    run = (tmp_path / "reports" / "latest").resolve()
    assert run != first
    headline = f"vs {first.name} (PASS): 1 time-to-crash regression"
    terminal = slow.stdout[slow.stdout.index("tp-breakit ="):]
    assert terminal.splitlines()[1] == f"baseline delta: {headline}"
    m = re.search(r"time to crash FM-14 \(ws2\): (\d+\.\d+) s -> (\d+\.\d+) s", terminal)
    assert m, terminal
    # The sleep sits between the first TP-FAULT and the kill, so the crash takes at least its 2 s.
    assert float(m[2]) >= 2.0 and float(m[2]) - float(m[1]) > delta.NOISE_ABS_S
    md = (run / "summary.md").read_text().splitlines()
    assert md[4] == f"Baseline delta: **{headline}**", md[:8]
    html = (run / "report.html").read_text()
    assert html.index('id="delta"') < html.index("<table>") and headline in html
    junit = ET.parse(tmp_path / "junit.xml").getroot()
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props["breakit_baseline_delta"].startswith(headline + "; time to crash FM-14 (ws2): ")
    doc = json.loads((run / "summary.json").read_text())
    assert doc["delta"]["baseline"] == str(first)
    # Any two runs: the CLI says the same, and exits 1 because the second regressed.
    cli = subprocess.run([sys.executable, "-m", "harness", "report", "--baseline", str(first), str(run)],
                         cwd=REPO, capture_output=True, text=True, check=False)
    assert cli.returncode == 1 and headline in cli.stdout, cli.stdout + cli.stderr
    back = subprocess.run([sys.executable, "-m", "harness", "report", str(first), "--baseline", str(run)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert back.returncode == 0 and "no change" in back.stdout, back.stdout + back.stderr


def test_bad_baseline_is_refused_before_any_rank(tmp_path) -> None:
    proc = _pytest(tmp_path, GUARDED, "--breakit-baseline", str(tmp_path / "nowhere"))
    assert proc.returncode == 4 and "--breakit-baseline:" in proc.stderr and "nowhere" in proc.stderr
    assert not (tmp_path / "reports" / "latest").exists()
