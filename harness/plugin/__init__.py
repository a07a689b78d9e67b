"""pytest plugin: markers, ``--breakit-*`` options; it exports the ``breakit`` fixture (fixtures/breakit.py).

Its name is ``breakit`` (``-p no:breakit`` keeps it out): the ``pytest11`` entry
point of an installed tp-breakit, or the root conftest of a checkout. Loaded by its
module name (``-p harness.plugin``) it blocks the other name: never a second copy.

One precedence for every setting: ``@pytest.mark.breakit(...)`` > command line
> ini > default (a scenario's own ``deadline_s`` sits between the marker and
the command line: it is part of what the scenario proves; ``harness.pipeline.deadline``).

An adapter over the pipeline (``harness.pipeline.session``), like the command line: this module declares
options and markers and plans the report run at configure time; ``collect`` checks the inputs with the TP path,
the ``breakit`` fixture runs scenarios, ``finish`` finishes the run and shows it.
"""

from __future__ import annotations

import importlib
import secrets
import sys
import tempfile
from pathlib import Path

import pytest

from harness.launch import zygote
from harness.pipeline import options
from harness.pipeline.session import Refused, Session
from harness.plugin import collect, finish, rank_command, stash
from harness.plugin import engine as engine_door
from harness.report import files as report

FM_MARKERS = collect.FM_MARKERS
MARKER_KEYS = collect.MARKER_KEYS
WORKER_KEY = "breakit_run_dir"
ZYGOTE_KEY = "breakit_zygote_share"
PLUGIN_NAME = "breakit"
"""The entry point's name: ``-p no:breakit`` disables the plugin."""
PARTS = {"breakit-collect": collect, "breakit-finish": finish, "breakit-tally": finish.Tally,
         "breakit-fixtures": "fixtures.breakit"}
"""The plugin's other hook holders, registered at configure under these names (the fixtures users' scenarios
request live in fixtures/, shared with this project's own tests)."""


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
    config.addinivalue_line("markers", "breakit(deadline=S, world_size=N, launch=MODE): a tp-breakit scenario "
                                       "test; keywords override --breakit-* options and ini")
    for name in FM_MARKERS:
        config.addinivalue_line("markers", f"{name}: tp-breakit scenarios of failure mode FM-{name[2:]}")
    config.addinivalue_line("markers", "control: tp-breakit control scenarios that must stay CLEAN")
    settings = {opt.name: _resolve(config, opt) for opt in options.OPTIONS.values()}
    config.stash[stash.SETTINGS] = settings
    rank_command.header(config, settings)
    engine = engine_door.configure(config, settings)  # an engine is never asked --check-*/--list-*
    try:
        _plan(config, settings, engine=engine)
    except Refused as exc:
        raise pytest.UsageError(str(exc)) from None
    for name, part in PARTS.items():
        part = importlib.import_module(part) if isinstance(part, str) else part
        config.pluginmanager.register(part() if isinstance(part, type) else part, name)


def _plan(config: pytest.Config, settings: dict, *, engine: bool) -> None:
    """This process's ``Session``: the controller's run directory (every xdist worker writes into it)."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and WORKER_KEY in workerinput:
        run_dir = Path(workerinput[WORKER_KEY])
        share = workerinput.get(ZYGOTE_KEY) or Path(tempfile.gettempdir()) / f"breakit-zygote-{workerinput['testrunuid']}"
        zygote.share_through(Path(share))
    else:
        root = settings["report_dir"]
        run_dir = (root if root.is_absolute() else rank_command.base_dir(config) / root) / report.run_dir_name()
    run = Session(settings=settings, run_dir=run_dir, door="pytest", selection=_selection(config, settings))
    config.stash[stash.SESSION] = run
    config.stash[stash.RUN_DIR] = run_dir
    if not config.option.collectonly and not engine:  # xdist workers too: each starts ranks as the controller does
        run.fit_launch(chosen=rank_command.source(config, "launch") != "default")
        config.stash[rank_command.HEADER].append(f"tp-breakit: {run.notes[0]}" if run.notes
                                                 else f"tp-breakit: launch mode {settings['launch']}")
    if workerinput is not None and WORKER_KEY in workerinput:
        return
    if not config.option.collectonly:
        run.check_report_dir()
        run.find_baseline(config.getoption("breakit_baseline", None), "--breakit-baseline")
    if getattr(config.option, "numprocesses", None):  # an xdist controller: its workers share one zygote
        zygote.share_through(Path(tempfile.gettempdir()) / f"breakit-zygote-{secrets.token_hex(8)}")
        if settings["launch"] == "zygote" and not config.option.collectonly:
            zygote.shared()  # now: its import of torch overlaps the workers' start-up instead of following it


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


def _selection(config: pytest.Config, settings: dict) -> str:
    """What the run was asked for (paths, ``-m``, ``-k``): runs compare only with runs of the same selection."""
    opt = config.option
    words = [*config.args, *(["-m", opt.markexpr] if opt.markexpr else []), *(["-k", opt.keyword] if opt.keyword else [])]
    device = settings.get("device", "auto")
    words += [f"--breakit-device {device}"] if device != "auto" else []  # a CUDA run never compares with a CPU one
    return " ".join(words)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker writes into the controller's run directory."""
    node.workerinput[WORKER_KEY] = str(node.config.stash[stash.RUN_DIR])
    if zygote.share_dir() is not None:  # not with --tx alone (no -n): the workers then name one by testrunuid
        node.workerinput[ZYGOTE_KEY] = str(zygote.share_dir())
