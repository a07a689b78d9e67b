"""Parsing what a rank is told: TP_FAILPOINTS, TP_GUARDRAILS, torchrun's variables and TP_* overrides."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from contract import faults as grammar
from tp import PLAN, PROTOCOL_VERSION, config, failpoints, guardrails
from tp.config import ConfigError
from tp.failpoints import ACTIONS, SITES, Armed, FailpointError, InjectedFault, arm, failpoint, parse
from tp.guardrails import NAMES, GuardrailError

REPO = Path(__file__).resolve().parents[1]
SITE = "envelope.after_header"
FAULT_LINE = re.compile(
    r"^TP-FAULT site=(?P<site>\S+) action=(?P<action>\S+) rank=(?P<rank>\S+) chunk=(?P<chunk>\S+) "
    r"call_id=(?P<call_id>\S+) mono=(?P<mono>\d+\.\d{6})$"
)


@pytest.fixture(autouse=True)
def _disarmed() -> Iterator[None]:
    arm("")
    yield
    arm("")


def _faults(out: str) -> list[dict[str, str]]:
    lines = [line for line in out.splitlines() if line.startswith("TP-FAULT")]
    matches = [FAULT_LINE.match(line) for line in lines]
    assert all(matches), lines
    return [m.groupdict() for m in matches]


# -- TP_FAILPOINTS: valid specs ----------------------------------------------------

@pytest.mark.parametrize(("spec", "action", "arg"), [
    (f"{SITE}=raise", "raise", None),
    (f"{SITE}=exit(3)", "exit", "3"),
    (f"{SITE}=kill(SIGKILL)", "kill", "SIGKILL"),
    (f"{SITE}=kill(SIGSTOP)", "kill", "SIGSTOP"),
    (f"{SITE}=hang", "hang", None),
    (f"{SITE}=sleep(0.5)", "sleep", "0.5"),
    (f"{SITE}=corrupt", "corrupt", None),
    (f"{SITE}=corrupt(tensor)", "corrupt", "tensor"),
    (f"{SITE}=flip", "flip", None),
    (f"{SITE}=set(none)", "set", "none"),
    (f"{SITE}=set(uint16)", "set", "uint16"),
])
def test_every_action_parses(spec: str, action: str, arg: str | None) -> None:
    assert parse(spec) == [Armed(site=SITE, action=grammar.Action(action, arg))]


def test_every_action_is_covered_above() -> None:
    assert set(ACTIONS) == {"raise", "exit", "kill", "hang", "sleep", "corrupt", "flip", "set"}


def test_triggers_and_multiple_entries_parse() -> None:
    spec = f" {SITE}=raise@rank=0,chunk=2 ; driver.plan=corrupt(2)@call=7,hit=3 ;; generator.call=hang@rank=1;"
    assert parse(spec) == [
        Armed(site=SITE, action=grammar.Action("raise"), triggers={"rank": 0, "chunk": 2}),
        Armed(site="driver.plan", action=grammar.Action("corrupt", "2"), triggers={"call": 7, "hit": 3}),
        Armed(site="generator.call", action=grammar.Action("hang"), triggers={"rank": 1}),
    ]


@pytest.mark.parametrize("spec", ["", "   ", ";", " ; ; "])
def test_an_empty_spec_arms_nothing(spec: str) -> None:
    arm(spec)
    assert parse(spec) == [] and failpoints.ARMED is False


def test_every_site_in_the_registry_can_be_armed() -> None:
    arm(";".join(f"{site}=raise" for site in SITES))
    assert failpoints.ARMED is True


# -- TP_FAILPOINTS: malformed specs ----------------------------------------------

@pytest.mark.parametrize(("spec", "says"), [
    (SITE, "malformed failpoint 'envelope.after_header' in TP_FAILPOINTS; expected SITE=ACTION[(ARG)][@TRIGGER=N,...]"),
    (f"{SITE}=", "malformed failpoint"),
    (f"{SITE}=raise(", "malformed failpoint"),
    (f"{SITE} = raise", "malformed failpoint"),
    (f"{SITE}=Raise", "malformed failpoint"),
    (f"{SITE}=exit((3))", "malformed failpoint"),
    (f"{SITE}=explode", f"unknown failpoint action 'explode' at {SITE} in TP_FAILPOINTS; known: " + ", ".join(ACTIONS)),
    (f"{SITE}=exit", "exit needs an integer code"),
    (f"{SITE}=exit()", "exit needs an integer code"),
    (f"{SITE}=exit(x)", "exit needs an integer code"),
    (f"{SITE}=exit(-1)", "exit needs an integer code"),
    (f"{SITE}=kill", "kill needs a signal name, e.g. kill(SIGKILL) or kill(SIGSTOP), got None"),
    (f"{SITE}=kill(SIGBOGUS)", "got 'SIGBOGUS'"),
    (f"{SITE}=kill(9)", "got '9'"),
    (f"{SITE}=kill(SIG_IGN)", "got 'SIG_IGN'"),
    (f"{SITE}=sleep", "sleep needs seconds, e.g. sleep(0.5), got None"),
    (f"{SITE}=sleep(soon)", "got 'soon'"),
    (f"{SITE}=set", "set needs a value"),
    (f"{SITE}=raise@rank", "bad trigger 'rank'"),
    (f"{SITE}=raise@rank=x", "bad trigger 'rank=x'"),
    (f"{SITE}=raise@node=1", "bad trigger 'node=1' at envelope.after_header in TP_FAILPOINTS; expected one of rank=N, chunk=N, call=N, hit=N"),
    (f"{SITE}=raise@chunk=1.5", "bad trigger 'chunk=1.5'"),
])
def test_malformed_specs_are_rejected(spec: str, says: str) -> None:
    with pytest.raises(FailpointError) as info:
        parse(spec)
    assert says in str(info.value)


def test_unknown_site_lists_every_known_site() -> None:
    with pytest.raises(FailpointError) as info:
        parse("envelope.aftr_header=raise")
    message = str(info.value)
    assert message == (f"no such failpoint 'envelope.aftr_header' in TP_FAILPOINTS; known: "
                       f"{', '.join(sorted(SITES))}")


def test_errors_name_where_the_spec_came_from() -> None:
    with pytest.raises(FailpointError, match=r"in --faults"):
        parse("nope=raise", where="--faults")


def test_a_bad_entry_anywhere_rejects_the_whole_spec_and_keeps_the_old_arming() -> None:
    arm(f"{SITE}=flip")
    with pytest.raises(FailpointError):
        arm(f"{SITE}=raise;generator.call=explode")
    assert failpoints.ARMED and failpoint(SITE, False) is True


@pytest.mark.parametrize("spec", [
    f"{SITE}=sleep(-1)", f"{SITE}=sleep(nan)", f"{SITE}=sleep(inf)", f"{SITE}=set()",
    f"{SITE}=raise@hit=0", f"{SITE}=exit(256)", f"{SITE}=raise@rank=-1", f"{SITE}=raise@chunk=-2",
], ids=["sleep-negative", "sleep-nan", "sleep-inf", "set-empty", "hit-zero", "exit-over-255", "rank-negative",
        "chunk-negative"])
def test_specs_that_could_never_act_as_written_are_rejected_at_start(spec: str) -> None:
    # Each of these parses today and then misbehaves only when it fires (time.sleep raises
    # ValueError/OverflowError inside the rank; set() injects ''; hit is 1-based so hit=0 never
    # fires; exit status 256 wraps to 0 = "clean"; no rank or chunk is negative). A malformed spec must
    # fail at start.
    with pytest.raises(FailpointError):
        parse(spec)


# -- failpoint(): disarmed, triggers, the TP-FAULT line -----------------------------

def test_disarmed_failpoint_returns_the_value_untouched_and_prints_nothing(capsys) -> None:
    value = object()
    assert failpoints.ARMED is False
    assert failpoint(SITE, value, rank=0, chunk=1, call_id=2) is value
    assert failpoint("no.such.site", value) is value  # disarmed cost: one boolean, no lookup
    assert capsys.readouterr().out == ""


def test_an_armed_process_refuses_an_unknown_site_at_the_call(capsys) -> None:
    arm(f"{SITE}=flip")
    with pytest.raises(FailpointError, match="no such failpoint 'envelope.aftr_header'"):
        failpoint("envelope.aftr_header", False)
    assert failpoint("generator.call", "v") == "v"  # armed, but not this site
    assert capsys.readouterr().out == ""


def test_firing_prints_one_fault_line_before_acting(capsys) -> None:
    arm(f"{SITE}=raise@rank=1,chunk=2")
    with pytest.raises(InjectedFault, match=f"failpoint {SITE} raised"):
        failpoint(SITE, rank=1, chunk=2, call_id=7)
    (fault,) = _faults(capsys.readouterr().out)
    assert fault | {"mono": "-"} == {"site": SITE, "action": "raise", "rank": "1", "chunk": "2", "call_id": "7", "mono": "-"}


def test_fault_line_carries_the_argument_and_a_monotonic_stamp(capsys) -> None:
    before = time.monotonic()
    arm(f"{SITE}=set(3)")
    assert failpoint(SITE, 0, rank=0, chunk=0, call_id=0) == 3
    (fault,) = _faults(capsys.readouterr().out)
    assert fault["action"] == "set(3)"
    assert before <= float(fault["mono"]) <= time.monotonic()


@pytest.mark.parametrize(("trigger", "fires_at"), [
    ("rank=1", [(1, 0, 0), (1, 1, 4), (1, 2, 9)]),
    ("chunk=1", [(0, 1, 4), (1, 1, 4)]),
    ("call=9", [(0, 2, 9), (1, 2, 9)]),
    ("rank=1,chunk=2", [(1, 2, 9)]),
    ("hit=2", [(0, 0, 0)]),
    ("rank=1,hit=2", [(1, 1, 4)]),
    ("chunk=0,hit=1", [(1, 0, 0)]),
    ("rank=3", []),
], ids=lambda x: x if isinstance(x, str) else None)
def test_triggers_select_the_right_hits(trigger: str, fires_at: list, capsys) -> None:
    arm(f"{SITE}=flip@{trigger}")
    hits = [(rank, chunk, call) for chunk, call in ((0, 0), (1, 4), (2, 9)) for rank in (1, 0)]
    fired = [ctx for ctx in hits if failpoint(SITE, False, rank=ctx[0], chunk=ctx[1], call_id=ctx[2])]
    assert sorted(fired) == sorted(fires_at)
    faults = _faults(capsys.readouterr().out)
    assert sorted((int(f["rank"]), int(f["chunk"]), int(f["call_id"])) for f in faults) == sorted(fires_at)


def test_entries_on_one_site_apply_in_order(capsys) -> None:
    arm("driver.plan=corrupt(10);driver.plan=corrupt(5)@chunk=1")
    assert failpoint("driver.plan", 4, rank=0, chunk=0, call_id=0) == 14
    assert failpoint("driver.plan", 4, rank=0, chunk=1, call_id=4) == 19
    assert len(_faults(capsys.readouterr().out)) == 3


def test_sleep_returns_the_value() -> None:
    arm(f"{SITE}=sleep(0)")
    assert failpoint(SITE, "v") == "v"


# -- corrupt / flip / set ------------------------------------------------------------

@pytest.mark.parametrize(("arg", "key", "code"), [
    (None, "callback", "function"), ("callable", "callback", "function"),
    ("tensor", "bad_tensor", "tensor"), ("nan", "bad_nan", "nan"),
])
def test_corrupt_on_a_dict_adds_a_value_the_encoder_rejects_by_path(arg: str | None, key: str, code: str) -> None:
    from tp.envelope import EnvelopeError, encode_meta

    meta = {"tp_plan": PLAN}
    arm("driver.meta=corrupt" + (f"({arg})" if arg else ""))
    bad = failpoint("driver.meta", meta)
    assert meta == {"tp_plan": PLAN} and set(bad) == {"tp_plan", key}
    with pytest.raises(EnvelopeError) as info:
        encode_meta(bad)
    assert info.value.code == "META_UNSERIALIZABLE" and str(info.value).startswith(f"meta[{key!r}]: {code}")


def test_corrupt_with_an_unknown_kind_is_rejected_when_armed() -> None:
    with pytest.raises(FailpointError, match="corrupt takes callable\\|tensor\\|nan\\|last or a number, got 'pickle'"):
        arm("driver.meta=corrupt(pickle)")


@pytest.mark.parametrize(("arg", "delta"), [(None, 1e-3), ("0.5", 0.5)])
def test_corrupt_on_a_tensor_perturbs_one_element_of_a_copy(arg: str | None, delta: float) -> None:
    t = torch.zeros(3, 2, dtype=torch.float64)
    arm("envelope.after_recv=corrupt" + (f"({arg})" if arg else ""))
    out = failpoint("envelope.after_recv", t)
    assert torch.equal(t, torch.zeros(3, 2, dtype=torch.float64)), "the original must not change"
    assert out.shape == t.shape and out.dtype == t.dtype
    assert out[0, 0].item() == pytest.approx(delta) and torch.count_nonzero(out).item() == 1


def test_corrupt_last_perturbs_the_last_element_only() -> None:
    t = torch.zeros(3, 2, dtype=torch.float64)
    arm("envelope.after_recv=corrupt(last)")
    out = failpoint("envelope.after_recv", t)
    assert out[2, 1].item() == pytest.approx(1e-3) and torch.count_nonzero(out).item() == 1


@pytest.mark.parametrize(("value", "arg", "want"), [(4, None, 5), (4, "3", 7), (True, None, False), (False, None, True)])
def test_corrupt_on_int_and_bool(value: object, arg: str | None, want: object) -> None:
    arm("driver.plan=corrupt" + (f"({arg})" if arg else ""))
    got = failpoint("driver.plan", value)
    assert got == want and type(got) is type(want)


def test_corrupt_refuses_a_type_it_cannot_corrupt() -> None:
    arm("driver.plan=corrupt")
    with pytest.raises(FailpointError, match="cannot corrupt a str"):
        failpoint("driver.plan", "text")


@pytest.mark.parametrize(("value", "want"), [(False, True), (True, False)])
def test_flip(value: bool, want: bool) -> None:
    arm("worker.skip_recompute=flip")
    assert failpoint("worker.skip_recompute", value) is want


@pytest.mark.parametrize(("arg", "want"), [("none", None), ("None", None), ("uint16", "uint16"), ("3", 3),
                                           ("2.5", 2.5), ("true", True), ('"x"', "x")])
def test_set_parses_its_value(arg: str, want: object) -> None:
    arm(f"driver.override=set({arg})")
    got = failpoint("driver.override", torch.ones(1))
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(("action", "rc"), [("exit(7)", 7), ("kill(SIGTERM)", -signal.SIGTERM)])
def test_exit_and_kill_act_after_the_fault_line_is_flushed(action: str, rc: int) -> None:
    code = ("from tp.failpoints import arm, failpoint\n"
            f"arm('driver.idle={action}@chunk=1')\n"
            "for chunk in range(3):\n"
            "    failpoint('driver.idle', rank=0, chunk=chunk, call_id=chunk)\n"
            "    print('after', chunk, flush=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == rc, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "after 0" and len(lines) == 2, lines
    (fault,) = _faults(proc.stdout)
    assert (fault["site"], fault["action"], fault["chunk"]) == ("driver.idle", action, "1")


# -- TP_GUARDRAILS --------------------------------------------------------------------

ALL = frozenset(NAMES)


@pytest.mark.parametrize(("spec", "on"), [
    (None, ALL), ("", ALL), ("all", ALL), (" all ", ALL), ("none", frozenset()),
    ("all,-preflight", ALL - {"preflight"}),
    ("all, -preflight , -watchdog", ALL - {"preflight", "watchdog"}),
    ("-preflight", ALL - {"preflight"}),
    ("none,+watchdog", frozenset({"watchdog"})),
    ("+watchdog", ALL),
    ("none,+watchdog,+digest,-watchdog", frozenset({"digest"})),
    ("digest,watchdog", frozenset({"digest", "watchdog"})),
    ("digest", frozenset({"digest"})),
    ("all,-preflight,+preflight", ALL),
])
def test_guardrail_specs(spec: str | None, on: frozenset[str]) -> None:
    assert guardrails.parse(spec) == on


def test_all_switches_on_every_guardrail_the_design_names() -> None:
    # DESIGN.md §2.2's table; production runs with "all", so each of them must be on under it.
    assert {"preflight", "poison_on_post_header_error", "lockstep", "handshake", "digest",
            "clear_after_read", "watchdog"} <= guardrails.parse("all")


@pytest.mark.parametrize("spec", ["bogus", "all,-bogus", "none,+prefight", "digest,bogus", "ALL"])
def test_unknown_guardrail_lists_the_valid_ones(spec: str) -> None:
    with pytest.raises(GuardrailError) as info:
        guardrails.parse(spec)
    assert re.match(r"unknown guardrail '\w+' in TP_GUARDRAILS; known: ", str(info.value))
    assert str(info.value).endswith(", ".join(NAMES))


@pytest.mark.parametrize("spec", ["all,preflight", "none,watchdog", "all,none", "none,*digest"])
def test_an_edit_without_a_sign_is_rejected(spec: str) -> None:
    with pytest.raises(GuardrailError, match=r"invalid guardrail edit .* write all\|none followed by -name or \+name"):
        guardrails.parse(spec)


@pytest.mark.parametrize(("on", "text"), [
    (ALL, "all"), (frozenset(), "none"), (ALL - {"preflight"}, "all,-preflight"),
])
def test_describe(on: frozenset[str], text: str) -> None:
    assert guardrails.describe(on) == text


@pytest.mark.parametrize("name", list(NAMES))
def test_describe_round_trips_through_parse(name: str) -> None:
    for on in (ALL - {name}, frozenset({name}), frozenset(NAMES) - {name, "watchdog"}):
        assert guardrails.parse(guardrails.describe(on)) == on


# -- config.from_env ---------------------------------------------------------------------

BASE_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _config_error(env: dict, **cli: object) -> str:
    with pytest.raises(ConfigError) as info:
        config.from_env(env, **cli)
    return str(info.value)


def test_defaults_from_torchrun_variables() -> None:
    cfg = config.from_env(BASE_ENV)
    assert (cfg.rank, cfg.world_size, cfg.local_rank, cfg.master_addr, cfg.master_port) == (1, 2, 1, "127.0.0.1", 29500)
    assert cfg.protocol_version == PROTOCOL_VERSION and cfg.plan == PLAN and cfg.role == "worker"
    assert cfg.guardrails == ALL and cfg.failpoints == () and cfg.host_store is True
    assert cfg.kv_recompute is True and cfg.sync_kv_stats is False and cfg.digest_every == 1
    assert (cfg.heartbeat_s, cfg.peer_timeout_s, cfg.progress_timeout_s, cfg.handshake_timeout_s) == (0.05, 2.0, 60.0, 10.0)
    assert set(cfg.env_parity) == set(config.ENV_PARITY_KEYS)


def test_every_variable_is_read() -> None:
    env = {**BASE_ENV, "TORCHELASTIC_USE_AGENT_STORE": "True", "TP_GUARDRAILS": "none,+watchdog",
           "TP_FAILPOINTS": f"{SITE}=raise", "TP_PROTOCOL_VERSION_OVERRIDE": "2", "TP_PLAN": "v1_full_pipeline",
           "TP_DRIVER_RANK": "1", "TP_KV_RECOMPUTE": "0", "TP_SYNC_KV_STATS": "1", "TP_HEARTBEAT_S": "0.1",
           "TP_PEER_TIMEOUT_S": "3", "TP_PROGRESS_TIMEOUT_S": "4.5", "TP_HANDSHAKE_TIMEOUT_S": "5",
           "TP_COLLECTIVE_TIMEOUT_S": "6", "TP_DIGEST_EVERY": "4"}
    cfg = config.from_env(env, chunks=3, reset_every=2, backend="gloo")
    assert cfg.host_store is False and cfg.guardrails == {"watchdog"}
    assert [(a.site, str(a.action), a.triggers) for a in cfg.failpoints] == [(SITE, "raise", {})]
    assert (cfg.protocol_version, cfg.plan, cfg.driver_rank, cfg.role) == (2, "v1_full_pipeline", 1, "driver")
    assert (cfg.kv_recompute, cfg.sync_kv_stats, cfg.digest_every, cfg.chunks, cfg.reset_every) == (False, True, 4, 3, 2)
    assert (cfg.heartbeat_s, cfg.peer_timeout_s, cfg.progress_timeout_s) == (0.1, 3.0, 4.5)
    assert (cfg.handshake_timeout_s, cfg.collective_timeout_s) == (5.0, 6.0)
    assert cfg.env_parity["TP_GUARDRAILS"] == "none,+watchdog" and cfg.env_parity["TP_DRIVER_RANK"] == "1"


def test_a_bad_failpoint_spec_is_a_config_error_like_a_bad_guardrail() -> None:
    assert "no such failpoint 'nope' in TP_FAILPOINTS; known: " in _config_error({**BASE_ENV, "TP_FAILPOINTS": "nope=raise"})
    assert "bad trigger 'rank=-1' at envelope.after_header in TP_FAILPOINTS" in _config_error({**BASE_ENV, "TP_FAILPOINTS": f"{SITE}=raise@rank=-1"})


def test_the_real_environment_is_the_default_source(monkeypatch) -> None:
    for name, value in BASE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TP_PROTOCOL_VERSION_OVERRIDE", "7")
    assert config.from_env().protocol_version == 7


@pytest.mark.parametrize("name", ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"])
def test_a_missing_torchrun_variable_is_named(name: str) -> None:
    env = {k: v for k, v in BASE_ENV.items() if k != name}
    assert _config_error(env).startswith(f"{name} is not set")


@pytest.mark.parametrize("name", ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"])
def test_an_empty_torchrun_variable_is_named(name: str) -> None:
    # Set-but-empty must not silently become a default (RANK='' -> rank 0, MASTER_PORT='' -> port 0).
    assert name in _config_error({**BASE_ENV, "RANK": "0", name: ""})


@pytest.mark.parametrize("value", ["2", "0", "17"])
def test_protocol_override_accepts_non_negative_integers(value: str) -> None:
    assert config.from_env({**BASE_ENV, "TP_PROTOCOL_VERSION_OVERRIDE": value}).protocol_version == int(value)


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "2x", "0x2"])
def test_protocol_override_rejects_the_rest_naming_the_variable(value: str) -> None:
    message = _config_error({**BASE_ENV, "TP_PROTOCOL_VERSION_OVERRIDE": value})
    assert message == f"invalid TP_PROTOCOL_VERSION_OVERRIDE {value!r}: expected an integer >= 0"


@pytest.mark.parametrize(("name", "value", "says"), [
    ("RANK", "one", "invalid RANK 'one'"),
    ("RANK", "-1", "invalid RANK '-1'"),
    ("RANK", "2", "RANK 2 must be in [0, WORLD_SIZE=2)"),
    ("WORLD_SIZE", "0", "invalid WORLD_SIZE '0': expected an integer >= 1"),
    ("MASTER_PORT", "0", "invalid MASTER_PORT '0'"),
    ("TP_PEER_TIMEOUT_S", "5x", "invalid TP_PEER_TIMEOUT_S '5x': expected seconds > 0"),
    ("TP_PEER_TIMEOUT_S", "0", "invalid TP_PEER_TIMEOUT_S '0'"),
    ("TP_PEER_TIMEOUT_S", "-2", "invalid TP_PEER_TIMEOUT_S '-2'"),
    ("TP_PEER_TIMEOUT_S", "nan", "invalid TP_PEER_TIMEOUT_S 'nan'"),
    ("TP_HEARTBEAT_S", "fast", "invalid TP_HEARTBEAT_S 'fast'"),
    ("TP_PROGRESS_TIMEOUT_S", "1m", "invalid TP_PROGRESS_TIMEOUT_S '1m'"),
    ("TP_HANDSHAKE_TIMEOUT_S", "0", "invalid TP_HANDSHAKE_TIMEOUT_S '0'"),
    ("TP_COLLECTIVE_TIMEOUT_S", "-1", "invalid TP_COLLECTIVE_TIMEOUT_S '-1'"),
    ("TP_KV_RECOMPUTE", "yes", "invalid TP_KV_RECOMPUTE 'yes': expected 0 or 1"),
    ("TP_KV_RECOMPUTE", "true", "invalid TP_KV_RECOMPUTE 'true'"),
    ("TP_SYNC_KV_STATS", "on", "invalid TP_SYNC_KV_STATS 'on'"),
    ("TP_DIGEST_EVERY", "0", "invalid TP_DIGEST_EVERY '0': expected an integer >= 1"),
    ("TP_DRIVER_RANK", "first", "invalid TP_DRIVER_RANK 'first'"),
    ("TP_GUARDRAILS", "all,-bogus", "unknown guardrail 'bogus' in TP_GUARDRAILS"),
])
def test_bad_values_name_their_variable(name: str, value: str, says: str) -> None:
    assert says in _config_error({**BASE_ENV, name: value})


def test_driver_rank_outside_the_world_is_a_config_error() -> None:
    # No rank would be the driver: every rank would wait on a broadcast from a rank that does not exist.
    assert "TP_DRIVER_RANK" in _config_error({**BASE_ENV, "TP_DRIVER_RANK": "2"})


@pytest.mark.parametrize(("cli", "says"), [
    ({"backend": "mpi"}, "invalid backend 'mpi' from --backend; choose gloo or nccl"),
    ({"chunks": 0}, "invalid --chunks 0: expected >= 1"),
])
def test_bad_cli_values_name_their_option(cli: dict, says: str) -> None:
    assert _config_error(BASE_ENV, **cli) == says


def _run_tp(env: dict, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_") and k not in BASE_ENV} | env
    return subprocess.run([sys.executable, "-m", "tp", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize(("name", "value", "says"), [
    ("TP_PROTOCOL_VERSION_OVERRIDE", "x", "tp: invalid TP_PROTOCOL_VERSION_OVERRIDE 'x': expected an integer >= 0"),
    ("TP_PROTOCOL_VERSION_OVERRIDE", "-1", "tp: invalid TP_PROTOCOL_VERSION_OVERRIDE '-1': expected an integer >= 0"),
    ("TP_FAILPOINTS", "envelope.aftr_header=raise", "tp: no such failpoint 'envelope.aftr_header' in TP_FAILPOINTS; known: "),
    ("TP_GUARDRAILS", "all,-prefligt", "tp: unknown guardrail 'prefligt' in TP_GUARDRAILS; known: "),
])
def test_a_rank_with_bad_configuration_exits_2_with_one_line(name: str, value: str, says: str) -> None:
    proc = _run_tp({**BASE_ENV, "RANK": "0", name: value}, "--chunks", "2")
    assert proc.returncode == 2
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith(says), line


def test_without_rank_or_world_size_the_launcher_explains(tmp_path) -> None:
    proc = _run_tp({})
    assert proc.returncode == 2 and "pass --world-size N" in proc.stderr


def test_every_site_written_in_tp_is_registered_and_every_registered_site_is_written() -> None:
    # A disarmed failpoint() returns after one boolean, so a misspelt site in tp/ would never be refused at run
    # time: the registry is checked against the source instead (gofail generates its registry from it).
    source = "\n".join(p.read_text() for p in Path(failpoints.__file__).parent.rglob("*.py"))
    written = set(re.findall(r"\bfailpoint\(\s*\"([a-z_.]+)\"", source))
    assert written == set(failpoints.REGISTRY), (sorted(written - set(failpoints.REGISTRY)),
                                                 sorted(set(failpoints.REGISTRY) - written))
