"""What the pytest plugin keeps on its ``config.stash``, shared with the fixtures it exports (fixtures/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.pipeline.session import Session

SETTINGS = pytest.StashKey[dict]()
"""Every ``--breakit-*`` setting, resolved CLI > ini > default (the marker is applied per test)."""
RUN_DIR = pytest.StashKey[Path]()
"""This session's run directory (an xdist worker's is its controller's)."""
SESSION = pytest.StashKey[Session]()
"""This report run (``harness.pipeline.session``): planned here, run by the ``breakit`` fixture, finished by the
controller."""
REFUSED = pytest.StashKey[str]()
"""Why the inputs were refused, on an xdist worker (a usage error there would crash the controller)."""
