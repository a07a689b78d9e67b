"""``pytest --breakit-engine CMD``, black-box: a user's own scenario module, zero-touch, against their engine."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
ENGINE = f"{sys.executable} {REPO / 'fixtures' / 'engines' / 'dtensor_engine.py'}"

SCENARIOS = textwrap.dedent("""
    import pytest
    from harness import Expect, Fault, Scenario

    SCENARIOS = [
        Scenario(id="ENG-kill", fm="FM-90", title="rank 1 SIGKILLed in its 3rd all_reduce", proves="adhoc",
                 faults=(Fault(site="collective.all_reduce", action="kill(SIGKILL)", rank=1, call=3),),
                 expect=Expect.crash()),
        Scenario(id="ENG-hang", fm="FM-90", title="rank 1 stuck in its 3rd all_reduce", proves="adhoc",
                 faults=(Fault(site="collective.all_reduce", action="hang", rank=1, call=3),),
                 expect=Expect.hang()),
    ]

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
    def test_engine(breakit, scenario):
        result = breakit.check(scenario)
        print("OBSERVED", result.id, result.observed, result.backend)
""")


@pytest.fixture
def tester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest('pytest_plugins = ["harness.plugin"]')
    return pytester


@pytest.mark.timeout(400)
def test_a_users_scenarios_run_zero_touch_against_their_engine(tester: pytest.Pytester) -> None:
    """One kill, one hang, at the engine's third all_reduce on rank 1: judged from the bootstrap's evidence.

    The contract TP path's preflight would ask the engine ``--check-failpoints`` (it knows no such flag: the
    run would be refused) and ``python -m tp`` is never started."""
    tester.makepyfile(test_my_engine=SCENARIOS)
    result = tester.runpytest_subprocess("--breakit-engine", ENGINE, "--breakit-deadline", "120", "-s",
                                         "-p", "no:cacheprovider", timeout=380)
    result.stdout.fnmatch_lines(["tp-breakit: engine *dtensor_engine.py* (zero-touch), world size 2, launch mode "
                                 "subprocess"])
    result.stdout.fnmatch_lines(["*OBSERVED ENG-kill CRASHED engine*", "*OBSERVED ENG-hang HUNG engine*"],
                                consecutive=False)
    result.assert_outcomes(passed=2)


def test_a_fault_the_engine_has_no_site_for_is_refused_before_any_rank_starts(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_bad=SCENARIOS.replace('site="collective.all_reduce", action="hang"',
                                                 'site="envelope.after_header", action="hang"'))
    marker = tester.path / "engine_ran"
    result = tester.runpytest_subprocess("--breakit-engine", f"python -c 'open({str(marker)!r}, \"w\")'")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(["*no such collective site 'envelope.after_header' in scenario ENG-hang*"])
    assert not marker.exists()


def test_the_engine_comes_from_ini_too_and_a_zygote_is_refused(tester: pytest.Pytester) -> None:
    tester.makeini(f"[pytest]\nbreakit_engine = {ENGINE}\nbreakit_launch = zygote\n")
    tester.makepyfile(test_my_engine=SCENARIOS)
    result = tester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*launch mode 'zygote' cannot start an engine command afresh*"])


def test_a_bad_output_regex_is_refused_naming_where_it_came_from(tester: pytest.Pytester) -> None:
    tester.makepyfile(test_my_engine=SCENARIOS)
    result = tester.runpytest_subprocess("--breakit-engine", ENGINE, "--breakit-output-regex", "(x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid output regex '(x' from --breakit-output-regex: not a regular expression*"])
