"""report.html from a synthetic run directory (no ranks started)."""

from __future__ import annotations

import json
import re

from harness.judge.result import RankResult, Result
from harness.report import files as report
from harness.report import html as report_html


def _init(rank: int, mono: float, role: str) -> str:
    return "TP-EVENT " + json.dumps({"event": "init", "rank": rank, "role": role, "mono": mono})


def _event(name: str, rank: int, mono: float, **fields) -> str:
    return "TP-EVENT " + json.dumps({"event": name, "rank": rank, "mono": mono, **fields})


def _scenario(run_dir, sid: str, logs: dict[int, list[str]], ranks: list[RankResult], **kw) -> None:
    where = report.scenario_dir(run_dir, sid, len(logs))
    for rank, lines in logs.items():
        (where / f"rank{rank}.log").write_text("\n".join(lines) + "\n")
    fields = {"fm": sid.split("/")[0], "title": f"{sid} title", "proves": "preflight", "guardrails": "all",
              "faults": [], "world_size": len(logs), "chunks": 3, "backend": "gloo", "launch": "zygote",
              "deadline_s": 8.0, "expected": ["CRASHED"], "observed": "CRASHED", "passed": True,
              "reason": f"{sid} reason", "anchor": "TP-FAULT", "dir": str(where)} | kw
    report.write_result(Result(id=sid, ranks=ranks, **fields), where)


def _run(tmp_path):
    run_dir = tmp_path / report.run_dir_name()
    _scenario(run_dir, "FM-01", {
        0: [_init(0, 10.0, "driver"), _event("chunk", 0, 10.2, chunk=0, calls=4, latency_ms=5.0),
            "TP-FAULT site=driver.meta action=corrupt(callable) rank=0 chunk=1 call_id=5 mono=10.300000",
            'TP-FATAL fm=FM-01 code=META_UNSERIALIZABLE rank=0 call_id=5 chunk=1 mono=10.301 '
            'detail="meta holds <script>alert(1)</script>"',
            _event("exit", 0, 10.302, exit=40)],
        1: [_init(1, 10.05, "worker"), "free text <b>bold</b>",
            "TP-FATAL fm=FM-01 code=PEER_ABORT rank=1 cause_rank=0 call_id=5 chunk=1 mono=10.31"],
    }, [RankResult(rank=0, pid=1, exit="exit 40", returncode=40, code="META_UNSERIALIZABLE"),
        RankResult(rank=1, pid=2, exit="SIGKILL", returncode=-9, code="PEER_ABORT")],
        time_to_crash_s=0.02, reason="expected CRASHED; detail <script>alert(1)</script> & more")
    _scenario(run_dir, "FM-01/off", {
        0: [_init(0, 20.0, "driver"), "TP-FAULT site=driver.meta action=raise rank=0 mono=20.1"],
        1: [_init(1, 20.0, "worker")],
    }, [RankResult(rank=0, pid=3, exit="SIGKILL", returncode=-9, reaped=True),
        RankResult(rank=1, pid=4, exit="SIGKILL", returncode=-9, reaped=True)],
        expected=["HUNG"], observed="CRASHED", passed=False, deadline_s=4.0, guardrails="all,-preflight")
    return run_dir


def test_page_has_tables_timelines_and_escapes_everything(tmp_path) -> None:
    run_dir = _run(tmp_path)
    page = report_html.write_html(run_dir).read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    for sid in ("FM-01", "FM-01/off"):
        assert f">{sid}</a> (ws2)" in page and f"{sid} title" in page
    assert page.count("<svg") >= 2
    assert ">META_UNSERIALIZABLE</text>" in page and ">PEER_ABORT</text>" in page
    assert ">driver.meta</text>" in page and ">exit 40</text>" in page and "SIGKILL, reaped</text>" in page
    assert "deadline (off scale) +8 s" in page and "TP-FAULT = 0" in page
    assert "<script" not in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&amp; more" in page
    assert re.search(r'<tr class="fail"><td><a href="#s-FM-01_off-ws2">', page)
    assert '<details id="s-FM-01_off-ws2" open>' in page and '<details id="s-FM-01-ws2">' in page
    assert "<td>preflight</td><td>FM-01 (ws2, PASS)</td><td>FM-01/off (ws2, FAIL)</td>" in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_malformed_result_still_gives_a_page_with_an_error_row(tmp_path) -> None:
    run_dir = _run(tmp_path)
    (run_dir / "FM-99-ws2").mkdir()
    (run_dir / "FM-99-ws2" / "result.json").write_text('{"schema": 1, "id": <not json')
    (run_dir / "FM-98-ws2").mkdir()
    (run_dir / "FM-98-ws2" / "result.json").write_text('{"schema": 1, "id": "FM-98"}')
    page = report_html.write_html(run_dir).read_text()
    assert '<tr class="error"><td>FM-99-ws2</td>' in page and '<tr class="error"><td>FM-98-ws2</td>' in page
    assert "missing keys title" in page and "Overall: <b class=\"FAIL\">FAIL</b> (1 passed, 3 failed)" in page
    assert ">FM-01</a> (ws2)" in page


def test_write_summary_writes_the_page_and_survives_its_failure(tmp_path, monkeypatch, capsys) -> None:
    run_dir = _run(tmp_path)
    report.write_summary(run_dir)
    assert (run_dir / "report.html").exists()
    (run_dir / "report.html").unlink()

    def broken(_run_dir):
        raise RuntimeError("no disk")

    monkeypatch.setattr(report, "write_html", broken)
    summary = report.write_summary(run_dir)
    assert summary.md_path.exists() and not (run_dir / "report.html").exists()
    assert "harness: report.html not written: RuntimeError: no disk" in capsys.readouterr().err


def test_the_first_divergent_collective_is_marked_on_each_lane_and_listed_in_the_summary(tmp_path) -> None:
    run_dir = tmp_path / report.run_dir_name()
    divergence = {"seq": 37, "kind": "mismatch", "line": "seq 37: rank 0 broadcast <x> - rank 1 all_reduce",
                  "sides": {"0": "rank 0 broadcast root 0 int64[8] (envelope header, chunk 3)",
                            "1": "rank 1 all_reduce float64[48,64] (generator call 5, chunk 2), never left"},
                  "blocked": {}, "marks": {"0": 20.2, "1": 20.25}}
    _scenario(run_dir, "FM-03/off", {
        0: [_init(0, 20.0, "driver"), "TP-FAULT site=driver.plan action=corrupt(-1) rank=0 mono=20.1"],
        1: [_init(1, 20.0, "worker")],
    }, [RankResult(rank=0, pid=3, exit="SIGTERM", returncode=-15, reaped=True),
        RankResult(rank=1, pid=4, exit="SIGTERM", returncode=-15, reaped=True)],
        expected=["HUNG"], observed="HUNG", deadline_s=4.0, divergence=divergence)
    summary = report.write_summary(run_dir)
    page = (run_dir / "report.html").read_text()
    assert page.count("first divergent collective: rank ") == 2 and ">seq 37</text>" in page
    assert "&lt;x&gt;" in page or "<x>" not in page
    assert "* FM-03/off (ws2, HUNG): seq 37: rank 0 broadcast <x> - rank 1 all_reduce" in summary.md_path.read_text()


def test_hung_stacks_collapsed_logs_linked_reason_structured_delta_on_top(tmp_path) -> None:
    run_dir = tmp_path / report.run_dir_name()
    parts = {"headline": "expected HUNG, observed HUNG", "expected": ["HUNG"], "observed": "HUNG",
             "ranks": ["rank 0 SIGKILL (reaped by harness)", "rank 1 SIGKILL (reaped by harness, root cause)"],
             "root_cause": "rank 1, frozen by its own fault (SIGSTOP): TP-FAULT site=x action=kill(SIGSTOP)",
             "notes": [], "signature_errors": [], "signatures_matched": [], "signatures_missing": ["rank 0 /A|B/"],
             "verdict": "FAIL", "verdict_why": ""}
    _scenario(run_dir, "FM-14/off", {0: [_init(0, 1.0, "driver")], 1: [_init(1, 1.0, "worker")]},
              [RankResult(rank=0, pid=7, exit="SIGKILL", returncode=-9, reaped=True,
                          stack='Current thread 0x1 (most recent call first):\n  File "<x>.py", line 3 in wait'),
               RankResult(rank=1, pid=8, exit="SIGKILL", returncode=-9, reaped=True,
                          stack_note="rank 1 (pid 8) is stopped (SIGSTOP); a stopped process cannot dump its stack")],
              expected=["HUNG"], observed="HUNG", passed=False, reason_parts=parts)
    (run_dir / "summary.json").write_text(json.dumps({"overall": "FAIL", "delta": {
        "baseline": "/r/20260101-000000-1", "baseline_overall": "PASS", "outcome_changes": [], "added": [],
        "removed": [], "flips": [{"scenario": "FM-14/off (ws2)", "was": "PASS", "now": "FAIL",
                                  "observed_was": "HUNG", "observed_now": "HUNG"}], "ttc_regressions": []}}))
    page = report_html.write_html(run_dir).read_text()
    assert page.index('id="delta"') < page.index("<table>")
    assert "vs 20260101-000000-1 (PASS): 1 verdict flip" in page and "verdict FM-14/off (ws2): PASS -&gt; FAIL" in page
    assert '<details class="stack"><summary>stack of rank 0 (pid 7)</summary><pre>Current thread 0x1' in page
    assert "File &quot;&lt;x&gt;.py&quot;, line 3 in wait" in page
    assert "no stack for rank 1: rank 1 (pid 8) is stopped (SIGSTOP)" in page
    assert '<a href="FM-14_off-ws2/rank0.log">rank0.log</a> <a href="FM-14_off-ws2/rank1.log">rank1.log</a>' in page
    assert "<dt>root cause</dt><dd>rank 1, frozen by its own fault (SIGSTOP)" in page
    assert "<dt>signatures missing</dt><dd>rank 0 /A|B/</dd>" in page
