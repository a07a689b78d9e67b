"""The zygote's preload of a rank package's declared fork-safe modules (harness/launch/warm.py).

The declaration is read without running the package; a rank that would import the package from elsewhere
gets its own copy, never the one the zygote imported.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest

from harness.launch import warm, zygote

MAIN = """import json, os
import {pkg}.core as core
print(json.dumps({{"where": core.__file__, "preloaded": core.LOADED_IN != os.getpid()}}))
"""


def _package(root: Path, name: str, *, declare: str, init_body: str = "") -> Path:
    pkg = root / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"ZYGOTE_PRELOAD = {declare}\n{init_body}")
    (pkg / "core.py").write_text("import os\nLOADED_IN = os.getpid()\n")
    (pkg / "__main__.py").write_text(MAIN.format(pkg=name))
    return root


def test_the_declaration_is_read_without_running_the_package(tmp_path: Path) -> None:
    _package(tmp_path, "wpkg_a", declare='("wpkg_a.core", "os", "wpkg_a_other.x")',
             init_body="raise RuntimeError('a zygote must never run this')\n")
    assert warm.declared("wpkg_a", [str(tmp_path)]) == ("wpkg_a.core",)  # only the package's own modules
    _package(tmp_path, "wpkg_b", declare="tuple(['wpkg_b.core'])")
    assert warm.declared("wpkg_b", [str(tmp_path)]) == ()  # not a literal: nothing
    assert warm.declared("wpkg_none", [str(tmp_path)]) == ()


def test_preloaded_modules_are_forgotten_by_a_rank_whose_imports_resolve_elsewhere(tmp_path: Path) -> None:
    here = str(_package(tmp_path / "a", "wpkg_c", declare='("wpkg_c.core",)'))
    warmed: dict = {}
    try:
        warm.preload("wpkg_c", [here], warmed)
        assert "wpkg_c.core" in sys.modules and warmed == {"wpkg_c": (here,)}
        warm.forget_elsewhere("wpkg_c", [here], warmed)
        assert "wpkg_c.core" in sys.modules
        warm.forget_elsewhere("wpkg_c", [str(tmp_path / "b")], warmed)
        assert "wpkg_c" not in sys.modules and "wpkg_c.core" not in sys.modules
    finally:
        warm._forget("wpkg_c")


@pytest.mark.timeout(120)
def test_ranks_from_two_directories_each_run_their_own_package(tmp_path: Path) -> None:
    """The first directory's package is preloaded in the zygote; a rank in the second gets its own, freshly."""
    dirs = [_package(tmp_path / d, "wpkg_same", declare='("wpkg_same.core",)') for d in ("one", "two")]
    private = zygote.Zygote()
    try:
        lines = []
        for d in (dirs[0], dirs[1], dirs[0]):
            done = threading.Event()
            log = d / f"rank{len(lines)}.log"
            private.spawn(module="wpkg_same", argv=[], env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                          cwd=str(d), log=str(log), on_exit=lambda *_, done=done: done.set())
            assert done.wait(60), "the rank did not exit"
            lines.append(json.loads(log.read_text().strip().splitlines()[-1]))
    finally:
        private.close()
    assert [Path(x["where"]).parent.parent for x in lines] == [dirs[0], dirs[1], dirs[0]]
    assert [x["preloaded"] for x in lines] == [True, False, True]
