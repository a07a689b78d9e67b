"""The mutation tool: the shipped mutants still apply, the loader refuses bad data, and a mutant added
to a data file is judged without code changes (a tiny repository, real pytest runs in scratch copies)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from mutate import __main__ as cli
from mutate import mutants as data

REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_mutant_applies_exactly_once_to_the_current_code() -> None:
    # A refactor that moves a guarded line makes its mutant stale: update mutate/mutants.toml with it.
    shipped = data.load()
    stale = {m.id: m.stale_reason(REPO) for m in shipped if m.stale_reason(REPO)}
    assert stale == {}
    assert len(shipped) >= 25


def test_every_shipped_selection_names_an_existing_file() -> None:
    missing = [(m.id, k) for m in data.load() for k in m.kill if not (REPO / k.split("::")[0]).is_file()]
    assert missing == []


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


MUTANT = """
    [[mutant]]
    id = "{id}"
    description = "{description}"
    file = "calc.py"
    original = '{original}'
    replacement = '{replacement}'
    kill = ["tests/test_calc.py"]
"""


def _mutant(**kw: str) -> str:
    fields = {"id": "A1", "description": "d", "original": "return a + b", "replacement": "return a - b"} | kw
    return MUTANT.format(**fields)


@pytest.mark.parametrize(("text", "says"), [
    (_mutant() + _mutant(), "duplicate mutant id 'A1'"),
    (_mutant(replacement="return a + b"), "replacement equals original"),
    (_mutant().replace('kill = ["tests/test_calc.py"]', 'kill = ["-k", "calc"]'), "'kill' must be a non-empty list"),
    (_mutant().replace('file = "calc.py"', 'file = "calc.py"\nfiles = 1'), "unknown field(s) ['files']"),
    (_mutant(description=""), "'description' must be a non-empty string"),
    ("[mutants]\n", "unknown top-level key(s) ['mutants']"),
    ("", "holds no [[mutant]]"),
])
def test_a_bad_mutants_file_is_refused_naming_the_problem(tmp_path, text: str, says: str) -> None:
    with pytest.raises(data.MutantError) as info:
        data.load(_write(tmp_path / "m.toml", text))
    assert says in str(info.value)


def test_a_snippet_found_twice_or_not_at_all_is_stale(tmp_path) -> None:
    _write(tmp_path / "calc.py", "def add(a, b):\n    return a + b\n\n\ndef twice(a):\n    return a + a\n")
    once, twice, gone = data.load(_write(tmp_path / "m.toml", _mutant(id="once") + _mutant(id="twice", original="return a")
                                         + _mutant(id="gone", original="return a * b")))
    assert once.stale_reason(tmp_path) is None
    assert twice.stale_reason(tmp_path) == "calc.py: original snippet found 2 times"
    assert gone.stale_reason(tmp_path) == "calc.py: original snippet not found"


@pytest.fixture
def tiny_repo(tmp_path) -> Path:
    root = tmp_path / "repo"
    _write(root / "calc.py", "def add(a, b):\n    return a + b\n")
    _write(root / "tests" / "test_calc.py", "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n")
    return root


def test_mutants_added_to_a_data_file_are_judged_killed_survived_or_stale(tmp_path, tiny_repo) -> None:
    mutants = _write(tmp_path / "m.toml", _mutant(id="minus") + _mutant(id="swapped", replacement="return b + a")
                     + _mutant(id="moved", original="return sum((a, b))"))
    before = (tiny_repo / "calc.py").read_text()
    out = tmp_path / "out"
    status = cli.main(["--data", str(mutants), "--root", str(tiny_repo), "--out", str(out), "--timeout", "120"])
    report = json.loads((out / "mutate.json").read_text())
    by_id = {m["id"]: m for m in report["mutants"]}
    assert {i: m["status"] for i, m in by_id.items()} == {"minus": "killed", "swapped": "survived", "moved": "stale"}
    assert by_id["minus"]["failed"] == ["tests/test_calc.py::test_add"]
    assert report["score_pct"] == 50.0 and report["stale"] == 1 and report["baseline"]["passed"] is True
    assert status == 1, "a survivor or a stale mutant fails the run"
    assert "| minus | killed | selection |" in (out / "mutate.md").read_text()
    assert (tiny_repo / "calc.py").read_text() == before, "the working tree must never be edited"


def test_a_selection_that_fails_without_any_mutant_stops_the_run(tmp_path, tiny_repo) -> None:
    _write(tiny_repo / "tests" / "test_calc.py", "def test_broken():\n    assert False\n")
    mutants = _write(tmp_path / "m.toml", _mutant())
    assert cli.main(["--data", str(mutants), "--root", str(tiny_repo), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "mutate.json").exists()
