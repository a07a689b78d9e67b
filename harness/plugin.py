"""pytest plugin: markers, ``--breakit-*`` options; it exports the ``breakit`` fixture (fixtures/breakit.py).

Its name is ``breakit`` (``-p no:breakit`` keeps it out): the ``pytest11`` entry
point of an installed tp-breakit, or the root conftest of a checkout. Loaded by its
module name (``-p harness.plugin``) it blocks the other name: never a second copy.

One precedence for every setting: ``@pytest.mark.breakit(...)`` > command line
> ini > default (a scenario's own ``deadline_s`` sits between the marker and
the command line: it is part of what the scenario proves).
"""

from __future__ import annotations

import importlib
import json
import secrets
import sys
import tempfile
from pathlib import Path

import pytest
from _pytest import junitxml

from harness import delta, options, probe, rank_command, report, stash, zygote
from harness.engine import pytest_door as engine_door
from harness.scenario import Scenario

FM_MARKERS = tuple(f"fm{n:02d}" for n in range(1, 17))
MARKER_KEYS = ("deadline", "world_size", "launch")
WORKER_KEY = "breakit_run_dir"
ZYGOTE_KEY = "breakit_zygote_share"
TALLY_PLUGIN = "breakit-tally"
FIXTURES_PLUGIN = "breakit-fixtures"
_SUMMARY = pytest.StashKey[report.Summary]()
_REFUSED = pytest.StashKey[str]()
_LOST = pytest.StashKey[list]()
PLUGIN_NAME = "breakit"
"""The entry point's name: ``-p no:breakit`` disables the plugin."""


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    """One module, two names (the entry point's ``breakit``, ``-p harness.plugin``): block the other one."""
    other = __name__ if pluginmanager.get_name(sys.modules[__name__]) == PLUGIN_NAME else PLUGIN_NAME
    pluginmanager.set_blocked(other)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("breakit", "tp-breakit: break tensor-parallel ranks on purpose")
    for opt in options.OPTIONS.values():
        group.addoption(opt.pytest_flag, dest=opt.ini, default=None, metavar=opt.metavar, help=opt.help)
        parser.addini(opt.ini, help=opt.help, default=None)
    engine_door.addoption(group, parser)
    group.addoption("--breakit-baseline", dest="breakit_baseline", default=None, metavar="DIR",
                    help="run directory to compare this run with (default: the last green run of the same "
                         "configuration in the report dir); the delta heads every report")


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
    config.stash[stash.SETTINGS] = settings
    rank_command.header(config, settings)
    engine = engine_door.configure(config, settings)  # an engine is never asked --check-*/--list-*
    if not config.option.collectonly and not engine:  # xdist workers too: each starts ranks as the controller does
        rank_command.fit_launch(config, settings)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and WORKER_KEY in workerinput:
        config.stash[stash.RUN_DIR] = Path(workerinput[WORKER_KEY])
        share = workerinput.get(ZYGOTE_KEY) or Path(tempfile.gettempdir()) / f"breakit-zygote-{workerinput['testrunuid']}"
        zygote.share_through(Path(share))
    else:
        root = settings["report_dir"]
        if not root.is_absolute():
            root = rank_command.base_dir(config) / root
        config.stash[stash.RUN_DIR] = root / report.run_dir_name()
        if not config.option.collectonly:
            _check_writable(root)
            _check_baseline(config)
        if getattr(config.option, "numprocesses", None):  # an xdist controller: its workers share one zygote
            zygote.share_through(Path(tempfile.gettempdir()) / f"breakit-zygote-{secrets.token_hex(8)}")
            if settings["launch"] == "zygote" and not config.option.collectonly:
                zygote.shared()  # now: its import of torch overlaps the workers' start-up instead of following it
    config.pluginmanager.register(_Tally(), TALLY_PLUGIN)
    # The fixtures users' scenarios request live in fixtures/, shared with this project's own tests.
    config.pluginmanager.register(importlib.import_module("fixtures.breakit"), FIXTURES_PLUGIN)


def _check_baseline(config: pytest.Config) -> None:
    """``--breakit-baseline`` must name a run (or a report root with a 'latest'), before any rank starts."""
    given = config.getoption("breakit_baseline", None)
    if given:
        try:
            config.option.breakit_baseline = str(report.find_run_dir(Path(given)))
        except FileNotFoundError as exc:
            raise pytest.UsageError(f"--breakit-baseline: {exc}") from None


def _check_writable(root: Path) -> None:
    """The report dir can be written: one line, before any rank or the zygote."""
    try:
        report.check_writable(root)
    except OSError as exc:
        raise pytest.UsageError(f"report dir {str(root)!r} (--breakit-report-dir) is not writable: "
                                f"{exc.strerror or exc}; pick a directory you can write") from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash.get(rank_command.HEADER, [])


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
    node.workerinput[WORKER_KEY] = str(node.config.stash[stash.RUN_DIR])
    if zygote.share_dir() is not None:  # not with --tx alone (no -n): the workers then name one by testrunuid
        node.workerinput[ZYGOTE_KEY] = str(zygote.share_dir())


def _scenario_of(item: pytest.Item) -> Scenario | None:
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return next((p for p in params if isinstance(p, Scenario)), None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate ``breakit`` marker keywords; mark scenario tests ``breakit`` + ``fmNN``/``control``
    (registered here for any failure mode, so ``-m fm03`` selects and ``--strict-markers`` holds)."""
    registered = set(FM_MARKERS)
    for item in items:
        scenario = _scenario_of(item)
        if scenario is not None:
            item.add_marker("breakit")
            fm_marker = scenario.fm.lower().replace("-", "")
            if fm_marker not in (*registered, "control", "adhoc"):  # a new failure mode needs no ini entry
                config.addinivalue_line("markers", f"{fm_marker}: tp-breakit scenarios of failure mode {scenario.fm}")
                registered.add(fm_marker)
            if fm_marker != "adhoc":
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


def _planned(session: pytest.Session) -> list[tuple[Scenario, int]]:
    """``(scenario, world size)`` of every selected scenario test that will run (not skip)."""
    settings = session.config.stash[stash.SETTINGS]
    out = []
    for item in session.items:
        scenario = _scenario_of(item)
        if scenario is None or "breakit" not in getattr(item, "fixturenames", ()):
            continue
        marker = item.get_closest_marker("breakit")
        ws = settings["world_size"]
        if marker and "world_size" in marker.kwargs:
            ws = options.OPTIONS["world_size"].validate(marker.kwargs["world_size"], "marker")
        if not scenario.skip_reason(ws):
            out.append((scenario, scenario.world_size or ws))
    return out


def _refuse(session: pytest.Session, why: str) -> None:
    """A usage error before any rank starts; on an xdist worker (one would crash the controller) a setup error."""
    if not hasattr(session.config, "workerinput"):
        raise pytest.UsageError(why)
    session.config.stash[_REFUSED] = why


def _ask_tp(session: pytest.Session, planned: list[tuple[Scenario, int]]) -> probe.Pending | None:
    """Check every planned scenario's ranks, then ask the rank command about the rest (in the background)."""
    settings = session.config.stash[stash.SETTINGS]
    try:
        return probe.ask(settings["tp_command"], planned, backend=settings["backend"], launch=settings["launch"],
                         cwd=rank_command.base_dir(session.config))
    except probe.Refused as exc:
        _refuse(session, str(exc))
        return None


def _tp_verdict(session: pytest.Session, pending: probe.Pending) -> bool:
    """True when the TP path accepts every input; a refusal is a usage error before any rank starts."""
    try:
        answer = pending.answer()
    except probe.Refused as exc:
        _refuse(session, str(exc))
        return False
    if not answer.answered:
        session.config.issue_config_time_warning(pytest.PytestWarning(
            f"tp-breakit: fault specs, guardrails, world sizes, backend and env were checked for syntax only: "
            f"{answer.note}"), stacklevel=2)
    return True


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check inputs with the TP path, note how many scenarios will run, start the zygote early."""
    config = session.config
    if engine_door.engaged(config):
        if not config.option.collectonly:
            engine_door.preflight(session, _planned(session), _refuse)
        return
    rank_command.warn_builtin_tp(config, [i.path for i in session.items if _scenario_of(i) is not None])
    if config.option.collectonly:
        return
    planned = _planned(session)
    pending = _ask_tp(session, planned) if planned else None
    launches = any("breakit" in getattr(item, "fixturenames", ()) for item in session.items)
    if pending is not None and launches and config.stash[stash.SETTINGS]["launch"] == "zygote":
        zygote.shared()  # the zygote forks the TP path's answer, then the ranks
    if pending is not None:
        probe.overlap_store_import(config.stash[stash.SETTINGS]["launch"])
    if pending is not None and _tp_verdict(session, pending):
        report.write_planned(config.stash[stash.RUN_DIR], len(planned))


def pytest_runtest_setup(item: pytest.Item) -> None:
    refused = item.config.stash.get(_REFUSED, None)
    if refused is not None and _scenario_of(item) is not None:
        pytest.fail(f"refused before any rank started: {refused}", pytrace=False)


class _Tally:
    """What this process saw of scenario tests: how many finished, which failed (needs no disk).

    Registered as a plugin: on an xdist controller it sees every worker's reports.
    """

    def __init__(self) -> None:
        self.finished = 0
        self.failures: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "breakit" not in report.keywords:
            return
        if report.failed:
            # xdist puts "[gw0] linux -- Python ..." first: the reason is the first other line.
            lines = [ln for ln in (report.longreprtext or "").splitlines() if ln.strip() and not ln.startswith("[gw")]
            self.failures.append(f"{report.nodeid} ({report.when}): {(lines or [''])[0][:300]}")
        if report.when == "teardown":
            self.finished += 1


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Controller only: aggregate results into summary.json/md; only a complete run moves ``latest``.

    Runs before junitxml writes its file, so the overall verdict lands there as a property.
    """
    config = session.config
    run_dir = config.stash.get(stash.RUN_DIR, None)
    if hasattr(config, "workerinput") or run_dir is None:
        return
    planned = report.read_planned(run_dir)
    if not planned and not any(run_dir.glob("*/result.json")):
        return
    interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
    try:
        baseline = config.getoption("breakit_baseline", None)
        summary = report.write_summary(run_dir, planned=planned, interrupted=interrupted,
                                       baseline=Path(baseline) if baseline else None, selection=_selection(config))
        if summary.overall != "INCOMPLETE":
            report.update_latest(run_dir)
    except OSError as exc:
        _report_lost(session, run_dir, exc)
        return
    config.stash[_SUMMARY] = summary
    xml = config.stash.get(junitxml.xml_key, None)
    if xml is not None:
        xml.add_global_property("breakit_overall", summary.headline)
        d = json.loads(summary.json_path.read_text()).get("delta")
        if d:
            xml.add_global_property("breakit_baseline_delta", "; ".join(x.strip() for x in delta.lines(d)))
    if summary.overall == "INCOMPLETE" and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _selection(config: pytest.Config) -> str:
    """What the run was asked for (paths, ``-m``, ``-k``): runs compare only with runs of the same selection."""
    opt = config.option
    words = [*config.args, *(["-m", opt.markexpr] if opt.markexpr else []), *(["-k", opt.keyword] if opt.keyword else [])]
    device = config.stash[stash.SETTINGS].get("device", "auto")
    words += [f"--breakit-device {device}"] if device != "auto" else []  # a CUDA run never compares with a CPU one
    return " ".join(words)


def _report_lost(session: pytest.Session, run_dir: Path, exc: OSError) -> None:
    """The report could not be written (disk full...): keep the failures on the terminal, fail the session."""
    tally = session.config.pluginmanager.get_plugin(TALLY_PLUGIN) or _Tally()
    lines = [f"tp-breakit: could not write the report in {run_dir}: {type(exc).__name__}: {exc}",
             f"tp-breakit: {tally.finished} scenario tests finished, {len(tally.failures)} failed:"]
    lines += [f"  FAILED {f}" for f in tally.failures] or ["  (none)"]
    if session.config.pluginmanager.get_plugin("terminalreporter") is not None:
        session.config.stash[_LOST] = lines  # shown by pytest_terminal_summary, after the progress line
    else:
        print("\n".join(lines), file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    tr = terminalreporter
    lost = config.stash.get(_LOST, None)
    if lost:
        tr.write_sep("=", "tp-breakit: report not written", red=True)
        for line in lost:
            tr.write_line(line, red=True)
    summary = config.stash.get(_SUMMARY, None)
    if summary is None:
        return
    verbosity = config.get_verbosity()
    if verbosity >= 0:
        tr.write_sep("=", "tp-breakit")
    doc = json.loads(summary.json_path.read_text())
    for line, red in report.terminal_lines(doc, verbosity):
        tr.write_line(line, red=red)
    rel = summary.md_path
    try:
        rel = summary.md_path.relative_to(Path.cwd())
    except ValueError:
        pass
    if summary.overall == "INCOMPLETE":
        tr.write_line(f"breakit {summary.headline}; report: {rel} (+ report.html); 'latest' not moved")
        return
    tr.write_line(f"breakit {doc['overall']}: {summary.total} scenarios, {summary.failed} failed; report: {rel} (+ report.html)")
