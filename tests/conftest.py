"""Fixtures shared by the tests of tp-breakit itself, and where pytest-xdist runs them."""

from __future__ import annotations

from pathlib import Path

import pytest
from installed import Installed, install

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """tp-breakit installed with pip into a fresh virtualenv (tests/installed.py)."""
    return install(tmp_path_factory.mktemp("installed"))


SHARING = ('scope="module"', "@functools.cache")
"""How a test module shares one launch among its tests: a module-scoped fixture, or a cached helper."""
INSTALLED = "installed: Installed"
"""How a test module asks for the session's ``installed`` virtualenv (a pip install: seconds)."""


def _shared_scopes(root: Path) -> dict[str, str]:
    """Test module (as a node id prefix) -> the one xdist scope its tests run in: the modules that use the
    ``installed`` virtualenv share one, each module that shares a launch (``SHARING``) has its own."""
    scopes = {}
    for path in sorted(TESTS.glob("test_*.py")):
        text, module = path.read_text(encoding="utf-8"), path.relative_to(root).as_posix()
        if INSTALLED in text:
            scopes[module] = "installed"
        elif any(mark in text for mark in SHARING):
            scopes[module] = module
    return scopes


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup``, with each module that shares a launch kept on one worker.

    A module-scoped fixture (or a cached helper) runs once per worker that runs a test of its module, and
    plain load scheduling spreads a module's tests over both: the launch those tests share (a reference run,
    a bench, a healthy engine run) ran twice, and so did the session's ``installed`` virtualenv. xdist's own
    ``xdist_group`` cannot say this here (with pytest 9 a node id derives from its structured id, and xdist
    3.8's ``@group`` suffix does not take)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    shared = _shared_scopes(config.rootpath)

    class SharedLaunchesOnce(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            module = nodeid.split("::", 1)[0]
            return shared.get(module, scope) if scope == nodeid else scope

    return SharedLaunchesOnce(config, log)
