"""Which scenarios a command line names: catalog paths (files, directories, quoted globs) and ids.

Every mistake is a UsageError: one line, exit 2, before any rank starts.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from harness.declare.scenario import Scenario, default_catalog_paths, load_catalog


class UsageError(Exception):
    """Bad user input: one line, exit 2."""


CATALOG_HELP = ("a scenario module, a directory (its test_*.py) or a quoted glob; repeatable "
                "(default: scenarios/test_*.py here, else the installed tp-breakit's)")


def catalog_files(given: list[Path] | None) -> list[Path]:
    """Scenario modules named by ``--catalog``: files, directories (their ``test_*.py``) and quoted globs."""
    if given is None:
        return default_catalog_paths(Path.cwd()) or default_catalog_paths(Path(__file__).resolve().parents[2])
    paths: list[Path] = []
    for item in given:
        if item.is_dir():
            found = sorted(item.glob("test_*.py"))
        elif glob.has_magic(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item)))
        else:
            found = [item] if item.is_file() else []
        if not found:
            raise UsageError(f"scenario module not found: {item} (--catalog takes a test_*.py file, a directory "
                             "holding test_*.py, or a quoted glob)")
        paths += [p for p in found if p not in paths]
    return paths


def load_scenarios(given: list[Path] | None) -> list[Scenario]:
    paths = catalog_files(given)
    try:
        return load_catalog(paths)
    except Exception as exc:  # noqa: BLE001 - any import error of a scenario module is the user's input
        raise UsageError(f"cannot load the scenario catalog: {type(exc).__name__}: {exc}") from None


def check_ids(ids: list[str]) -> None:
    """A path among the ids is a catalog the shell expanded (``--catalog dir/test_*.py``): say so."""
    for wanted in ids:
        if wanted.endswith(".py") or os.sep in wanted and Path(wanted).exists():
            raise UsageError(f"{wanted!r} is a file, not a scenario id: --catalog takes one path each; give the "
                             "directory (--catalog my_scenarios), a quoted glob or --catalog once per module")
