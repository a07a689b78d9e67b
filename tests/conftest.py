"""Fixtures shared by the tests of tp-breakit itself."""

from __future__ import annotations

import pytest
from installed import Installed, install


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """tp-breakit installed with pip into a fresh virtualenv (tests/installed.py)."""
    return install(tmp_path_factory.mktemp("installed"))
