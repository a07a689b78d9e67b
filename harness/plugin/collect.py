"""The plugin at collection: mark scenario tests, check every input with the TP path before any rank starts.

Registered by ``harness.plugin`` as the ``breakit-collect`` plugin; the checks themselves are the pipeline's
(``Session.ask`` / ``Session.answer``), shared with the command line.
"""

from __future__ import annotations

import pytest

from harness.declare.scenario import Scenario
from harness.launch import zygote
from harness.pipeline import options
from harness.pipeline.session import Refused
from harness.plugin import engine as engine_door
from harness.plugin import rank_command, stash
from harness.report import files as report

FM_MARKERS = tuple(f"fm{n:02d}" for n in range(1, 17))
MARKER_KEYS = ("deadline", "world_size", "launch")


def scenario_of(item: pytest.Item) -> Scenario | None:
    """The ``Scenario`` a test is parametrized with, if any."""
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    return next((p for p in params if isinstance(p, Scenario)), None)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate ``breakit`` marker keywords; mark scenario tests ``breakit`` + ``fmNN``/``control``
    (registered here for any failure mode, so ``-m fm03`` selects and ``--strict-markers`` holds)."""
    registered = set(FM_MARKERS)
    for item in items:
        scenario = scenario_of(item)
        if scenario is not None:
            item.add_marker("breakit")
            fm_marker = scenario.fm.lower().replace("-", "")
            if fm_marker not in (*registered, "control", "adhoc"):  # a new failure mode needs no ini entry
                config.addinivalue_line("markers", f"{fm_marker}: tp-breakit scenarios of failure mode {scenario.fm}")
                registered.add(fm_marker)
            if fm_marker != "adhoc":
                item.add_marker(fm_marker)
        for marker in item.iter_markers("breakit"):
            _check_marker(item, marker)


def _check_marker(item: pytest.Item, marker: pytest.Mark) -> None:
    for key, value in marker.kwargs.items():
        if key not in MARKER_KEYS:
            raise pytest.UsageError(f"unknown keyword {key!r} in @pytest.mark.breakit on {item.nodeid}; "
                                    f"valid: {', '.join(MARKER_KEYS)}")
        try:
            options.OPTIONS[key].validate(value, f"@pytest.mark.breakit({key}=...) on {item.nodeid}")
        except options.OptionError as exc:
            raise pytest.UsageError(str(exc)) from None


def _planned(session: pytest.Session) -> list[tuple[Scenario, int]]:
    """``(scenario, world size)`` of every selected scenario test that will run (not skip)."""
    settings = session.config.stash[stash.SETTINGS]
    out = []
    for item in session.items:
        scenario = scenario_of(item)
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
    session.config.stash[stash.REFUSED] = why


def pytest_collection_finish(session: pytest.Session) -> None:
    """Check inputs with the TP path, note how many scenarios will run, start the zygote early."""
    config = session.config
    if engine_door.engaged(config):
        if not config.option.collectonly:
            engine_door.preflight(session, _planned(session), _refuse)
        return
    rank_command.warn_builtin_tp(config, [i.path for i in session.items if scenario_of(i) is not None])
    planned = _planned(session) if not config.option.collectonly else []
    if not planned:
        return
    run = config.stash[stash.SESSION]
    try:
        pending = run.ask(planned, cwd=rank_command.base_dir(config))
    except Refused as exc:
        return _refuse(session, str(exc))
    launches = any("breakit" in getattr(item, "fixturenames", ()) for item in session.items)
    if launches and run.settings["launch"] == "zygote":
        zygote.shared()  # the zygote forks the TP path's answer, then the ranks
    try:
        note = run.answer(pending)
    except Refused as exc:
        return _refuse(session, str(exc))
    if note:
        config.issue_config_time_warning(pytest.PytestWarning(f"tp-breakit: {note}"), stacklevel=2)
    report.write_planned(run.run_dir, len(planned))


def pytest_runtest_setup(item: pytest.Item) -> None:
    refused = item.config.stash.get(stash.REFUSED, None)
    if refused is not None and scenario_of(item) is not None:
        pytest.fail(f"refused before any rank started: {refused}", pytrace=False)
