"""What the pytest plugin keeps on its ``config.stash``, shared with the fixtures it exports (fixtures/)."""

from __future__ import annotations

from pathlib import Path

import pytest

SETTINGS = pytest.StashKey[dict]()
"""Every ``--breakit-*`` setting, resolved CLI > ini > default (the marker is applied per test)."""
RUN_DIR = pytest.StashKey[Path]()
"""This session's run directory (an xdist worker's is its controller's)."""
