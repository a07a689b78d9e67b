"""The verdict and the reports, from synthetic observations (no ranks started)."""

from __future__ import annotations

import json

import pytest

from harness import Expect, Fault, Outcome, Scenario
from harness.judge.outcome import judge
from harness.judge.result import Baseline, exit_name
from harness.report import files as report
from harness.supervise.observation import Observation, RankExit

FAULT = "TP-FAULT site=envelope.after_header action=raise rank=0 chunk=2 call_id=7 mono=100.000000"


def _fatal(rank: int, code: str, mono: float, cause: int | None = None) -> str:
    cause_kv = f" cause_rank={cause}" if cause is not None else ""
    return f'TP-FATAL fm=FM-01 code={code} rank={rank}{cause_kv} call_id=7 chunk=2 mono={mono} detail="x y"'


def _result(rank: int, digest: str) -> str:
    return "TP-EVENT " + json.dumps({"event": "result", "rank": rank, "output_digest": digest})


def _observe(tmp_path, logs: dict[int, list[str]], codes: dict[int, int | None], *, exit_at=100.5,
             faults=True, **extra) -> Observation:
    paths = {}
    for rank, lines in logs.items():
        paths[rank] = tmp_path / f"rank{rank}.log"
        paths[rank].write_text("\n".join(lines) + "\n")
    obs = Observation(world_size=len(logs), pids={r: 1000 + r for r in logs}, log_paths=paths,
                      started_at=99.0, ended_at=101.0, **extra)
    obs.exits = {r: RankExit(rank=r, returncode=c, mono=exit_at + r / 10) for r, c in codes.items()}
    if faults:
        from harness.supervise.logs import parse_line

        obs.fault_lines = [parse_line(FAULT)]
    return obs


def _scenario(expect: Expect, **kw) -> Scenario:
    return Scenario(id="FM-01", fm="FM-01", title="meta", proves="preflight", expect=expect,
                    faults=(Fault(site="envelope.after_header", action="raise", rank=0, chunk=2),), **kw)


def _no_baseline() -> Baseline:
    raise AssertionError("the baseline must not be needed here")


META = {"backend": "gloo", "launch": "zygote", "dir": "/tmp/x"}


def test_exit_names_show_signals_by_name() -> None:
    assert exit_name(-9) == "SIGKILL"
    assert exit_name(-15) == "SIGTERM"
    assert exit_name(40) == "exit 40"
    assert exit_name(None) == "no exit status"


def test_crash_root_cause_is_earliest_fatal_by_mono(tmp_path) -> None:
    # The fault fired on both ranks, so which of them began the failure is the earliest TP-FATAL's to say.
    obs = _observe(tmp_path, {
        0: [FAULT, _fatal(0, "PEER_ABORT", 100.30, cause=1)],
        1: ["starting", FAULT.replace("rank=0", "rank=1"), _fatal(1, "META_UNSERIALIZABLE", 100.10)],
    }, {0: 51, 1: 40})
    expect = Expect.crash({1: r"code=META_UNSERIALIZABLE", "others": r"PEER_ABORT .*cause_rank=1"})
    result = judge(_scenario(expect), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.observed == "CRASHED" and result.passed, result.reason
    assert result.root_cause["rank"] == 1 and result.root_cause["code"] == "META_UNSERIALIZABLE"
    # The last rank left 0.6 s after the fault; rank 1's TP-FATAL, the first failure, came at 0.1 s.
    assert result.time_to_crash_s == pytest.approx(0.6) and result.first_failure_s == pytest.approx(0.1)
    assert result.reason.startswith("expected CRASHED, observed CRASHED in 0.600 s after TP-FAULT "
                                    "(envelope.after_header on rank 0), the first failure at 0.100 s: "
                                    "rank 0 exit 51 (PEER_ABORT cause_rank=1, "
                                    "collateral), rank 1 exit 40 (META_UNSERIALIZABLE, root cause)")
    assert "signatures matched: rank 0 /PEER_ABORT .*cause_rank=1/, rank 1 /code=META_UNSERIALIZABLE/" in result.reason


def test_missing_signature_fails_and_failure_text_has_log_tails(tmp_path) -> None:
    killed = "TP-FAULT site=envelope.after_header action=kill(SIGKILL) rank=1 chunk=2 call_id=7 mono=100.2"
    obs = _observe(tmp_path, {0: [FAULT, _fatal(0, "OTHER", 100.1)], 1: ["only text", killed]}, {0: 40, 1: -9})
    result = judge(_scenario(Expect.crash({"all": "TP-FATAL"})), obs, deadline_s=8.0, baseline=_no_baseline,
                   meta=META)
    assert result.observed == "CRASHED" and not result.passed
    assert "signatures missing: rank 1 /TP-FATAL/" in result.reason
    # Its own fault killed it, but only after rank 0 had failed: collateral.
    assert "rank 1 SIGKILL (no TP-FATAL line, collateral)" in result.reason
    text = result.failure_text()
    assert text.startswith("FM-01: expected CRASHED")
    assert "--- rank 1 (SIGKILL), last lines of" in text and "only text" in text


def test_exit_2_means_config_rejected(tmp_path) -> None:
    obs = _observe(tmp_path, {0: ["TP_FAILPOINTS: unknown failpoint 'x.y'; known: a.b"], 1: []}, {0: 2, 1: 51})
    result = judge(_scenario(Expect.crash()), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.observed == "HARNESS_ERROR" and not result.passed
    assert "rejected its configuration (rank 0 exit 2" in result.reason and "unknown failpoint" in result.reason


@pytest.mark.parametrize(
    ("digests", "base", "observed", "why"),
    [
        (("aa", "aa"), "aa", "CLEAN", ""),
        (("aa", "bb"), "aa", "DIVERGED", "ranks' result digests differ"),
        (("cc", "cc"), "aa", "DIVERGED", "differs from the healthy run's"),
    ],
)
def test_divergence_is_judged_from_outputs(tmp_path, digests, base, observed, why) -> None:
    final = json.dumps({"output_digest": digests[0], "chunks": 6})
    obs = _observe(tmp_path, {0: [_result(0, digests[0]), final, "stderr noise after"],
                              1: [_result(1, digests[1])]}, {0: 0, 1: 0}, faults=False)
    obs.init_mono = 100.0
    result = judge(_scenario(Expect.clean()), obs, deadline_s=8.0,
                   baseline=lambda: Baseline(ok=True, digest=base), meta=META)
    assert result.observed == observed, result.reason
    assert why in result.reason
    assert result.anchor == "init"


def test_clean_without_final_digest_cannot_be_judged(tmp_path) -> None:
    obs = _observe(tmp_path, {0: ["done"], 1: ["done"]}, {0: 0, 1: 0})
    result = judge(_scenario(Expect.clean()), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.observed == "HARNESS_ERROR"
    assert "no JSON line holding output_digest" in result.reason


def test_unusable_baseline_is_a_harness_error(tmp_path) -> None:
    obs = _observe(tmp_path, {0: [json.dumps({"output_digest": "aa"})]}, {0: 0})
    result = judge(_scenario(Expect.clean()), obs, deadline_s=8.0,
                   baseline=lambda: Baseline(ok=False, reason="observed CRASHED", where="/b"), meta=META)
    assert result.observed == "HARNESS_ERROR" and "healthy baseline is unusable: observed CRASHED" in result.reason


def test_hung_reason_names_ranks_and_stack_notes(tmp_path) -> None:
    obs = _observe(tmp_path, {0: [FAULT, _fatal(0, "PEER_LOST", 108.5)], 1: []}, {}, hung=True, hung_at=108.0,
                   hang_reason="deadline 8 s after TP-FAULT passed with rank 1 (pid 1001) still running")
    obs.exits = {0: RankExit(rank=0, returncode=50, mono=109.0, reaped=True),
                 1: RankExit(rank=1, returncode=-9, mono=110.0, reaped=True)}
    obs.stacks = {0: 'Current thread 0x1 (most recent call first):\n  File "x.py", line 1 in f'}
    obs.stack_notes = {1: "rank 1 (pid 1001) is stopped (SIGSTOP); a stopped process cannot dump its stack"}
    result = judge(_scenario(Expect.crash()), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.observed == "HUNG" and not result.passed and result.time_to_crash_s is None
    # Rank 0's PEER_LOST came after the hang was declared: no failure; the hang began where its fault fired.
    assert "rank 0 exit 50 (PEER_LOST, reaped by harness, root cause)" in result.reason
    assert "rank 1 SIGKILL (reaped by harness)" in result.reason
    assert result.root_cause == {"rank": 0, "code": None, "line": FAULT,
                                 "how": "its injected fault (raise) fired; no rank failed"}
    assert "verdict FAIL: HUNG is not among the expected CRASHED" in result.reason
    assert "stack of rank 0 (pid 1000)" in result.failure_text()
    assert "cannot dump its stack" in result.failure_text()


def test_summary_tables_and_latest_link(tmp_path) -> None:
    run_dir = tmp_path / "reports" / report.run_dir_name()
    for sid, guardrails, expect, codes in [
        ("FM-01", "all", Expect.crash(), {0: 40, 1: 51}),
        ("FM-01/off", "all,-preflight", Expect.hang_or_diverge(), {0: 40, 1: 51}),
    ]:
        sdir = report.scenario_dir(run_dir, sid, 2)
        obs = _observe(sdir, {0: [FAULT, _fatal(0, "X", 100.1)], 1: [_fatal(1, "PEER_ABORT", 100.2, cause=0)]},
                       codes)
        scenario = Scenario(id=sid, fm="FM-01", title="meta | pipe", proves="preflight", guardrails=guardrails,
                            expect=expect)
        report.write_result(judge(scenario, obs, deadline_s=8.0, baseline=_no_baseline,
                                  meta={**META, "dir": str(sdir)}), sdir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["FM-01-ws2", "FM-01_off-ws2"]
    assert report.scenario_dir(run_dir, "FM-01", 2).name == "FM-01-ws2-2"
    summary = report.write_summary(run_dir)
    assert not summary.passed and summary.total == 2 and summary.failed == 1
    doc = json.loads(summary.json_path.read_text())
    assert doc["schema"] == 1 and doc["overall"] == "FAIL"
    assert doc["guardrails"] == {"preflight": {"guarded": ["FM-01 (ws2, PASS)"], "off": ["FM-01/off (ws2, FAIL)"]}}
    md = summary.md_path.read_text()
    assert "| FM-01 (ws2) | meta \\| pipe | CRASHED | CRASHED | 0.600 s | 8 s | all | PASS |" in md
    assert "| preflight | FM-01 (ws2, PASS) | FM-01/off (ws2, FAIL) |" in md
    # Several expected outcomes are one cell: a bare "HUNG|DIVERGED" split the row into one cell too many.
    assert "| FM-01/off (ws2) | meta \\| pipe | HUNG\\|DIVERGED | CRASHED |" in md, md
    assert "### FM-01/off (ws2)" in md
    result_doc = json.loads((run_dir / "FM-01-ws2" / "result.json").read_text())
    assert result_doc["schema"] == 1 and result_doc["observed"] == Outcome.CRASHED.value
    link = report.update_latest(run_dir)
    assert link.resolve() == run_dir.resolve()
    assert report.find_run_dir(tmp_path / "reports") == run_dir.resolve()


def test_an_engine_run_claims_no_guardrails_it_cannot_know(tmp_path) -> None:
    """The harness sets no TP_GUARDRAILS for an engine: its row says whose guardrails ran, and no guardrail row
    is drawn from it even when its scenario names one in ``proves`` (a catalog scenario run against an engine)."""
    run_dir = tmp_path / report.run_dir_name()
    for sid, proves in (("adhoc", "adhoc"), ("FM-01", "preflight")):
        sdir = report.scenario_dir(run_dir, sid, 2)
        obs = _observe(sdir, {0: [FAULT, _fatal(0, "X", 100.1)], 1: []}, {0: 1, 1: -15})
        scenario = Scenario(id=sid, fm="adhoc" if sid == "adhoc" else "FM-01", title="engine", proves=proves,
                            expect=Expect.crash(), faults=(Fault.parse("collective.all_reduce=raise@rank=0"),))
        report.write_result(judge(scenario, obs, deadline_s=8.0, baseline=_no_baseline,
                                  meta={**META, "backend": "engine", "dir": str(sdir)}), sdir)
    assert json.loads((run_dir / "adhoc-ws2" / "result.json").read_text())["guardrails"] is None
    summary = report.write_summary(run_dir)
    doc = json.loads(summary.json_path.read_text())
    assert doc["guardrails"] == {}
    md = summary.md_path.read_text()
    assert "| the engine's own |" in md and "| all |" not in md
    page = (run_dir / "report.html").read_text()
    assert "<td>the engine&#x27;s own</td>" in page and "<td>all</td>" not in page


def test_a_rank_that_never_started_is_not_still_running(tmp_path) -> None:
    """A launch that failed after rank 0 started: rank 1 has no pid, so it never ran."""
    obs = _observe(tmp_path, {0: [], 1: []}, {0: 1}, faults=False, harness_error="zygote could not start rank 1: x")
    obs.pids = {0: 1000}
    result = judge(_scenario(Expect.crash()), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert [(r.rank, r.exit) for r in result.ranks] == [(0, "exit 1"), (1, "never started")]
    assert result.observed == "HARNESS_ERROR"


GLUED = (b'  File "/repo/tp/transport.py", line 135 in recv'
         b'TP-FATAL fm=FM-15 code=PROGRESS_TIMEOUT rank=1 call_id=9 chunk=1 mono=100.2 detail="no progress"\n'
         b'\nThread 0x00007f3ac6e3c6c0 (most recent call first):\n')


def test_a_fatal_line_that_ran_into_a_stack_dump_line_is_still_read(tmp_path) -> None:
    """CI, explore run 3: the harness's SIGUSR1 landed as the watchdog died; faulthandler, writing a frame line
    in pieces, had not written its newline when the TP-FATAL line (one write) went out."""
    from harness.supervise.logs import LogFollower, contract_lines, read_text

    log = tmp_path / "rank1.log"
    log.write_bytes(b"TP-FAULT site=envelope.after_recv action=hang rank=1 chunk=2 call_id=9 mono=100.0\n" + GLUED)
    fatal = [line for line in contract_lines(read_text(log)) if line.kind == "TP-FATAL"]
    assert [line.fields["code"] for line in fatal] == ["PROGRESS_TIMEOUT"]
    follower = LogFollower(log)
    lines = follower.read_new()
    assert '  File "/repo/tp/transport.py", line 135 in recv' in lines
    assert any(line.startswith("TP-FATAL fm=FM-15 code=PROGRESS_TIMEOUT rank=1 ") for line in lines)
    # Free text that merely mentions a prefix is not cut: only a stack dump's line can be run into this way.
    log.write_bytes(b"worker said TP-FATAL is coming\n")
    assert contract_lines(read_text(log)) == []


@pytest.mark.parametrize(("served", "note"), [("bad", True), ("good", False)])
def test_a_crash_in_which_rank_0_served_a_wrong_answer_says_so(tmp_path, served: str, note: bool) -> None:
    # Rank 1 died of its fault after rank 0 had finished: whatever rank 0 served went out to users.
    killed = "TP-FAULT site=envelope.after_header action=kill(SIGKILL) rank=1 chunk=2 call_id=7 mono=100.2"
    final = json.dumps({"output_digest": served})
    obs = _observe(tmp_path, {0: [FAULT, _result(0, served), final], 1: [killed]}, {0: 0, 1: -9})
    result = judge(_scenario(Expect.crash()), obs, deadline_s=8.0, meta=META,
                   baseline=lambda: Baseline(ok=True, digest="good", reason="", where="/tmp/h"))
    assert result.observed == "CRASHED" and result.served_wrong is note, result.reason
    assert ("rank 0 exited 0 serving output_digest bad, not the healthy run's good: a wrong answer was served "
            "before the crash" in result.reason) is note, result.reason



def test_an_engine_s_exit_2_after_its_fault_fired_is_its_crash(tmp_path) -> None:
    obs = _observe(tmp_path, {0: [FAULT, "engine: collective failed, exiting 2"], 1: ["bye"]}, {0: 2, 1: 1})
    result = judge(_scenario(Expect.crash()), obs, deadline_s=8.0, baseline=_no_baseline,
                   meta={**META, "backend": "engine"})
    assert result.observed == "CRASHED" and "rank 0 exit 2 (no TP-FATAL line" in result.reason, result.reason
    (tmp_path / "start").mkdir()  # no fault fired: exit 2 is the engine failing to start
    unfired = _observe(tmp_path / "start", {0: ["usage"], 1: []}, {0: 2, 1: 0}, faults=False)
    result = judge(_scenario(Expect.crash()), unfired, deadline_s=8.0, baseline=_no_baseline,
                   meta={**META, "backend": "engine"})
    assert result.observed == "HARNESS_ERROR" and "the engine command failed in rank 0 (exit 2)" in result.reason
