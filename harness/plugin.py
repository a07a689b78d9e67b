"""pytest plugin: markers, ``--breakit-*`` options, the ``breakit`` fixture.

Load it once, either way: the ``pytest11`` entry point named
``harness.plugin`` or ``pytest_plugins = ["harness.plugin"]`` in the root
conftest (pytest skips a plugin name it already registered).

One precedence for every setting: ``@pytest.mark.breakit(...)`` > command line
> ini > default (a scenario's own ``deadline_s`` sits between the marker and
the command line: it is part of what the scenario proves).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import options, report
from harness.outcome import Result
from harness.runner import RunConfig, run_scenario
from harness.scenario import Scenario

FM_MARKERS = tuple(f"fm{n:02d}" for n in range(1, 16))
MARKER_KEYS = ("deadline", "world_size", "launch")
WORKER_KEY = "breakit_run_dir"
_SETTINGS = pytest.StashKey[dict]()
_RUN_DIR = pytest.StashKey[Path]()
_SUMMARY = pytest.StashKey[report.Summary]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("breakit", "tp-breakit: break tensor-parallel ranks on purpose")
    for opt in options.OPTIONS.values():
        group.addoption(opt.pytest_flag, dest=opt.ini, default=None, metavar=opt.metavar, help=opt.help)
        parser.addini(opt.ini, help=opt.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "breakit(deadline=S, world_size=N, launch=MODE): a tp-breakit scenario test; "
        "keywords override --breakit-* options and ini",
    )
    for name in FM_MARKERS:
        config.addinivalue_line("markers", f"{name}: tp-breakit scenarios of failure mode FM-{name[2:]}")
    config.addinivalue_line("markers", "control: tp-breakit control scenarios that must stay CLEAN")

    settings = {}
    for opt in options.OPTIONS.values():
        settings[opt.name] = _resolve(config, opt)
    config.stash[_SETTINGS] = settings
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and WORKER_KEY in workerinput:
        config.stash[_RUN_DIR] = Path(workerinput[WORKER_KEY])
    else:
        root = settings["report_dir"]
        if not root.is_absolute():
            root = config.rootpath / root
        config.stash[_RUN_DIR] = root / report.run_dir_name()


def _resolve(config: pytest.Config, opt: options.Option):
    """CLI > ini > default, each validated with where it came from."""
    try:
        value = config.getoption(opt.ini)
        if value is not None:
            return opt.validate(value, opt.pytest_flag)
        value = config.getini(opt.ini)
        if value not in (None, ""):
            where = f"{opt.ini} in {config.inipath.name if config.inipath else 'ini'}"
            return opt.validate(value, where)
        return opt.validate(opt.default, "the default")
    except options.OptionError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker writes into the controller's run directory."""
    node.workerinput[WORKER_KEY] = str(node.config.stash[_RUN_DIR])


def _scenario_of(item: pytest.Item) -> Scenario | None:
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return next((p for p in params if isinstance(p, Scenario)), None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate ``breakit`` marker keywords; mark scenario tests ``breakit`` + ``fmNN``/``control``."""
    for item in items:
        scenario = _scenario_of(item)
        if scenario is not None:
            item.add_marker("breakit")
            fm_marker = scenario.fm.lower().replace("-", "")
            if fm_marker in FM_MARKERS or fm_marker == "control":
                item.add_marker(fm_marker)
        for marker in item.iter_markers("breakit"):
            for key, value in marker.kwargs.items():
                if key not in MARKER_KEYS:
                    raise pytest.UsageError(
                        f"unknown keyword {key!r} in @pytest.mark.breakit on {item.nodeid}; "
                        f"valid: {', '.join(MARKER_KEYS)}"
                    )
                where = f"@pytest.mark.breakit({key}=...) on {item.nodeid}"
                try:
                    options.OPTIONS[key].validate(value, where)
                except options.OptionError as exc:
                    raise pytest.UsageError(str(exc)) from None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the zygote while the first tests set up, if any test will launch ranks."""
    config = session.config
    if config.option.collectonly or config.stash[_SETTINGS]["launch"] != "zygote":
        return
    if any("breakit" in getattr(item, "fixturenames", ()) for item in session.items):
        from harness import zygote

        zygote.shared()


class Breakit:
    """The ``breakit`` fixture: ``breakit.check(scenario)`` runs and judges one scenario."""

    def __init__(self, request: pytest.FixtureRequest, record_property) -> None:
        self._request = request
        self._record = record_property

    def settings(self) -> dict:
        """Effective settings for this test: marker > CLI > ini > default."""
        settings = dict(self._request.config.stash[_SETTINGS])
        marker = self._request.node.get_closest_marker("breakit")
        for key, value in (marker.kwargs if marker else {}).items():
            settings[key] = options.OPTIONS[key].validate(value, f"@pytest.mark.breakit({key}=...)")
        settings["marker_deadline"] = marker.kwargs.get("deadline") if marker else None
        return settings

    def check(self, scenario: Scenario) -> Result:
        """Run ``scenario``; fail the test with the reason and log tails on a mismatch."""
        s = self.settings()
        reason = scenario.skip_reason(s["world_size"])
        if reason:
            pytest.skip(reason)
        config = RunConfig(
            run_dir=self._request.config.stash[_RUN_DIR], world_size=s["world_size"], backend=s["backend"],
            deadline_s=s["deadline"], stall_s=s["stall"], launch=s["launch"], tp_command=s["tp_command"],
            cwd=self._request.config.rootpath,
        )
        marker_deadline = s["marker_deadline"]
        result = run_scenario(scenario, config, deadline_s=float(marker_deadline) if marker_deadline else None)
        for key, value in (("scenario", result.id), ("fm", result.fm), ("outcome", result.observed),
                           ("time_to_crash_s", result.time_to_crash_s), ("verdict", result.verdict)):
            self._record(key, "" if value is None else value)
        if not result.passed:
            pytest.fail(result.failure_text(), pytrace=False)
        return result


@pytest.fixture
def breakit(request: pytest.FixtureRequest, record_property) -> Breakit:
    """Runs tp-breakit scenarios: ``breakit.check(scenario)``."""
    return Breakit(request, record_property)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Controller only: aggregate results into summary.json/md and move ``latest``."""
    config = session.config
    run_dir = config.stash.get(_RUN_DIR, None)
    if hasattr(config, "workerinput") or run_dir is None or not any(run_dir.glob("*/result.json")):
        return
    summary = report.write_summary(run_dir)
    report.update_latest(run_dir)
    config.stash[_SUMMARY] = summary



def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    summary = config.stash.get(_SUMMARY, None)
    if summary is None:
        return
    tr = terminalreporter
    tr.write_sep("=", "tp-breakit")
    doc = json.loads(summary.json_path.read_text())
    for row in doc["scenarios"]:
        ttc = report.ttc_text(row)
        tr.write_line(f"{row['id']:<22} ws{row['world_size']}  expected {row['expected']:<14} "
                      f"observed {row['observed']:<13} ttc {ttc:>9}  {row['verdict']}")
    rel = summary.md_path
    try:
        rel = summary.md_path.relative_to(Path.cwd())
    except ValueError:
        pass
    tr.write_line(f"breakit {doc['overall']}: {summary.total} scenarios, {summary.failed} failed; report: {rel} (+ report.html)")
