"""What the zygote imports for a rank module's package before it forks ranks (CONTRACT §2 ``ZYGOTE_PRELOAD``).

A rank forked from the zygote still imports its own package, about 0.1 s of
CPU per rank (a quarter to a half of a short run's rank time on a 2-core
box). A package that lists its fork-safe modules in its ``__init__.py`` as a
literal ``ZYGOTE_PRELOAD = ("pkg.a", "pkg.b")`` has them imported once, in
the zygote, from the directory the first rank runs in.

The declaration is read from the source with ``ast``, never by running it: a
package that does not opt in is not imported by the zygote at all (its
``__init__`` could start a thread or touch a GPU, which a forked child would
inherit broken). A rank whose imports would resolve elsewhere (another
working directory, another ``PYTHONPATH``) drops the preloaded modules and
imports its own (``forget_elsewhere``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import sys
from pathlib import Path

DECLARATION = "ZYGOTE_PRELOAD"


def declared(package: str, paths: list[str]) -> tuple[str, ...]:
    """The modules ``package`` (found on ``paths``) declares fork-safe; () when it declares none or is no package."""
    spec = importlib.machinery.PathFinder.find_spec(package, paths)
    if spec is None or not spec.origin or not spec.submodule_search_locations:
        return ()
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return ()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == DECLARATION for t in targets) and node.value is not None:
            try:
                names = ast.literal_eval(node.value)
            except ValueError:
                return ()
            if isinstance(names, (tuple, list)) and all(isinstance(n, str) for n in names):
                return tuple(n for n in names if n == package or n.startswith(package + "."))
            return ()
    return ()


def preload(module: str, paths: list[str], warmed: dict[str, tuple[str, ...]]) -> None:
    """In the zygote: import what ``module``'s package declares, once per package (``warmed``: package -> paths)."""
    package = module.partition(".")[0]
    if package in warmed or package in sys.modules:
        return
    names = declared(package, paths)
    warmed[package] = tuple(paths)
    if not names:
        return
    saved = list(sys.path)
    sys.path[:0] = [p for p in paths if p not in sys.path]
    try:
        for name in names:
            importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the rank imports it itself and reports what fails, in its own log
        _forget(package)
    finally:
        sys.path[:] = saved


def forget_elsewhere(module: str, paths: list[str], warmed: dict[str, tuple[str, ...]]) -> None:
    """In a forked rank: drop the preloaded package if this rank's imports resolve on other paths."""
    package = module.partition(".")[0]
    if package in warmed and warmed[package] != tuple(paths):
        _forget(package)


def _forget(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        del sys.modules[name]
