"""The semantic mutants, as data: load ``mutants.toml``, check each one still applies, apply it to a copy.

A mutant is a realistic bug in a guardrail, the crash-only contract or the
harness's verdict, written as an exact snippet of the code and its
replacement. Each names the tests or scenarios that must kill it. A mutant
whose snippet is no longer found exactly once is *stale*: the code moved, and
the mutant is updated in the same change (``tests/test_mutate.py`` fails
until it is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (requirements/test.txt)
    import tomli as tomllib

DATA = Path(__file__).resolve().parent / "mutants.toml"
SELECTION_ROOTS = ("tests/", "scenarios/")


class MutantError(ValueError):
    """A malformed mutants file; the message names the mutant and the field."""


@dataclass(frozen=True, kw_only=True)
class Edit:
    """One exact replacement in one file."""

    file: str
    """Path relative to the repository root, e.g. ``tp/driver.py``."""
    original: str
    """The exact snippet as it is in the code; must occur exactly once."""
    replacement: str
    """What the mutant writes instead."""

    def count(self, root: Path) -> int:
        """How often ``original`` occurs in the file under ``root`` (0 when the file is gone)."""
        path = root / self.file
        return path.read_text().count(self.original) if path.is_file() else 0

    def apply(self, root: Path) -> None:
        path = root / self.file
        text = path.read_text()
        if text.count(self.original) != 1:
            raise MutantError(f"{self.file}: the original snippet is not found exactly once; the mutant is stale")
        path.write_text(text.replace(self.original, self.replacement, 1))


@dataclass(frozen=True, kw_only=True)
class Mutant:
    """One semantic mutant."""

    id: str
    """Unique id, e.g. ``M04b``."""
    description: str
    """The bug in one sentence, and why it matters."""
    edits: tuple[Edit, ...]
    """Its edits: the main one, then any ``[[mutant.also]]`` (one bug may touch two places)."""
    kill: tuple[str, ...]
    """pytest node ids or paths (under tests/ or scenarios/) that must fail with the mutant applied."""

    def stale_reason(self, root: Path) -> str | None:
        """Why the mutant no longer applies to the tree at ``root`` (None when every edit applies)."""
        for edit in self.edits:
            n = edit.count(root)
            if n != 1:
                where = "not found" if n == 0 else f"found {n} times"
                return f"{edit.file}: original snippet {where}"
        return None

    def apply(self, root: Path) -> None:
        for edit in self.edits:
            edit.apply(root)


def _text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or (key != "replacement" and not value.strip()):
        raise MutantError(f"{where}: {key!r} must be a non-empty string")
    return value


def _edit(entry: dict, where: str) -> Edit:
    edit = Edit(file=_text(entry, "file", where), original=_text(entry, "original", where),
                replacement=_text(entry, "replacement", where))
    if edit.original == edit.replacement:
        raise MutantError(f"{where}: replacement equals original; a mutant must change the code")
    return edit


def _mutant(entry: dict, index: int) -> Mutant:
    where = f"mutant #{index + 1} ({entry.get('id', 'no id')})"
    known = {"id", "description", "file", "original", "replacement", "kill", "also"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise MutantError(f"{where}: unknown field(s) {unknown}; known: {', '.join(sorted(known))}")
    kill = entry.get("kill")
    if not (isinstance(kill, list) and kill and all(isinstance(k, str) and k.startswith(SELECTION_ROOTS) for k in kill)):
        raise MutantError(f"{where}: 'kill' must be a non-empty list of pytest node ids or paths under "
                          f"{' or '.join(SELECTION_ROOTS)}")
    also = entry.get("also", [])
    if not isinstance(also, list):
        raise MutantError(f"{where}: 'also' must be a list of {{file, original, replacement}} tables")
    edits = (_edit(entry, where), *(_edit(e, f"{where} also #{i + 1}") for i, e in enumerate(also)))
    return Mutant(id=_text(entry, "id", where), description=_text(entry, "description", where), edits=edits,
                  kill=tuple(kill))


def load(path: Path = DATA) -> list[Mutant]:
    """Every ``[[mutant]]`` of ``path``, validated; ids are unique."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise MutantError(f"cannot read mutants from {path}: {exc}") from None
    unknown = sorted(set(data) - {"mutant"})
    if unknown:
        raise MutantError(f"{path}: unknown top-level key(s) {unknown}; write each mutant as [[mutant]]")
    mutants = [_mutant(entry, i) for i, entry in enumerate(data.get("mutant", []))]
    seen: set[str] = set()
    for m in mutants:
        if m.id in seen:
            raise MutantError(f"{path}: duplicate mutant id {m.id!r}")
        seen.add(m.id)
    if not mutants:
        raise MutantError(f"{path} holds no [[mutant]]")
    return mutants
