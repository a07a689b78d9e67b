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


def _modules_sharing_a_run(root: Path) -> frozenset[str]:
    """Test modules (as node id prefixes) whose tests assert on one launch they share (``SHARING``)."""
    return frozenset(p.relative_to(root).as_posix() for p in sorted(TESTS.glob("test_*.py"))
                     if any(mark in p.read_text(encoding="utf-8") for mark in SHARING))


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup``, with each module that shares a launch kept on one worker.

    A module-scoped fixture (or a cached helper) runs once per worker that runs a test of its module, and plain load scheduling
    spreads a module's tests over both: the launch those tests share (a reference run, a bench, a healthy
    engine run) ran twice. xdist's own ``xdist_group`` cannot say this here (with pytest 9 a node id derives
    from its structured id, and xdist 3.8's ``@group`` suffix does not take)."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    shared = _modules_sharing_a_run(config.rootpath)

    class SharedLaunchesOnce(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            module = nodeid.split("::", 1)[0]
            return module if scope == nodeid and module in shared else scope

    return SharedLaunchesOnce(config, log)
