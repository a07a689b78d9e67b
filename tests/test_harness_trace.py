"""harness.supervise.trace: reading flight traces and naming the first divergent collective."""

from __future__ import annotations

import json

import pytest

from harness.supervise import trace


def _entry(seq, op="all_reduce", shape=(48, 64), dtype="float64", site="generator call 5", chunk=2, left=True,
           root=None, enter=100.0):
    return {"seq": seq, "op": op, "shapes": [list(shape)], "dtypes": [dtype], "root": root, "site": site,
            "chunk": chunk, "call_id": 5, "enter": enter + seq, "leave": (enter + seq + 0.001) if left else None}


def _doc(rank, entries, mono=200.0):
    return {"schema": trace.SCHEMA, "rank": rank, "world_size": 2, "pid": 1, "reason": "SIGUSR1", "mono": mono,
            "next_seq": entries[-1]["seq"] + 1 if entries else 0, "capacity": 512, "entries": entries}


def test_agreeing_traces_have_no_divergence() -> None:
    same = [_entry(i) for i in range(5)]
    assert trace.first_divergence({0: _doc(0, same), 1: _doc(1, same)}, 2) is None


def test_a_different_op_at_the_same_seq_is_named_with_both_sides() -> None:
    r0 = [_entry(0), _entry(1, op="broadcast", shape=(8,), dtype="int64", site="envelope header", chunk=3,
                            root=0, left=False)]
    r1 = [_entry(0), _entry(1, left=False)]
    div = trace.first_divergence({0: _doc(0, r0, mono=104.1), 1: _doc(1, r1, mono=104.1)}, 2)
    assert div is not None and div.seq == 1 and div.kind == "mismatch"
    assert div.line == ("seq 1: rank 0 broadcast root 0 int64[8] (envelope header, chunk 3), entered 3.1 s ago, "
                        "never left - rank 1 all_reduce float64[48,64] (generator call 5, chunk 2), entered 3.1 s "
                        "ago, never left")


def test_a_rank_that_never_entered_is_named_with_where_it_is() -> None:
    r0 = [_entry(0), _entry(1)]
    r1 = [_entry(0), _entry(1), _entry(2, left=False)]
    div = trace.first_divergence({0: _doc(0, r0), 1: _doc(1, r1)}, 2)
    assert div.seq == 2 and div.kind == "never entered"
    assert div.sides[0].startswith("rank 0 never entered it (its last: seq 1 all_reduce")
    assert div.blocked == {1: r1[-1]}


def test_a_rank_without_a_trace_and_a_peer_stuck_inside() -> None:
    r0 = [_entry(0), _entry(1, left=False)]
    div = trace.first_divergence({0: _doc(0, r0)}, 2, notes={1: "stopped by SIGSTOP"})
    assert div.seq == 1 and div.kind == "never left"
    assert div.sides[1] == "rank 1 has no flight trace (stopped by SIGSTOP)"


def test_rings_that_start_at_different_seqs_are_compared_where_both_hold_entries() -> None:
    r0 = [_entry(i) for i in range(3, 10)]
    r1 = [_entry(i) for i in range(6, 10)] + [_entry(10, op="all_gather", shape=(7,), dtype="int64")]
    div = trace.first_divergence({0: _doc(0, r0), 1: _doc(1, r1)}, 2)
    assert div.seq == 10 and div.kind == "never entered"


def test_no_traces_means_no_line(tmp_path) -> None:
    assert trace.first_divergence({}, 2) is None
    assert trace.load_all(tmp_path, 2) == {}


def test_load_prefers_the_file_and_falls_back_to_the_last_log_line(tmp_path) -> None:
    old, new = _doc(0, [_entry(0)]), _doc(0, [_entry(0), _entry(1)])
    text = f"TP-TRACE {json.dumps(old)}\nnoise\nTP-TRACE {json.dumps(new)}\nTP-TRACE {{broken\n"
    assert trace.load(tmp_path, 0, text)["next_seq"] == 2
    (tmp_path / "flight_rank0.json").write_text(json.dumps(old))
    assert trace.load(tmp_path, 0, text)["next_seq"] == 1
    (tmp_path / "flight_rank1.json").write_text(json.dumps({"schema": "other", "entries": []}))
    assert trace.load(tmp_path, 1) is None


# -- where a hang must leave its ranks (Expect.hang(blocked=...)) ---------------------------------

from harness.declare.scenario import DESYNC, Blocked, Expect  # noqa: E402


def test_blocked_spec_validation() -> None:
    import pytest

    with pytest.raises(ValueError, match="each stand alone"):
        Blocked(stopped=True, op="broadcast")
    with pytest.raises(ValueError, match="needs HUNG"):
        Expect(outcomes=frozenset({trace_outcome("CRASHED")}), blocked=DESYNC)
    with pytest.raises(ValueError, match="must be DESYNC"):
        Expect.hang(blocked="somewhere")
    with pytest.raises(ValueError, match="must be a Blocked"):
        Expect.hang(blocked={1: "all_reduce"})


def trace_outcome(name: str):
    from harness.declare.verdicts import Outcome

    return Outcome[name]


def _check(expect, traces, stopped=frozenset(), ws=2):
    div = trace.first_divergence(traces, ws)
    return trace.check_blocked(expect, traces=traces, divergence=div, stopped=set(stopped), world_size=ws)


def test_blocked_per_rank_passes_where_ranks_wait_and_names_what_differs() -> None:
    r0 = _doc(0, [_entry(0), _entry(1, op="all_gather", shape=(7,), dtype="int64", site="digest exchange", left=False)])
    r1 = _doc(1, [_entry(0), _entry(1, site="generator call 6", left=False)])
    ok = Expect.hang(blocked={0: Blocked(op="all_gather", site="digest"), "others": Blocked(op="all_reduce")})
    assert _check(ok, {0: r0, 1: r1}) == []
    wrong = Expect.hang(blocked={"all": Blocked(op="broadcast", site="envelope header")})
    errors = _check(wrong, {0: r0, 1: r1})
    assert len(errors) == 2 and errors[0].startswith("rank 0 must be inside broadcast at /envelope header/ but waits")


def test_a_rank_outside_any_collective_fails_a_blocked_proof() -> None:
    r0 = _doc(0, [_entry(0), _entry(1)])
    r1 = _doc(1, [_entry(0), _entry(1), _entry(2, left=False)])
    errors = _check(Expect.hang(blocked={"all": Blocked()}), {0: r0, 1: r1})
    assert errors == [f"rank 0 must be inside a collective but is in none (its last collective, seq 1 "
                      f"{trace.describe(r0['entries'][-1])}, returned)"]
    assert _check(Expect.hang(blocked=DESYNC), {0: r0, 1: r1}) == []


def test_desync_needs_a_collective_a_peer_never_entered() -> None:
    both_inside = [_entry(0), _entry(1, left=False)]
    errors = _check(Expect.hang(blocked=DESYNC), {0: _doc(0, both_inside), 1: _doc(1, both_inside)})
    assert errors and "found: seq 1:" in errors[0]
    assert "no flight traces" in _check(Expect.hang(blocked=DESYNC), {})[0]


def test_stopped_ranks_are_checked_without_a_trace() -> None:
    r0 = _doc(0, [_entry(0, left=False)])
    expect = Expect.hang(blocked={1: Blocked(stopped=True), "others": Blocked(op="all_reduce")})
    assert _check(expect, {0: r0}, stopped={1}) == []
    assert _check(expect, {0: r0}) == ["rank 1 must be stopped (SIGSTOP) but was not found stopped"]
    assert "left no flight trace" in _check(Expect.hang(blocked={0: Blocked()}), {})[0]


def test_a_real_hang_outside_the_stated_collective_fails_the_proof(tmp_path) -> None:
    """Rank 0 hangs in a failpoint (no collective); rank 1 waits for the next header."""
    from harness import Fault, Scenario
    from harness.pipeline.runner import RunConfig, run_scenario

    scenario = Scenario(id="hang-elsewhere", fm="adhoc", title="test", proves="control", chunks=4, deadline_s=1.5,
                        faults=(Fault(site="driver.idle", action="hang", rank=0, chunk=2),),
                        expect=Expect.hang(blocked={"all": Blocked(op="broadcast", site="envelope header")}))
    result = run_scenario(scenario, RunConfig(run_dir=tmp_path / "run"))
    assert result.observed == "HUNG" and not result.passed, result.reason
    assert "rank 0 must be inside broadcast at /envelope header/ but is in none" in result.reason
    assert result.divergence is not None and result.divergence["kind"] == "never entered"
    assert result.divergence["sides"]["1"].startswith("rank 1 broadcast root 0 int64[8] (envelope header")


def test_outside_means_no_open_collective() -> None:
    idle = _doc(0, [_entry(0)])
    inside = _doc(1, [_entry(0), _entry(1, left=False)])
    expect = Expect.hang(blocked={0: Blocked(outside=True), "others": Blocked(op="all_reduce")})
    assert _check(expect, {0: idle, 1: inside}) == []
    assert "must be outside any collective but waits in seq 1" in _check(expect, {0: inside, 1: inside})[0]


# -- stall verdicts -----------------------------------------------------------------------------------

def test_stall_verdict_needs_every_live_rank_stuck_in_an_unmatched_collective() -> None:
    gather = _entry(1, op="all_gather", shape=(7,), dtype="int64", site="digest exchange", left=False)
    r0 = _doc(0, [_entry(0), gather])
    r1 = _doc(1, [_entry(0), _entry(1, left=False)])
    why = trace.stall_verdict({0: r0, 1: r1}, live=[0, 1], stopped=set(), world_size=2)
    assert why is not None and "rank 0 in seq 1 all_gather int64[7] (digest exchange, chunk 2), rank 1 is in " in why
    # Both in the same collective: it may just be slow.
    assert trace.stall_verdict({0: r1, 1: r1}, live=[0, 1], stopped=set(), world_size=2) is None
    # A rank outside any collective (computing, sleeping) may come back.
    idle = _doc(0, [_entry(0), _entry(1)])
    assert trace.stall_verdict({0: idle, 1: r1}, live=[0, 1], stopped=set(), world_size=2) is None
    # A live peer without a trace proves nothing.
    assert trace.stall_verdict({1: r1}, live=[0, 1], stopped=set(), world_size=2) is None


def test_stall_verdict_counts_stopped_and_exited_peers_and_a_root_that_already_left() -> None:
    inside = _doc(1, [_entry(0), _entry(1, left=False)])
    assert trace.stall_verdict({1: inside}, live=[0, 1], stopped={0}, world_size=2).endswith("rank 0 is stopped")
    assert trace.stall_verdict({1: inside}, live=[1], stopped=set(), world_size=2).endswith("rank 0 has exited")
    # The root of a broadcast left it and moved on to compute: the receiver's data is on its way.
    root_left = _doc(0, [_entry(0), _entry(1, op="broadcast", root=0, shape=(8,), dtype="int64")])
    receiving = _doc(1, [_entry(0), _entry(1, op="broadcast", root=0, shape=(8,), dtype="int64", left=False)])
    assert trace.stall_verdict({0: root_left, 1: receiving}, live=[0, 1], stopped=set(), world_size=2) is None


def _tp_run(tmp_path, scenario, **config):
    from harness.pipeline.runner import RunConfig, run_scenario

    return run_scenario(scenario, RunConfig(run_dir=tmp_path / "run", **config))


def test_a_proven_hang_is_called_at_the_stall_not_the_deadline(tmp_path) -> None:
    from harness import Fault, Scenario

    off = Scenario(id="stall", fm="FM-03", title="test", proves="lockstep", guardrails="all,-lockstep", chunks=4,
                   deadline_s=30.0,
                   faults=(Fault(site="driver.plan", action="corrupt(-1)", rank=0, chunk=2),),
                   expect=Expect.hang(blocked={0: Blocked(op="all_gather"), "others": Blocked(op="all_reduce")}))
    result = _tp_run(tmp_path, off, stall_s=0.5)
    assert result.observed == "HUNG" and result.passed, result.reason
    assert "no progress for 0.5 s after TP-FAULT and the flight traces show every live rank stuck" in result.reason
    assert result.hang_verdict_s is not None and result.hang_verdict_s < 30.0
    assert result.ranks[0].stack and result.ranks[1].stack


def test_a_straggler_outside_any_collective_is_not_called_hung(tmp_path) -> None:
    from harness import Fault, Scenario

    slow = Scenario(id="straggler", fm="control", title="test", proves="control", chunks=4,
                    faults=(Fault(site="generator.call", action="sleep(1.0)", rank=1, chunk=2, hit=1),),
                    expect=Expect.clean())
    result = _tp_run(tmp_path, slow, stall_s=0.2)
    assert result.observed == "CLEAN" and result.passed, result.reason


def test_a_run_without_a_divergence_still_says_why(tmp_path) -> None:
    same = [_entry(0), _entry(1, op="all_gather", shape=(7,), dtype="int64", site="digest exchange")]
    (tmp_path / "flight_rank0.json").write_text(json.dumps(_doc(0, same)))
    div = trace.for_run(traces={}, log_dir=tmp_path, world_size=2, texts={}, notes={})
    assert div.kind == "agree" and div.line == ("none: the traced ranks agree on every collective up to seq 1 "
                                                "all_gather int64[7] (digest exchange, chunk 2); rank 1 left no trace")
    empty = trace.for_run(traces={0: _doc(0, []), 1: _doc(1, [])}, log_dir=None, world_size=2, texts={}, notes={})
    assert empty.line == "none: no rank entered a collective"
    assert trace.for_run(traces={}, log_dir=None, world_size=2, texts={}, notes={}).kind == "untraced"


def test_a_rank_idle_for_outside_input_counts_as_stuck_a_busy_one_does_not() -> None:
    inside = _doc(1, [_entry(0), _entry(1, left=False)])
    computing = _doc(0, [_entry(0)])
    assert trace.stall_verdict({0: computing, 1: inside}, live=[0, 1], stopped=set(), world_size=2) is None
    idle = {**computing, "idle": "waiting for the next request"}
    why = trace.stall_verdict({0: idle, 1: inside}, live=[0, 1], stopped=set(), world_size=2)
    assert why.startswith("rank 0 idle in no collective (waiting for the next request); rank 1 in seq 1")
    assert why.endswith("rank 0 never entered it")


def test_a_rank_parked_in_its_own_faults_hang_counts_as_stuck_a_computing_one_does_not() -> None:
    inside = _doc(1, [_entry(0), _entry(1, left=False)])
    computing = _doc(0, [_entry(0)])
    assert trace.stall_verdict({0: computing, 1: inside}, live=[0, 1], stopped=set(), world_size=2) is None
    parked = {0: "parked in its own fault's hang at driver.idle (TP-FAULT action=hang)"}
    why = trace.stall_verdict({0: computing, 1: inside}, live=[0, 1], stopped=set(), world_size=2, parked=parked)
    assert why.startswith("rank 0 parked in its own fault's hang at driver.idle") and why.endswith("rank 0 never entered it")
    # Parked or not, a peer that entered the same collective may still complete it.
    assert trace.stall_verdict({0: inside, 1: inside}, live=[0, 1], stopped=set(), world_size=2, parked=parked) is None


@pytest.mark.parametrize("guardrails", ["all,-watchdog", "all"])
def test_a_hang_fault_is_called_hung_at_the_stall_only_with_no_watchdog_to_end_it(tmp_path, guardrails) -> None:
    from harness import Fault, Scenario

    guarded = guardrails == "all"
    stuck = Scenario(id="parked", fm="FM-15", title="test", proves="watchdog", guardrails=guardrails, chunks=4,
                     deadline_s=30.0, env={"TP_PROGRESS_TIMEOUT_S": "2"},
                     faults=(Fault(site="driver.idle", action="hang", rank=0, chunk=2),),
                     expect=Expect.crash() if guarded else Expect.hang())
    result = _tp_run(tmp_path, stuck, stall_s=0.3)
    assert result.passed, result.reason
    if guarded:  # the watchdog's heartbeats run: its progress deadline (2 s) ends the run, not a stall probe
        assert result.observed == "CRASHED" and result.time_to_crash_s > 1.5, result.reason
    else:
        assert result.observed == "HUNG" and result.hang_verdict_s < 30.0, result.reason
        assert "rank 0 parked in its own fault's hang at driver.idle" in result.reason


def test_a_stopped_rank_is_probed_only_where_beats_were_seen_or_no_rank_has_a_watchdog() -> None:
    from harness.supervise.stall import StallClock

    def due(*, beat_moved_at=None, unwatched=False, beats_visible=True) -> bool:
        clock = StallClock(stall_s=1.0, last_progress_at=0.0, next_probe_at=0.0, beat_moved_at=beat_moved_at,
                           flight_ranks={0, 1})
        return clock.due(10.0, [0, 1], lambda: [1], beats_visible=beats_visible, unwatched=unwatched)

    assert due(beat_moved_at=5.0)  # beats seen, and still for a window: no watchdog is catching it
    assert not due(beat_moved_at=9.5)  # beats still moving: the peers' watchdogs may yet catch it
    assert not due()  # never saw a beat: a watchdog the harness cannot see may yet catch it
    assert due(unwatched=True)  # no rank runs a watchdog: nothing will
    assert not due(beat_moved_at=5.0, beats_visible=False)  # the store is out of sight: a watchdog may act
    assert due(unwatched=True, beats_visible=False)  # ... unless no rank has one


def test_a_short_window_still_leaves_a_stopped_rank_to_the_peers_watchdogs_for_a_second() -> None:
    """A suite's short stall window (0.3 s) must not make a starved heartbeat thread look like a dead watchdog."""
    from harness.supervise.stall import BEATS_SILENT_S, StallClock

    def due(beat_moved_at: float, *, stall_s: float) -> bool:
        clock = StallClock(stall_s=stall_s, last_progress_at=0.0, next_probe_at=0.0, beat_moved_at=beat_moved_at,
                           flight_ranks={0, 1})
        return clock.due(10.0, [0, 1], lambda: [1], beats_visible=True)

    assert BEATS_SILENT_S == 1.0
    assert not due(9.5, stall_s=0.3)  # beats silent 0.5 s: longer than the window, not than the watchdogs' horizon
    assert due(8.9, stall_s=0.3)  # silent over a second: nothing is beating
    assert not due(8.5, stall_s=2.0)  # a window longer than the horizon still counts


# -- the true first divergence: call ids and sites, where traces have them -----------------------------


def _calls(plan: list[int], *, chunk: int = 1) -> list[dict]:
    """One rank's trace: a chunk barrier, then one all_reduce per call id in ``plan`` (site ``step <id>``)."""
    entries = [dict(_entry(0, op="barrier", shape=(4,), dtype="float32", site="chunk start"), call_id=None)]
    for seq, call in enumerate(plan, start=1):
        entries.append(dict(_entry(seq, shape=(4,), dtype="float32", site=f"step {call}", chunk=chunk), call_id=call))
    return entries


@pytest.mark.parametrize(
    ("rank1", "seq", "kind"),
    [([1, 2, 4, 5], 3, "mismatch"),        # call 3 skipped: seq 3 is call 4 on rank 1, call 3 on rank 0
     ([1, 2, 3, 3, 4, 5], 4, "mismatch"),  # call 3 twice: seq 4 is call 3 again on rank 1
     ([1, 2, 4, 3, 5], 3, "mismatch")],    # calls 3 and 4 swapped
    ids=["skipped", "extra", "reordered"],
)
def test_the_first_divergence_is_where_call_ids_and_sites_part(rank1, seq, kind) -> None:
    r0 = _calls([1, 2, 3, 4, 5])
    r1 = _calls(rank1)
    # Shapes alone agree on every seq both ranks entered: the old answer was the end of the shorter trace.
    assert all(trace.signature(a) == trace.signature(b) for a, b in zip(r0, r1, strict=False))
    div = trace.first_divergence({0: _doc(0, r0), 1: _doc(1, r1)}, 2)
    assert div is not None and (div.seq, div.kind) == (seq, kind), div.line
    assert f"rank 0 all_reduce float32[4] (step {seq}, chunk 1) call_id {seq}" in div.line


def test_a_broadcast_s_receiver_may_lag_its_call_id() -> None:
    root = [dict(_entry(0, op="broadcast", shape=(8,), dtype="int64", site="envelope header", root=0), call_id=4)]
    recv = [dict(_entry(0, op="broadcast", shape=(8,), dtype="int64", site="envelope header", root=0), call_id=3)]
    assert trace.first_divergence({0: _doc(0, root), 1: _doc(1, recv)}, 2) is None


def test_a_trace_older_than_its_rank_s_last_sign_of_life_is_dropped(tmp_path) -> None:
    (tmp_path / "flight_rank0.json").write_text(json.dumps(_doc(0, [_entry(i) for i in range(3)], mono=300.0)))
    startup = {**_doc(1, [], mono=100.5), "reason": "init"}  # written at start-up; the rank ran on, then was killed
    (tmp_path / "flight_rank1.json").write_text(json.dumps(startup))
    div = trace.for_run(traces={}, log_dir=tmp_path, world_size=2, texts={}, notes={1: "SIGKILL"},
                        progress_at={1: 104.0}, alive_at={1: 105.0})
    assert "no collective yet" not in div.line, div.line
    assert div.line.endswith("; rank 1: its newest trace (init, written at mono 100.500) is older than its last "
                             "sign of life (mono 105.000), so it was dropped"), div.line
    # Beside a rank stuck inside a collective, the dropped rank is named with why it has no trace.
    (tmp_path / "flight_rank0.json").write_text(json.dumps(_doc(0, [_entry(0), _entry(1, left=False)], mono=300.0)))
    div = trace.for_run(traces={}, log_dir=tmp_path, world_size=2, texts={}, notes={1: "SIGKILL"},
                        progress_at={1: 104.0}, alive_at={1: 105.0})
    assert (div.seq, div.kind) == (1, "never left")
    assert div.sides[1].startswith("rank 1 has no flight trace (its newest trace (init"), div.sides
    # A final dump is the rank's last word, and a rank inside a collective may still be stuck there.
    assert trace.stale({**startup, "reason": "exit"}, progress_at=104.0, alive_at=105.0) == ""
    inside = _doc(1, [_entry(0, left=False)], mono=100.5)
    assert trace.stale(inside, progress_at=None, alive_at=105.0) == ""
    assert trace.stale(inside, progress_at=104.0, alive_at=105.0) != ""


def test_another_process_group_s_collectives_part_in_time_order_not_by_group_number() -> None:
    # A zero-touch TP group (group 1): rank 1 skipped its 2nd all_reduce there at t=101, then, alone, reached a
    # final default-group barrier at t=105. The first divergence is the TP group's, where the ranks parted.
    g = trace.GROUP_STRIDE

    def e(seq, op, enter, left=True, site=None):
        return {"seq": seq, "op": op, "shapes": [[4]], "dtypes": ["float32"], "root": None, "site": site,
                "chunk": None, "call_id": None, "enter": enter, "leave": enter if left else None}

    r0 = [e(0, "broadcast", 99.0), e(g, "all_reduce", 100.0, site="all_reduce call 1"),
          e(g + 1, "all_reduce", 101.0, left=False, site="all_reduce call 2")]
    r1 = [e(0, "broadcast", 99.0), e(g, "all_reduce", 100.0, site="all_reduce call 1"),
          e(g + 1, "all_reduce", 101.0, site="all_reduce call 3"), e(1, "barrier", 105.0, left=False)]
    found = trace.first_divergence({0: _doc(0, r0), 1: _doc(1, r1)}, 2)
    assert found.seq == g + 1 and found.line.startswith("seq 1 of process group 1: "), found.line


def test_an_own_timeout_already_past_does_not_hide_one_still_to_come() -> None:
    def stuck(rank, enter, timeout_s):
        entry = {**_entry(3, left=False), "enter": enter, "timeout_s": timeout_s}
        return _doc(rank, [entry])

    traces = {0: stuck(0, 100.0, 3.0), 1: stuck(1, 100.0, 5.5), 2: stuck(2, 100.0, "3s")}
    assert trace.own_timeout(traces, live=[0, 1, 2], stopped=set())[0] == 103.0
    at, what = trace.own_timeout(traces, live=[0, 1, 2], stopped=set(), after=104.0)
    assert at == 105.5 and what.startswith("rank 1's own 5.5 s timeout"), what
    assert trace.own_timeout(traces, live=[2], stopped=set()) is None, "a timeout_s that is no number is none"
