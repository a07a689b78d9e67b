"""Zero-touch under pytest: ``--breakit-engine CMD`` runs a user's own scenario modules against their engine.

A scenario module declares ``Scenario``\\ s with ``collective.<op>`` faults and calls ``breakit.check`` as any
other; with ``--breakit-engine`` (or ini ``breakit_engine``) each one starts the engine as given, once per
rank, with the bootstrap on its path (``harness.engine.run``), never the contract TP path. The plugin's
TP-path preflight (``--check-failpoints``, ``--list-*``) is not asked of an engine: the faults are checked
here, against the collective sites and the world size, before any rank starts.

Precedence as for every setting: command line > ini > nothing (no engine: the contract TP path runs).
"""

from __future__ import annotations

import re

import pytest

from harness.engine import ENGINE_HELP, OUTPUT_HELP
from harness.engine.boot import _breakit_faults as faults
from harness.pipeline import options
from harness.plugin import rank_command, stash
from harness.report import files as report


def _engine(value: str) -> tuple[str, ...] | None:
    return options.OPTIONS["tp_command"].parse(value) if value else None


def _regex(value: str) -> str | None:
    if not value:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return value


ENGINE = options.Option(name="engine", metavar="COMMAND", label="engine command", default="", parse=_engine,
                        help=ENGINE_HELP + " (default: none: the TP path of --breakit-tp-command runs)")
OUTPUT_REGEX = options.Option(name="output_regex", metavar="REGEX", label="output regex", default="", parse=_regex,
                              help=OUTPUT_HELP.replace("with --engine", "with --breakit-engine"))
OPTIONS = (ENGINE, OUTPUT_REGEX)


def addoption(group, parser: pytest.Parser) -> None:
    """``--breakit-engine`` and ``--breakit-output-regex``, and their ini keys."""
    for opt in OPTIONS:
        group.addoption(opt.pytest_flag, dest=opt.ini, default=None, metavar=opt.metavar, help=opt.help)
        parser.addini(opt.ini, help=opt.help, default=None)


def configure(config: pytest.Config, settings: dict) -> bool:
    """Resolve both settings into ``settings`` (CLI > ini); when an engine is given, fit the launch mode and
    start the report header. True when an engine runs (the TP path's header and launch probe are then moot)."""
    for opt in OPTIONS:
        given, where = config.getoption(opt.ini), opt.pytest_flag
        if given is None and config.getini(opt.ini) not in (None, ""):
            given, where = config.getini(opt.ini), f"{opt.ini} in {config.inipath.name if config.inipath else 'ini'}"
        try:
            settings[opt.name] = opt.validate(given or "", where)
        except options.OptionError as exc:
            raise pytest.UsageError(str(exc)) from None
    if settings["engine"] is None:
        return False
    from harness.engine.run import LAUNCHES  # only with an engine: the run machinery stays unimported otherwise
    chosen = config.getoption("breakit_launch") is not None or config.getini("breakit_launch") not in (None, "")
    if not chosen:
        settings["launch"] = "subprocess"
    elif settings["launch"] not in LAUNCHES:
        raise pytest.UsageError(f"launch mode {settings['launch']!r} cannot start an engine command afresh (the "
                                f"zygote forks a pre-imported interpreter); valid with --breakit-engine: "
                                f"{', '.join(LAUNCHES)}")
    config.stash[rank_command.HEADER] = [f"tp-breakit: engine {' '.join(settings['engine'])!r} (zero-touch), world size "
                            f"{settings['world_size']}, launch mode {settings['launch']}"]
    return True


def engaged(config: pytest.Config) -> bool:
    """An engine runs this session's scenarios."""
    return config.stash[stash.SETTINGS].get("engine") is not None


def preflight(session: pytest.Session, planned: list, refuse) -> None:
    """Check every planned ``(scenario, world size)`` against the collective sites, no rank started; a refusal
    goes through ``refuse(session, why)`` (a usage error, or a setup error on an xdist worker)."""
    from harness.engine.run import check_ranks

    for scenario, ws in planned:
        try:
            faults.parse(scenario.failpoints(), where=f"scenario {scenario.id}")
            check_ranks(scenario, ws, where=f"scenario {scenario.id}: fault")
        except ValueError as exc:
            refuse(session, f"{exc} (zero-touch: --breakit-engine)")
            return
    report.write_planned(session.config.stash[stash.RUN_DIR], len(planned))
