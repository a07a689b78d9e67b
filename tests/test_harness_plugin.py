"""The pytest plugin, black-box: run pytest on small test files and read its output."""

from __future__ import annotations

import json
import os
import re
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"
FAKE = ["--breakit-tp-command", "python -m fake_tp"]

SETTINGS_TESTS = textwrap.dedent("""
    import pytest

    @pytest.mark.breakit(deadline=3, world_size=3, launch="subprocess")
    def test_marker_wins(breakit):
        s = breakit.settings()
        assert (s["deadline"], s["world_size"], s["launch"]) == (3.0, 3, "subprocess")

    def test_unmarked(breakit):
        s = breakit.settings()
        print("SETTINGS", s["deadline"], s["world_size"], s["launch"], s["backend"])
""")

SCENARIO_TESTS = textwrap.dedent("""
    import pytest
    from harness import Expect, Fault, Scenario

    RAISE = (Fault(site="fake.chunk", action="raise", rank=0, chunk=1),)
    SCENARIOS = [
        Scenario(id="FM-03", fm="FM-03", title="worker skips a call", proves="lockstep", faults=RAISE,
                 expect=Expect.crash({0: "code=FAKE_ERROR", "others": "PEER_ABORT"})),
        Scenario(id="FM-03/off", fm="FM-03", title="wrong on purpose", proves="lockstep",
                 guardrails="all,-lockstep", faults=RAISE, expect=Expect.clean()),
        Scenario(id="FM-03/big", fm="FM-03", title="needs 4", proves="lockstep", min_world_size=4,
                 expect=Expect.clean()),
    ]

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
    def test_fm03(breakit, scenario):
        breakit.check(scenario)

    def test_unrelated():
        pass
""")


@pytest.fixture
def tester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(RANKS)]))
    pytester.makeconftest('pytest_plugins = ["harness.plugin"]')
    return pytester


def test_markers_are_registered_and_strict(tester: pytest.Pytester) -> None:
    result = tester.runpytest("--markers")
    result.stdout.fnmatch_lines([
        "@pytest.mark.breakit(deadline=S, world_size=N, launch=MODE): a tp-breakit scenario test*",
        "@pytest.mark.fm01: tp-breakit scenarios of failure mode FM-01",
        "@pytest.mark.fm15: tp-breakit scenarios of failure mode FM-15",
        "@pytest.mark.control: tp-breakit control scenarios that must stay CLEAN",
    ])
    tester.makepyfile(test_ok="""
        import pytest
        @pytest.mark.fm03
        @pytest.mark.control
        @pytest.mark.breakit(deadline=2)
        def test_a():
            pass
    """)
    tester.runpytest("--strict-markers", "test_ok.py").assert_outcomes(passed=1)
    tester.makepyfile(test_bad="""
        import pytest
        @pytest.mark.fm99
        def test_a():
            pass
    """)
    result = tester.runpytest("--strict-markers", "test_bad.py")
    result.stdout.fnmatch_lines(["*'fm99' not found in `markers` configuration option*"])


def test_help_text_is_shared_by_option_and_ini(tester: pytest.Pytester) -> None:
    result = tester.runpytest("--help")
    result.stdout.fnmatch_lines([
        "tp-breakit: break tensor-parallel ranks on purpose:",
        "  --breakit-deadline=SECONDS",
        "*seconds from the fault firing*",
        "  breakit_deadline (string):",
        "*seconds from the fault firing*",
    ])


@pytest.mark.parametrize(
    ("ini", "args", "expected"),
    [
        ("", [], "SETTINGS 8.0 2 zygote gloo"),
        ("breakit_deadline = 5\nbreakit_world_size = 4\nbreakit_backend = nccl", [], "SETTINGS 5.0 4 zygote gloo"),
        ("breakit_deadline = 5\nbreakit_world_size = 4", ["--breakit-deadline=6", "--breakit-launch=subprocess"],
         "SETTINGS 6.0 4 subprocess gloo"),
    ],
    ids=["default", "ini", "cli-over-ini"],
)
def test_precedence_marker_cli_ini_default(tester: pytest.Pytester, ini: str, args: list[str], expected: str) -> None:
    if "nccl" in ini:
        expected = expected.replace("gloo", "nccl")
    tester.makeini("[pytest]\n" + ini)
    tester.makepyfile(test_settings=SETTINGS_TESTS)
    result = tester.runpytest("-s", *args)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"*{expected}"])


@pytest.mark.parametrize(
    ("ini", "args", "marker", "message"),
    [
        ("", ["--breakit-deadline=5x"], "",
         "ERROR: invalid deadline '5x' from --breakit-deadline: must be a number of seconds > 0"),
        ("breakit_world_size = 0", [], "",
         "ERROR: invalid world size '0' from breakit_world_size in tox.ini: must be an integer >= 1"),
        ("", ["--breakit-backend=mpi"], "", "ERROR: invalid backend 'mpi' from --breakit-backend: valid: gloo, nccl"),
        ("", ["--breakit-launch=docker"], "",
         "ERROR: invalid launch mode 'docker' from --breakit-launch: valid: zygote, subprocess, srun, torchrun, torchrun-2node"),
        ("", [], "deadline='5x'",
         "ERROR: invalid deadline '5x' from @pytest.mark.breakit(deadline=...) on test_m.py::test_a: *"),
        ("", [], "deadlin=5", ("ERROR: unknown keyword 'deadlin' in @pytest.mark.breakit on test_m.py::test_a; "
                               "valid: deadline, world_size, launch")),
    ],
    ids=["cli", "ini", "backend", "launch", "marker", "marker-keyword"],
)
def test_bad_values_are_usage_errors_naming_their_source(tester, ini, args, marker, message) -> None:
    tester.makefile(".ini", tox="[pytest]\n" + ini)
    tester.makepyfile(test_m=f"""
        import pytest
        @pytest.mark.breakit({marker})
        def test_a():
            pass
    """)
    result = tester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_scenarios_run_fail_skip_and_report(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_fm03=SCENARIO_TESTS)
    result = tester.runpytest("-m", "fm03", "-rs", "--strict-markers", "--junitxml=junit.xml",
                              "-o", "junit_family=xunit1", "--breakit-report-dir=out", *FAKE)
    result.assert_outcomes(passed=1, failed=1, skipped=1, deselected=1)
    result.stdout.fnmatch_lines([
        ("*FM-03/off: expected CLEAN, observed CRASHED in * s after TP-FAULT (fake.chunk on rank 0): "
         "rank 0 exit 40 (FAKE_ERROR, root cause), rank 1 exit 51 (PEER_ABORT cause_rank=0, collateral)*"),
        "--- rank 0 (exit 40), last lines of */out/*/FM-03_off-ws2/rank0.log ---",
        "TP-FAULT site=fake.chunk action=raise rank=0 chunk=1*",
    ])
    result.stdout.fnmatch_lines(["SKIPPED * FM-03/big needs world size >= 4; configured 2"])
    result.stdout.fnmatch_lines([
        "*= tp-breakit =*",
        "FM-03 * ws2  expected CRASHED * observed CRASHED * PASS",
        "FM-03/off * ws2  expected CLEAN * observed CRASHED * FAIL",
        "breakit FAIL: 2 scenarios, 1 failed; report: *summary.md (+ report.html)",
    ])
    props = {}
    for case in ET.parse(tester.path / "junit.xml").getroot().iter("testcase"):
        props[case.get("name")] = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["test_fm03[FM-03]"]["fm"] == "FM-03"
    assert props["test_fm03[FM-03]"]["outcome"] == "CRASHED"
    assert props["test_fm03[FM-03]"]["verdict"] == "PASS"
    assert float(props["test_fm03[FM-03]"]["time_to_crash_s"]) < 8
    assert props["test_fm03[FM-03/off]"]["verdict"] == "FAIL"
    summary = json.loads((tester.path / "out" / "latest" / "summary.json").read_text())
    assert [row["id"] for row in summary["scenarios"]] == ["FM-03", "FM-03/off"]
    assert summary["guardrails"]["lockstep"] == {"guarded": ["FM-03 (ws2, PASS)"], "off": ["FM-03/off (ws2, FAIL)"]}


def test_junit_of_the_default_family_is_valid_and_quiet(tester: pytest.Pytester) -> None:
    """xunit2 has no per-test properties: none are written, nothing warns, the verdict is a suite property."""
    tester.makepyfile(test_fm03=SCENARIO_TESTS)
    result = tester.runpytest_subprocess("-k", "FM-03 and not off", "--junitxml=junit.xml",
                                         "--breakit-report-dir=out", *FAKE)
    result.assert_outcomes(passed=1, skipped=1, deselected=2)
    root = ET.parse(tester.path / "junit.xml").getroot()
    assert [case.find("properties") for case in root.iter("testcase")] == [None, None]
    suite = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert suite["breakit_overall"].startswith("PASS") and all(k.startswith("breakit_") for k in suite), suite
    assert "record_property" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize(("flag", "rows"), [("-q", ["FM-03/off"]), ("-qq", [])])
def test_quiet_flags_trim_the_breakit_summary(tester: pytest.Pytester, flag: str, rows: list[str]) -> None:
    tester.makepyfile(test_fm03=SCENARIO_TESTS)
    result = tester.runpytest_subprocess(flag, "-m", "fm03", "--breakit-report-dir=out", *FAKE)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert re.findall(r"^(FM-03\S*) +ws2 +expected", out, re.M) == rows, out
    assert "= tp-breakit =" not in out
    result.stdout.fnmatch_lines(["breakit FAIL: 2 scenarios, 1 failed; report: *"])


def test_xdist_workers_share_the_controllers_run_dir_and_zygote(tester: pytest.Pytester) -> None:
    lineage = tester.path / "lineage"
    lineage.mkdir()
    tester.makepyfile(test_clean=f"""
        import pytest
        from harness import Expect, Scenario
        SCENARIOS = [Scenario(id=f"control/{{n}}", fm="control", title="healthy", proves="control",
                              env={{"FAKE_LINEAGE_DIR": {str(lineage)!r}}}, expect=Expect.clean()) for n in "ab"]

        @pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
        def test_clean(breakit, scenario):
            breakit.check(scenario)
    """)
    result = tester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "--breakit-report-dir=out", *FAKE)
    result.assert_outcomes(passed=2)
    run_dirs = [p for p in (tester.path / "out").iterdir() if p.name != "latest"]
    assert len(run_dirs) == 1, run_dirs
    assert sorted(p.parent.name for p in run_dirs[0].glob("*/result.json")) == ["control_a-ws2", "control_b-ws2"]
    assert len(json.loads((run_dirs[0] / "baseline.json").read_text())) == 1
    assert "breakit PASS: 2 scenarios, 0 failed" in result.stdout.str()
    # Every rank of both workers was forked by one zygote, which the controller (our child) started before
    # the workers needed it, so its import of torch ran alongside their start-up.
    ancestry = {tuple(p.read_text().split()) for p in lineage.glob("*.lineage")}
    assert len(ancestry) == 1 and int(next(iter(ancestry))[2]) == os.getpid(), ancestry


def test_loading_by_entry_point_and_conftest_registers_once(tester: pytest.Pytester, monkeypatch) -> None:
    dist = tester.path / "site" / "tp_breakit-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tp-breakit\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\nbreakit = harness.plugin\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tester.path / "site"), str(REPO), str(RANKS)]))
    for conftest in ('pytest_plugins = ["harness.plugin"]', ""):
        tester.makeconftest(conftest)
        result = tester.runpytest_subprocess("--markers", "-p", "no:cacheprovider")
        assert result.ret == 0, result.stderr.str()
        assert result.stdout.str().count("@pytest.mark.fm01:") == 1


def test_last_failed_reruns_only_the_failed_scenario(tester: pytest.Pytester) -> None:
    """The cache provider is on (pytest.ini no longer disables it): --lf reruns what failed."""
    tester.makepyfile(test_fm03=SCENARIO_TESTS)
    first = tester.runpytest_subprocess("-m", "fm03", "--breakit-report-dir=out", *FAKE)
    first.assert_outcomes(passed=1, failed=1, skipped=1, deselected=1)
    again = tester.runpytest_subprocess("-m", "fm03", "--lf", "--breakit-report-dir=out", *FAKE)
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["run-last-failure: rerun previous 1 failure*"])


def test_own_scenarios_without_a_rank_command_warn_that_the_builtin_tp_runs(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_fm03=SCENARIO_TESTS)
    result = tester.runpytest_subprocess("--co", "-q")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["*test_fm03.py run against the built-in TP path *-m tp': no rank command was given*"])
    quiet = tester.runpytest_subprocess("--co", "-q", *FAKE)
    assert "built-in TP path" not in quiet.stdout.str()


def test_a_script_rank_command_runs_as_subprocesses_on_xdist_workers_too(tester: pytest.Pytester) -> None:
    """Not 'python -m MODULE': the default zygote gives way to subprocess in the controller and every worker."""
    tester.makepyfile(test_fm03=SCENARIO_TESTS)
    result = tester.runpytest_subprocess("-n", "2", "-k", "FM-03 and not off and not big", "--breakit-report-dir=out",
                                         "--breakit-tp-command", f"python {RANKS / 'fake_tp.py'}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["tp-breakit: launch mode subprocess: the default, zygote, forks only*"])
    (result_json,) = (tester.path / "out" / "latest").glob("*/result.json")
    assert json.loads(result_json.read_text())["launch"] == "subprocess"
