"""The rank command under pytest: where it came from, where ranks start, which launch mode runs it.

Which launch mode it runs in is the pipeline's (``Session.fit_launch``), shared with the command line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import harness
from harness.pipeline import options

_DEFAULT_COMMAND = options.default("tp_command")
HEADER = pytest.StashKey[list]()
"""Lines for pytest's report header: the rank command, where it came from, the launch mode."""


def base_dir(config: pytest.Config) -> Path:
    """Where ranks start and a relative report dir lives: the ini file's directory, else where pytest started
    (without an ini, rootdir is the arguments' common ancestor, e.g. ``my_scenarios/``, which lacks ``mypkg``)."""
    return config.rootpath if config.inipath is not None else config.invocation_params.dir


def source(config: pytest.Config, name: str, prefix: str = "") -> str:
    """Where setting ``name`` came from: ``{prefix}`` its flag or its ini key, or ``default``."""
    opt = options.OPTIONS[name]
    if config.getoption(opt.ini) is not None:
        return prefix + opt.pytest_flag
    if config.getini(opt.ini) not in (None, ""):
        return f"{prefix}{opt.ini} in {config.inipath.name if config.inipath else 'ini'}"
    return "default"


def header(config: pytest.Config, settings: dict) -> None:
    """Start the report header: version, rank command and where it came from, world size, backend."""
    config.stash[HEADER] = [f"tp-breakit {harness.__version__}: rank command {' '.join(settings['tp_command'])!r} "
                            f"({source(config, 'tp_command', prefix='from ')}), world size {settings['world_size']}, "
                            f"backend {settings['backend']}"]


def warn_builtin_tp(config: pytest.Config, paths: list[Path]) -> None:
    """Scenario modules of one's own (``paths``) run against the built-in TP path only because no rank command
    was given: say so."""
    if source(config, "tp_command") != "default":
        return
    own = Path(harness.__file__).resolve().parent.parent / "scenarios"
    foreign = sorted({str(p) for p in paths if not p.resolve().is_relative_to(own)})
    if foreign:
        config.issue_config_time_warning(pytest.PytestWarning(
            f"tp-breakit: {foreign[0]}{' and others' if len(foreign) > 1 else ''} run against the built-in TP path "
            f"{' '.join(_DEFAULT_COMMAND)!r}: no rank command was given (--breakit-tp-command, breakit_tp_command)"),
            stacklevel=2)
