"""Where the bootstrap lives and what a zero-touch rank gets in its environment."""

from __future__ import annotations

import os
from pathlib import Path

BOOT_DIR = Path(__file__).resolve().parent / "boot"
"""Put first on every rank's ``PYTHONPATH``: its ``sitecustomize`` runs before the engine's first line."""
CODES = {"UNCAUGHT_EXCEPTION": 1}
"""The bootstrap's one fatal code and the exit status an uncaught exception gives (the engine's own exit)."""


def boot_env(output_regex: str | None = None) -> dict[str, str]:
    """What every rank of a zero-touch run gets on top of the contract's env."""
    path = os.environ.get("PYTHONPATH", "")
    env = {"PYTHONPATH": str(BOOT_DIR) + (os.pathsep + path if path else ""), "BREAKIT_ENGINE_BOOT": "1"}
    if output_regex:
        env["BREAKIT_OUTPUT_REGEX"] = output_regex
    return env
