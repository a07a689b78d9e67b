"""The distribution as pip builds it from pyproject.toml: metadata, console script, plugin name, layout."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

from installed import REPO, Installed

import harness

METADATA = textwrap.dedent("""
    import importlib.metadata as m, importlib.util as u, json
    d = m.distribution("tp-breakit")
    print(json.dumps({
        "version": d.version,
        "entry_points": sorted([e.group, e.name, e.value] for e in d.entry_points),
        "classifiers": d.metadata.get_all("Classifier"),
        "license": d.metadata.get("License-Expression"),
        "requires": d.requires,
        "packages": {n: u.find_spec(n).origin for n in ("tp", "harness", "harness.launch", "scenarios")},
    }))
""")


def _run(installed: Installed, cwd: Path, *words: str) -> subprocess.CompletedProcess:
    return subprocess.run(words, cwd=cwd, env=installed.env, capture_output=True, text=True, timeout=120, check=False)


def test_metadata_entry_points_and_layout(installed: Installed, tmp_path: Path) -> None:
    proc = _run(installed, tmp_path, str(installed.python), "-c", METADATA)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert meta["version"] == harness.__version__
    assert meta["entry_points"] == [["console_scripts", "breakit", "harness.cli.main:main"],
                                    ["pytest11", "breakit", "harness.plugin"]]
    assert "Framework :: Pytest" in meta["classifiers"]
    assert meta["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
    assert any(r.startswith("pytest") for r in meta["requires"]), meta["requires"]
    # The product's top-level layout, resolved to this checkout from a directory outside it.
    assert {n: Path(o).relative_to(REPO).as_posix() for n, o in meta["packages"].items()} == {
        "tp": "tp/__init__.py", "harness": "harness/__init__.py", "harness.launch": "harness/launch/__init__.py",
        "scenarios": "scenarios/__init__.py"}


def test_console_script_version(installed: Installed, tmp_path: Path) -> None:
    proc = _run(installed, tmp_path, "breakit", "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"breakit {harness.__version__} (tp-breakit)"


def test_the_plugin_is_named_breakit(installed: Installed, tmp_path: Path) -> None:
    (tmp_path / "test_uses_it.py").write_text("def test_it(breakit):\n    assert breakit.settings()['world_size'] == 2\n")
    on = _run(installed, tmp_path, "pytest", "-p", "no:cacheprovider", "test_uses_it.py")
    assert on.returncode == 0, on.stdout + on.stderr
    assert "plugins: " in on.stdout and f"tp-breakit-{harness.__version__}" in on.stdout
    off = _run(installed, tmp_path, "pytest", "-p", "no:cacheprovider", "-p", "no:breakit", "test_uses_it.py")
    assert off.returncode == 1, off.stdout + off.stderr
    assert "fixture 'breakit' not found" in off.stdout
