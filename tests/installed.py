"""tp-breakit installed as a user installs it: ``pip install -e`` into a fresh virtualenv.

The virtualenv borrows this interpreter's site-packages (torch, pytest, psutil: the
environment a user already has) through a ``.pth`` line, and gets tp-breakit itself
from pip, so its entry points (the ``breakit`` console script and pytest plugin) are
the real ones built from pyproject.toml. It takes about 5 s on the 2-core box.
"""

from __future__ import annotations

import importlib.metadata
import os
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class Installed:
    """A virtualenv holding an editable tp-breakit."""

    root: Path
    """The virtualenv."""
    python: Path
    """Its interpreter."""
    env: dict
    """Environment for commands run 'in' it: its bin/ first on PATH, no PYTHONPATH."""


def _setuptools_at_least(major: int) -> bool:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= major
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False


def install(where: Path) -> Installed:
    """Create the virtualenv under ``where`` and install this checkout into it, editable, without deps."""
    root = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], *site.getsitepackages()])
    Path(purelib, "_borrowed_site.pth").write_text("".join(f"{p}\n" for p in borrowed))
    # The borrowed site-packages usually has a setuptools new enough to build with: no isolated build env
    # to fill (about 4 s instead of 17 s on a loaded 2-core box).
    isolation = ["--no-build-isolation"] if _setuptools_at_least(77) else []
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet",
                           "--disable-pip-version-check", *isolation, "-e", str(REPO)],
                          capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install -e {REPO} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    # pytest's own console script, as pip writes it for an environment that has pytest.
    entry = next(e for e in importlib.metadata.distribution("pytest").entry_points
                 if e.group == "console_scripts" and e.name == "pytest")
    module, _, attr = entry.value.partition(":")
    script = root / "bin" / "pytest"
    script.write_text(f"#!{python}\nimport sys\nfrom {module} import {attr}\nsys.exit({attr}())\n")
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join([str(root / "bin"), env.get("PATH", "")])
    return Installed(root=root, python=python, env=env)
