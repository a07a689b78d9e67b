"""Declarations: Fault specs, Expect, Scenario validation, the catalog loader."""

from __future__ import annotations

import re
import textwrap

import pytest

from harness import Blocked, Expect, Fault, Interrupt, Outcome, Scenario, load_catalog, peers_follow
from harness.declare.fault import parse_faults
from harness.declare.scenario import HANG_DEADLINE_S


@pytest.mark.parametrize(
    ("fault", "spec"),
    [
        (Fault(site="envelope.after_header", action="raise", rank=0, chunk=2),
         "envelope.after_header=raise@rank=0,chunk=2"),
        (Fault(site="a.b", action="exit(40)"), "a.b=exit(40)"),
        (Fault(site="gen.call", action="kill(SIGSTOP)", rank=1, call=7, hit=1),
         "gen.call=kill(SIGSTOP)@rank=1,call=7,hit=1"),
        (Fault(site="x.y_z", action="sleep(0.5)"), "x.y_z=sleep(0.5)"),
        (Fault(site="meta.value", action="corrupt(callable)", chunk=0), "meta.value=corrupt(callable)@chunk=0"),
        (Fault(site="plan.flag", action="set(3)"), "plan.flag=set(3)"),
    ],
)
def test_fault_spec_round_trips(fault: Fault, spec: str) -> None:
    assert fault.spec() == spec
    assert Fault.parse(spec) == fault


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"site": "nodots", "action": "raise"}, "dotted name"),
        ({"site": "a.b", "action": "Explode"}, "must be NAME or NAME(ARG)"),
        ({"site": "a.b", "action": "exit(4"}, "must be NAME or NAME(ARG)"),
        ({"site": "a.b", "action": "set(a;b)"}, "must be NAME or NAME(ARG)"),
        ({"site": "a.b", "action": "raise", "hit": 0}, "hit must be an integer >= 1"),
        ({"site": "a.b", "action": "raise", "rank": -1}, "rank must be an integer >= 0"),
    ],
)
def test_bad_fault_syntax_says_what_and_valid_choices(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Fault(**kwargs)


def test_what_an_action_means_is_left_to_the_tp_path() -> None:
    # Which actions exist and what their arguments may be is the TP path's grammar, asked before any rank
    # starts (tests/test_harness_evidence.py shows the refusals); the harness only checks the shape.
    for action in ("exit(999)", "explode", "corrupt(foo)", "sleep(1e20)"):
        assert Fault.parse(f"a.b={action}").action == action


def test_every_fault_the_tp_path_declares_round_trips_through_the_harness() -> None:
    # One grammar: what the TP path accepts, the harness's syntax check passes unchanged.
    from tp import failpoints

    specs = []
    for site in failpoints.SITES:
        for action in failpoints.declared(site)["actions"]:
            args = action.get("args")
            values = args if isinstance(args, list) else [None] if args is None else ["0.5"]
            for arg in values:
                body = action["action"] + (f"({arg})" if arg is not None else "")
                specs += [f"{site}={body}", f"{site}={body}@rank=1,chunk=2,call=3,hit=1"]
    for spec in specs:
        failpoints.parse(spec)
        assert Fault.parse(spec).spec() == spec
    assert len(specs) > 50


@pytest.mark.parametrize("spec", ["", "a.b", "a.b=raise@rank", "a.b=raise@rank=x", "a.b=raise@bogus=1", "=raise"])
def test_bad_fault_spec_is_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match=r"malformed failpoint|bad trigger|expected one fault"):
        Fault.parse(spec)


def test_parse_faults_splits_entries() -> None:
    faults = parse_faults("a.b=raise@rank=0; c.d=hang@rank=1,chunk=3")
    assert [f.spec() for f in faults] == ["a.b=raise@rank=0", "c.d=hang@rank=1,chunk=3"]


def test_expect_constructors_and_signature_resolution() -> None:
    assert Expect.crash().outcomes == {Outcome.CRASHED}
    assert Expect.clean().outcomes == {Outcome.CLEAN}
    assert Expect.hang().outcomes == {Outcome.HUNG}
    assert Expect.diverge().outcomes == {Outcome.DIVERGED}
    assert Expect.hang_or_diverge().describe() == "HUNG|DIVERGED"
    expect = Expect.crash({0: "ROOT", "others": "PEER", "all": "TP-FATAL"})
    resolved = {r: [p.pattern for p in pats] for r, pats in expect.signatures_for(3).items()}
    assert resolved == {0: ["ROOT", "TP-FATAL"], 1: ["PEER", "TP-FATAL"], 2: ["PEER", "TP-FATAL"]}
    with pytest.raises(ValueError, match="signature for rank 3 but the world size is 2"):
        Expect.crash({3: "x"}).signatures_for(2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outcomes": frozenset()}, "non-empty set"),
        ({"outcomes": frozenset({Outcome.HARNESS_ERROR})}, "non-empty set of CLEAN, CRASHED, HUNG, DIVERGED"),
        ({"outcomes": frozenset({Outcome.CRASHED}), "signatures": {"some": "x"}}, "rank number, 'others' or 'all'"),
        ({"outcomes": frozenset({Outcome.CRASHED}), "signatures": {0: "("}}, "not a valid regex"),
    ],
)
def test_bad_expect(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Expect(**kwargs)


def test_scenario_derives_fm_and_the_hang_deadline() -> None:
    assert _scenario(id="FM-07/off", fm="").fm == "FM-07"
    assert Scenario(id="FM-99", title="t", proves="lockstep", expect=Expect.crash()).fm == "FM-99"
    with pytest.raises(ValueError, match="fm must be .* the id's first part"):
        Scenario(id="CTL-a", title="t", proves="control", expect=Expect.clean())
    assert _scenario(expect=Expect.hang()).deadline_s == HANG_DEADLINE_S
    assert _scenario(expect=Expect.hang_or_diverge()).deadline_s == HANG_DEADLINE_S
    assert _scenario(expect=Expect.hang(), deadline_s=9.0).deadline_s == 9.0
    assert _scenario(expect=Expect.crash()).deadline_s is None
    with pytest.raises(ValueError, match="deadline_s must be a number of seconds > 0"):
        Expect.hang(deadline_s=0)


def test_peers_follow_names_the_cause_rank_only() -> None:
    line = "TP-FATAL fm=FM-01 code=PEER_ABORT rank=1 cause_rank=0 call_id=7 chunk=3"
    assert re.search(peers_follow(0), line)
    assert not re.search(peers_follow(1), line)
    assert not re.search(peers_follow(1), line.replace("cause_rank=0", "cause_rank=10"))


def test_ranks_a_scenario_names_must_exist_at_its_world_size() -> None:
    ok = _scenario(faults=(Fault(site="a.b", action="raise", rank=1),), expect=Expect.crash({1: "x"}))
    ok.check_ranks(2)
    with pytest.raises(ValueError, match=r"faults\[0\] 'a.b=raise@rank=1' names rank 1, but it runs at world size 1"):
        ok.check_ranks(1)
    for kw in ({"rank_env": {2: {"TP_X": "1"}}}, {"expect": Expect.crash({2: "x"})},
               {"expect": Expect.crash(frozen={2})}, {"interrupt": Interrupt(rank=2)},
               {"expect": Expect.hang(blocked={2: Blocked(op="all_reduce")})}):
        with pytest.raises(ValueError, match="names rank 2, but it runs at world size 2"):
            _scenario(**kw).check_ranks(2)


def test_proves_names_guardrails_for_the_tp_path_to_check() -> None:
    assert _scenario(proves="preflight+poison_on_post_header_error").guardrails_proven() == [
        "preflight", "poison_on_post_header_error"]
    assert _scenario(proves="control").guardrails_proven() == []


def _scenario(**kw) -> Scenario:
    base = {"id": "FM-01", "fm": "FM-01", "title": "t", "proves": "preflight", "expect": Expect.crash()}
    return Scenario(**{**base, **kw})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"id": "FM 01"}, "id must look like"),
        ({"fm": "FM-1"}, "fm must be"),
        ({"proves": "Pre flight"}, "proves must be"),
        ({"guardrails": "all,preflight"}, "'all,-NAME'"),
        ({"env": {"RANK": "1"}}, "which the harness owns"),
        ({"rank_env": {1: {"TP_FAILPOINTS": "x"}}}, "which the harness owns"),
        ({"env": {"X": 1}}, "must map str to str"),
        ({"chunks": 0}, "chunks must be an integer >= 1"),
        ({"deadline_s": -1}, "deadline_s must be a number of seconds > 0"),
        ({"faults": ("a.b=raise",)}, "faults must be Fault objects"),
        ({"expect": "crash"}, "expect must be an Expect"),
    ],
)
def test_bad_scenario_names_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        _scenario(**kwargs)


def test_scenario_helpers() -> None:
    s = _scenario(id="FM-01/off", guardrails="all,-preflight", min_world_size=4,
                  faults=(Fault(site="a.b", action="raise"), Fault(site="c.d", action="hang", rank=1)))
    assert str(s) == "FM-01/off"
    assert s.failpoints() == "a.b=raise;c.d=hang@rank=1"
    assert s.guardrail_off("preflight") and not s.guardrail_off("lockstep")
    assert _scenario(guardrails="none,+watchdog").guardrail_off("digest")
    assert not _scenario(guardrails="none,+watchdog").guardrail_off("watchdog")
    assert "needs world size >= 4" in s.skip_reason(2)
    assert s.skip_reason(4) is None
    with pytest.raises(ValueError, match="unknown signal"):
        Interrupt(signal="SIGNOPE")


def test_load_catalog_collects_and_rejects_duplicates(tmp_path) -> None:
    body = textwrap.dedent("""
        from harness import Expect, Scenario
        SCENARIOS = [Scenario(id="{id}", fm="control", title="t", proves="control", expect=Expect.clean())]
    """)
    (tmp_path / "test_a.py").write_text(body.format(id="control/a"))
    (tmp_path / "test_b.py").write_text(body.format(id="control/b"))
    ids = [s.id for s in load_catalog(sorted(tmp_path.glob("test_*.py")))]
    assert ids == ["control/a", "control/b"]
    (tmp_path / "test_c.py").write_text(body.format(id="control/a"))
    with pytest.raises(ValueError, match=r"duplicate scenario id 'control/a' in .*test_a.py and .*test_c.py"):
        load_catalog(sorted(tmp_path.glob("test_*.py")))
