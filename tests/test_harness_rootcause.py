"""The report tells the truth: root cause, evidence written before reaping, the reason as data.

Synthetic observations (no ranks started); the real-rank checks are in
tests/test_report_browser.py and the ``nox -s report`` session.
"""

from __future__ import annotations

import json

from harness import Expect, Fault, Scenario
from harness.judge.outcome import judge
from harness.judge.result import Baseline
from harness.report import files as report
from harness.supervise.logs import parse_line
from harness.supervise.observation import Observation, RankExit

META = {"backend": "gloo", "launch": "zygote", "dir": "/tmp/x"}
KILL1 = "TP-FAULT site=generator.call action=kill(SIGKILL) rank=1 chunk=2 call_id=7 mono=100.000000"
STOP1 = "TP-FAULT site=generator.call action=kill(SIGSTOP) rank=1 chunk=2 call_id=7 mono=100.000000"
LOST0 = 'TP-FATAL fm=FM-14 code=PEER_LOST rank=0 call_id=7 chunk=2 mono=100.050000 detail="rank 1 gone"'


def _obs(tmp_path, logs: dict[int, list[str]], exits: dict[int, tuple[int, float, bool]], fault: str,
         **extra) -> Observation:
    paths = {}
    for rank, lines in logs.items():
        paths[rank] = tmp_path / f"rank{rank}.log"
        paths[rank].write_text("".join(line + "\n" for line in lines))
    obs = Observation(world_size=len(logs), pids={r: 1000 + r for r in logs}, log_paths=paths,
                      started_at=99.0, ended_at=101.0, **extra)
    obs.exits = {r: RankExit(rank=r, returncode=c, mono=m, reaped=reaped) for r, (c, m, reaped) in exits.items()}
    obs.fault_lines = [parse_line(fault)]
    return obs


def _scenario(expect: Expect, action: str = "kill(SIGKILL)") -> Scenario:
    return Scenario(id="FM-14", fm="FM-14", title="worker lost", proves="watchdog", expect=expect,
                    faults=(Fault(site="generator.call", action=action, rank=1, chunk=2),))


def _no_baseline() -> Baseline:
    raise AssertionError("the baseline must not be needed here")


def test_rank_the_fault_killed_is_the_root_cause_not_the_collateral_peer_lost(tmp_path) -> None:
    obs = _obs(tmp_path, {0: [LOST0], 1: [KILL1]}, {0: (50, 100.06, False), 1: (-9, 100.01, False)}, KILL1)
    result = judge(_scenario(Expect.crash({0: "PEER_LOST"})), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.observed == "CRASHED" and result.passed, result.reason
    assert result.root_cause["rank"] == 1 and result.root_cause["how"] == "ended by its own fault (SIGKILL)"
    assert [r.role for r in result.ranks] == ["collateral", "root cause"]
    assert result.reason_parts["root_cause"] == f"rank 1, ended by its own fault (SIGKILL): {KILL1}"


def test_earliest_fatal_still_wins_over_a_later_death(tmp_path) -> None:
    # The fault killed rank 1 only after rank 0 had already failed: rank 0 is the root cause.
    late_kill = KILL1.replace("mono=100.000000", "mono=100.100000")
    obs = _obs(tmp_path, {0: [LOST0], 1: [late_kill]}, {0: (50, 100.06, False), 1: (-9, 100.11, False)}, late_kill)
    result = judge(_scenario(Expect.crash()), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.root_cause["rank"] == 0 and result.root_cause["code"] == "PEER_LOST"


def test_a_rank_repeating_rank_0s_verdict_is_its_follower_even_when_printed_first(tmp_path) -> None:
    line = ('TP-FATAL fm=FM-05 code=HANDSHAKE_TIMEOUT rank={r}{cause} call_id=-1 chunk=-1 mono={mono} '
            'detail="rank(s) [1] did not publish a handshake within 0.3 s"')
    r0 = line.format(r=0, cause="", mono="100.020000")
    r2 = line.format(r=2, cause=" cause_rank=0", mono="100.010000")
    fault = "TP-FAULT site=handshake.publish action=hang rank=1 chunk=-1 call_id=-1 mono=99.500000"
    aborted = 'TP-FATAL fm=FM-05 code=PEER_ABORT rank=1 cause_rank=0 call_id=-1 chunk=-1 mono=100.100000 detail="x"'
    obs = _obs(tmp_path, {0: [r0], 1: [fault, aborted], 2: [r2]},
               {0: (54, 100.03, False), 1: (51, 100.11, False), 2: (54, 100.02, False)}, fault)
    result = judge(_scenario(Expect.crash()), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    # Rank 1's injected hang began it; of the ranks that noticed, rank 0 did first (rank 2 repeats its verdict).
    assert result.root_cause["rank"] == 1 and result.root_cause["line"] == fault
    assert result.root_cause["noticed_by"] == {"rank": 0, "code": "HANDSHAKE_TIMEOUT", "line": r0}
    assert [r.role for r in result.ranks] == ["collateral", "root cause", "collateral"]


SKIP1 = "TP-FAULT site=collective.all_reduce action=skip rank=1 chunk=0 call_id=3 op=all_reduce mono=100.000000"


def _timeout(rank: int, mono: str) -> str:
    return (f"TP-FATAL fm=ENGINE code=UNCAUGHT_EXCEPTION rank={rank} mono={mono} "
            f'detail="RuntimeError: Timed out waiting 3000ms for recv operation to complete"')


def test_the_rank_whose_injected_fault_fired_is_the_root_cause_whoever_noticed_first(tmp_path) -> None:
    # Both ranks' own timeouts fire within milliseconds; which printed first is timing. The skip is not, and the
    # root cause reads the same either way.
    for first, second in ((0, 1), (1, 0)):
        lines = {first: _timeout(first, "103.000000"), second: _timeout(second, "103.002000")}
        run = tmp_path / f"first{first}"
        run.mkdir()
        obs = _obs(run, {0: [lines[0]], 1: [SKIP1, lines[1]]}, {0: (1, 103.1, False), 1: (1, 103.1, False)}, SKIP1)
        result = judge(_scenario(Expect.crash(), "skip"), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
        root = result.root_cause
        assert root["rank"] == 1 and root["line"] == SKIP1 and [r.role for r in result.ranks] == [
            "collateral", "root cause"], root
        assert root["noticed_by"] == {"rank": first, "code": "UNCAUGHT_EXCEPTION", "line": lines[first]}, root
        whose = "its own" if first == 1 else "rank 0's"
        assert root["how"] == (f"its injected fault (skip) fired 3.000 s before {whose} TP-FATAL UNCAUGHT_EXCEPTION, "
                               "the first failure"), root
        assert root["code"] == ("UNCAUGHT_EXCEPTION" if first == 1 else None), root


def test_a_fault_that_only_changes_values_on_another_rank_does_not_hide_the_one_that_desynced(tmp_path) -> None:
    nop0 = "TP-FAULT site=collective.broadcast action=sleep(0) rank=0 chunk=0 call_id=1 op=broadcast mono=99.000000"
    obs = _obs(tmp_path, {0: [nop0, _timeout(0, "103.000000")], 1: [SKIP1, _timeout(1, "103.002000")]},
               {0: (1, 103.1, False), 1: (1, 103.1, False)}, nop0)
    result = judge(_scenario(Expect.crash(), "skip"), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.root_cause["rank"] == 1 and result.root_cause["line"] == SKIP1, result.root_cause


def test_a_flipped_decision_outranks_a_delay_on_another_rank(tmp_path) -> None:
    # The TP path's flip (FM-03's recompute flag) desyncs the group; a sleep(0.2) on rank 0 only delays it.
    flip1 = "TP-FAULT site=worker.skip_recompute action=flip rank=1 chunk=2 call_id=7 mono=100.000000"
    nap0 = "TP-FAULT site=generator.call action=sleep(0.2) rank=0 chunk=2 call_id=7 mono=99.900000"
    mismatch = ('TP-FATAL fm=FM-03 code=CALL_COUNT_MISMATCH rank=0 call_id=7 chunk=2 mono=100.300000 '
                'detail="rank 1 planned 3 calls, rank 0 4"')
    obs = _obs(tmp_path, {0: [nap0, mismatch], 1: [flip1]}, {0: (45, 100.4, False), 1: (51, 100.5, False)}, nap0)
    result = judge(_scenario(Expect.crash(), "flip"), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.root_cause["rank"] == 1 and result.root_cause["noticed_by"]["rank"] == 0, result.root_cause


def test_faults_fired_on_several_ranks_leave_the_root_cause_to_the_earliest_failure(tmp_path) -> None:
    skip0 = SKIP1.replace("rank=1", "rank=0")
    obs = _obs(tmp_path, {0: [skip0, _timeout(0, "103.000000")], 1: [SKIP1, _timeout(1, "103.002000")]},
               {0: (1, 103.1, False), 1: (1, 103.1, False)}, SKIP1)
    result = judge(_scenario(Expect.crash(), "skip"), obs, deadline_s=8.0, baseline=_no_baseline, meta=META)
    assert result.root_cause["rank"] == 0 and "noticed_by" not in result.root_cause, result.root_cause


def test_frozen_rank_is_the_root_cause(tmp_path) -> None:
    obs = _obs(tmp_path, {0: [LOST0], 1: [STOP1]}, {0: (50, 100.06, False), 1: (-9, 100.2, True)}, STOP1,
               frozen_reaped=[1])
    result = judge(_scenario(Expect.crash({0: "PEER_LOST"}), "kill(SIGSTOP)"), obs, deadline_s=8.0,
                   baseline=_no_baseline, meta=META)
    assert result.root_cause["rank"] == 1 and result.root_cause["how"] == "frozen by its own fault (SIGSTOP)"


def test_lines_written_after_reaping_began_are_no_evidence(tmp_path) -> None:
    # A HUNG run: the harness started reaping (SIGTERM) when rank 0's log was 1 line long; rank 0's PEER_LOST
    # came after that, because rank 1 was being killed. It must not count as the matched signature.
    blocked = "TP-EVENT " + json.dumps({"event": "chunk", "chunk": 1, "mono": 100.01})
    obs = _obs(tmp_path, {0: [blocked, LOST0.replace("100.050000", "103.5")], 1: [KILL1.replace("kill(SIGKILL)", "hang")]},
               {0: (50, 103.6, True), 1: (-15, 103.7, True)}, KILL1.replace("kill(SIGKILL)", "hang"),
               hung=True, hung_at=102.0, verdict_at=103.0, hang_reason="deadline passed")
    obs.reap_offsets = {0: len(blocked) + 1, 1: obs.log_paths[1].stat().st_size}
    result = judge(_scenario(Expect.crash({0: "PEER_LOST"}), "hang"), obs, deadline_s=8.0, baseline=_no_baseline,
                   meta=META)
    assert result.observed == "HUNG" and not result.passed
    sig = result.ranks[0].signatures[0]
    assert not sig["matched"] and sig["line"] is None
    assert result.reason_parts["signatures_missing"] == ["rank 0 /PEER_LOST/"]
    # Rank 0's PEER_LOST names nothing; the hang began where rank 1's fault fired.
    assert result.root_cause["rank"] == 1 and result.root_cause["line"].startswith("TP-FAULT site=generator.call")
    assert result.root_cause["how"] == "its injected fault (hang) fired; no rank failed", result.root_cause
    assert [r.role for r in result.ranks] == ["collateral", "root cause"]
    # The mono stamp alone is enough when the supervisor recorded no offsets (a log it could not follow).
    obs.reap_offsets = {}
    again = judge(_scenario(Expect.crash({0: "PEER_LOST"}), "hang"), obs, deadline_s=8.0, baseline=_no_baseline,
                  meta=META)
    assert not again.ranks[0].signatures[0]["matched"]


def test_reason_is_structured_and_never_a_repr(tmp_path) -> None:
    obs = _obs(tmp_path, {0: [LOST0], 1: [KILL1]}, {0: (50, 100.06, False), 1: (-9, 100.01, False)}, KILL1,
               abort={"rank": 0, "code": "PEER_LOST"})
    result = judge(_scenario(Expect.crash({0: "PEER_ABORT"})), obs, deadline_s=8.0, baseline=_no_baseline,
                   meta=META)
    parts = result.reason_parts
    assert parts["expected"] == ["CRASHED"] and parts["observed"] == "CRASHED" and parts["verdict"] == "FAIL"
    assert parts["ranks"] == ["rank 0 exit 50 (PEER_LOST, collateral)", "rank 1 SIGKILL (no TP-FATAL line, root cause)"]
    assert parts["signatures_missing"] == ["rank 0 /PEER_ABORT/"] and parts["signatures_matched"] == []
    assert "tp/abort: rank=0 code=PEER_LOST" in parts["notes"]
    assert "{" not in result.reason and "'" not in result.reason.split("root cause")[0]


def test_clean_run_has_no_time_to_crash_anywhere(tmp_path) -> None:
    run_dir = tmp_path / "reports" / report.run_dir_name()
    sdir = report.scenario_dir(run_dir, "CTL-healthy", 2)
    final = json.dumps({"output_digest": "aa"})
    obs = _obs(sdir, {0: [final], 1: []}, {0: (0, 100.5, False), 1: (0, 100.6, False)}, KILL1)
    obs.fault_lines, obs.init_mono = [], 100.0
    scenario = Scenario(id="CTL-healthy", fm="control", title="healthy", proves="control", expect=Expect.clean())
    result = judge(scenario, obs, deadline_s=8.0, baseline=lambda: Baseline(ok=True, digest="aa"),
                   meta={**META, "dir": str(sdir)})
    assert result.observed == "CLEAN" and result.time_to_crash_s is None
    assert " in 0." not in result.reason
    report.write_result(result, sdir)
    summary = report.write_summary(run_dir)
    assert json.loads(summary.json_path.read_text())["scenarios"][0]["time_to_crash_s"] is None
    assert "| CLEAN | CLEAN | - |" in summary.md_path.read_text()
