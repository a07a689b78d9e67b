"""The pytest plugin never reports a false green: refusals, partial sessions, a report it cannot write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import interrupting
import pytest
from interrupting import interrupt_when_parked

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"
FAKE = ["--breakit-tp-command", "python -m fake_tp", "-p", "no:cacheprovider"]

SCENARIOS = textwrap.dedent("""
    import pytest
    from harness import Expect, Fault, Scenario

    SCENARIOS = [
        Scenario(id="CTL-a", fm="control", title="healthy", proves="control", expect=Expect.clean(),
                 env={{"FAKE_CHUNK_S": "{chunk_s}"}}),
        Scenario(id="CTL-b", fm="control", title="wrong on purpose", proves="control", expect=Expect.clean(),
                 faults=(Fault(site="fake.chunk", action="raise", rank=0, chunk=1),)),
        Scenario(id="CTL-c", fm="control", title="healthy", proves="control", expect=Expect.clean(),
                 env={{"FAKE_CHUNK_S": "{chunk_s}"}}),
    ]

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
    def test_ctl(breakit, scenario):
        breakit.check(scenario)
""")


@pytest.fixture
def tester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(RANKS)]))
    pytester.makeconftest('pytest_plugins = ["harness.plugin"]')
    return pytester


def _junit_properties(path: Path) -> dict:
    root = ET.parse(path).getroot()
    return {p.get("name"): p.get("value") for suite in root.iter("testsuite")
            for props in suite.findall("properties") for p in props.iter("property")}


PARKS_SECOND = textwrap.dedent("""
    import pytest
    from harness import Expect, Fault, Scenario

    SCENARIOS = [
        Scenario(id="CTL-a", fm="control", title="healthy", proves="control", expect=Expect.clean()),
        # Parks rank 1 until the session is interrupted: the test waits on that, not on a race with the run.
        Scenario(id="CTL-b", fm="control", title="parked", proves="control", expect=Expect.clean(),
                 deadline_s=300, run_timeout_s=300, faults=(Fault(site="fake.chunk", action="hang", rank=1, chunk=1),)),
        Scenario(id="CTL-c", fm="control", title="healthy", proves="control", expect=Expect.clean()),
    ]

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
    def test_ctl(breakit, scenario):
        breakit.check(scenario)
""")


def test_interrupted_session_is_incomplete_everywhere(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_ctl=PARKS_SECOND)
    out_dir = tester.path / "out"
    proc = interrupting.start(
        [sys.executable, "-m", "pytest", *FAKE, "--breakit-report-dir=out", "--junitxml=junit.xml", "-p",
         "no:randomly"], cwd=tester.path, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = interrupt_when_parked(proc, out_dir, "*/CTL-b-ws2/rank1.log")
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "breakit INCOMPLETE (1 of 3 ran" in out and "'latest' not moved" in out, out
    assert not (out_dir / "latest").exists()
    (run_dir,) = [p for p in out_dir.iterdir() if p.is_dir()]
    doc = json.loads((run_dir / "summary.json").read_text())
    assert (doc["overall"], doc["total"], doc["planned"]) == ("INCOMPLETE", 1, 3)
    assert "Overall: **INCOMPLETE** (1 of 3 ran" in (run_dir / "summary.md").read_text()
    assert _junit_properties(tester.path / "junit.xml")["breakit_overall"].startswith("INCOMPLETE (1 of 3 ran")
    report = subprocess.run([sys.executable, "-m", "harness", "report", str(run_dir)], cwd=tester.path,
                            capture_output=True, text=True, check=False)
    assert report.returncode == 1 and "is INCOMPLETE, not PASS" in report.stderr


def test_stopping_early_is_incomplete_and_junit_says_so(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_ctl=SCENARIOS.format(chunk_s="0"))
    result = tester.runpytest_subprocess(*FAKE, "-x", "-p", "no:randomly", "--breakit-report-dir=out",
                                         "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["breakit INCOMPLETE (2 of 3 ran, 1 failed); report: *'latest' not moved"])
    assert not (tester.path / "out" / "latest").exists()
    assert _junit_properties(tester.path / "junit.xml")["breakit_overall"] == "INCOMPLETE (2 of 3 ran, 1 failed)"


def test_a_report_that_cannot_be_written_keeps_the_failures(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_ctl=SCENARIOS.format(chunk_s="0"))
    tester.makeconftest(textwrap.dedent("""
        import errno
        from harness.report import files as report
        pytest_plugins = ["harness.plugin"]

        def no_space(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        report.write_summary = no_space
    """))
    result = tester.runpytest_subprocess(*FAKE, "-n", "2", "--breakit-report-dir=out")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "tp-breakit: could not write the report in */out/*: OSError: *No space left on device",
        "tp-breakit: 3 scenario tests finished, 1 failed:",
        "  FAILED test_ctl.py::test_ctl[[]CTL-b[]] (call): CTL-b: expected CLEAN, observed CRASHED*",
    ])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_inputs_only_the_tp_path_knows_are_refused_at_collection(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_bad="""
        import pytest
        from harness import Expect, Fault, Scenario
        BAD = Scenario(id="FM-03", fm="FM-03", title="typo", proves="lockstep", guardrails="all,-preflite",
                       faults=(Fault(site="generator.call", action="raise", rank=0, chunk=1),), expect=Expect.crash())

        def test_bad(breakit):
            breakit.check(BAD)

        @pytest.mark.parametrize("scenario", [BAD], ids=str)
        def test_bad_param(breakit, scenario):
            breakit.check(scenario)
    """)
    result = tester.runpytest_subprocess("-p", "no:cacheprovider", "--breakit-report-dir=out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: the TP path refuses TP_GUARDRAILS 'all,-preflite': unknown guardrail "
                                 "'preflite' in TP_GUARDRAILS; known: preflight, *"])
    assert not (tester.path / "out").exists() or not any((tester.path / "out").glob("*/*/result.json"))


@pytest.mark.parametrize("option", ["--breakit-report-dir=a-file", "--breakit-startup-deadline=0"])
def test_bad_settings_are_usage_errors(tester: pytest.Pytester, option: str) -> None:
    (tester.path / "a-file").write_text("")
    tester.makepyfile(test_a="def test_a():\n    pass\n")
    result = tester.runpytest_subprocess("-p", "no:cacheprovider", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    message = ("report dir '*a-file' (--breakit-report-dir) is not writable: *" if "report" in option
               else "ERROR: invalid start-up deadline '0' from --breakit-startup-deadline*")
    result.stderr.fnmatch_lines([f"*{message}"])


REFUSED_AT_COLLECTION = textwrap.dedent("""
    import pytest
    from harness import Expect, Fault, Scenario

    SCENARIOS = [
        Scenario(id="FM-14/{id}", title="refused", proves="{proves}", expect=Expect.crash(),
                 faults=(Fault(site="fake.chunk", action="raise", rank={rank}, chunk=1),)),
    ]

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
    def test_refused(breakit, scenario):
        breakit.check(scenario)
""")


RANK_2_OF_2 = ({"id": "rank", "proves": "watchdog", "rank": 2},
               "scenario FM-14/rank: faults[[]0[]] 'fake.chunk=raise@rank=2,chunk=1' names rank 2, but it runs at "
               "world size 2*")
PROVES_TYPO = ({"id": "proves", "proves": "watchdgo", "rank": 0},
               "the TP path refuses proves='watchdgo' of scenario FM-14/proves (asked as TP_GUARDRAILS "
               "'none,+watchdgo'): unknown guardrail 'watchdgo' in TP_GUARDRAILS; known: preflight, *")


# Under xdist the refusal takes one path whatever refused (plugin._refuse): one cause shows it.
@pytest.mark.parametrize(("case", "workers"), [(RANK_2_OF_2, []), (PROVES_TYPO, []), (RANK_2_OF_2, ["-n", "2"])],
                         ids=["fault-rank", "proves-typo", "fault-rank-xdist"])
def test_what_no_rank_could_run_is_refused_before_any_starts(tester, case, workers) -> None:
    fields, message = case
    tester.makepyfile(test_bad=REFUSED_AT_COLLECTION.format(**fields))
    # subprocess launch: the answer comes from a plain `python -m fake_tp --check-*`, no zygote importing torch.
    result = tester.runpytest_subprocess(*FAKE, "--breakit-report-dir=out", "--breakit-launch=subprocess", *workers)
    if workers:
        # An xdist worker cannot end the session with a usage error (the controller would crash): the
        # scenario test fails at setup with the same one line.
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([f"*refused before any rank started: {message}"])
        assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    else:
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert not (tester.path / "out").exists() or not any((tester.path / "out").glob("*/*/result.json"))


def test_a_catalog_module_for_a_new_failure_mode_needs_no_marker_of_its_own(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_fm99_new="""
        import pytest
        from harness import Expect, Scenario

        SCENARIOS = [Scenario(id="FM-99", title="a new failure mode", proves="watchdog", expect=Expect.clean())]

        @pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
        def test_fm99(breakit, scenario):
            breakit.check(scenario)

        def test_other():
            pass
    """)
    # Collection is where a marker is refused or selects: no rank needs to start to show it.
    result = tester.runpytest_subprocess(*FAKE, "--strict-markers", "-m", "fm99", "--collect-only", "-q")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["test_fm99_new.py::test_fm99[[]FM-99[]]", "1/2 tests collected (1 deselected)*"])
