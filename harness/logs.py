"""Read what ranks write: the contract's log lines (docs/CONTRACT.md §2).

Only lines that start at column 0 with ``TP-EVENT``, ``TP-FAULT`` or
``TP-FATAL`` are contract lines; everything else in a rank log is free text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

PREFIXES = ("TP-EVENT ", "TP-FAULT ", "TP-FATAL ")

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


@dataclass(frozen=True, kw_only=True)
class LogLine:
    """One contract line from a rank log."""

    kind: str
    """``TP-EVENT``, ``TP-FAULT`` or ``TP-FATAL``."""
    fields: dict = field(default_factory=dict)
    """``key=value`` pairs (FAULT/FATAL) or the JSON object (EVENT)."""
    raw: str = ""
    """The line as written, without the newline."""

    @property
    def mono(self) -> float | None:
        """``time.monotonic()`` of the writer when it wrote the line, if given."""
        try:
            return float(self.fields["mono"])
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def event(self) -> str | None:
        """The event name of a TP-EVENT line (``init``, ``result``, ...)."""
        return self.fields.get("event") if self.kind == "TP-EVENT" else None


def parse_kv(text: str) -> dict[str, str]:
    """Parse ``key=value key="quoted value"`` pairs; quotes are removed."""
    out: dict[str, str] = {}
    for key, value in _KV.findall(text):
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[key] = value
    return out


def parse_line(line: str) -> LogLine | None:
    """Return the contract line in ``line``, or None for free text."""
    line = line.rstrip("\r\n")
    if not line.startswith(PREFIXES):
        return None
    kind, _, rest = line.partition(" ")
    if kind == "TP-EVENT":
        try:
            payload = json.loads(rest)
        except ValueError:
            return None
        if not isinstance(payload, dict):
            return None
        return LogLine(kind=kind, fields=payload, raw=line)
    return LogLine(kind=kind, fields=parse_kv(rest), raw=line)


class LogFollower:
    """Reads a growing log file incrementally, yielding whole lines only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def size(self) -> int:
        """Current size of the file in bytes (0 when it does not exist yet)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read_new(self) -> list[str]:
        """Whole lines written since the last call."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [raw.decode("utf-8", "replace") for raw in lines]


def read_text(path: Path) -> str:
    """The whole log as text; empty when the file is missing."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def read_bytes_from(path: Path, offset: int) -> str:
    """The log's text from byte ``offset`` on (a stack dump's region)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def tail(text: str, lines: int = 30) -> list[str]:
    """The last ``lines`` lines of ``text``."""
    return text.splitlines()[-lines:]


def contract_lines(text: str) -> list[LogLine]:
    """Every contract line in a log's text, in order."""
    parsed = (parse_line(line) for line in text.splitlines())
    return [line for line in parsed if line is not None]


def final_json(text: str, key: str) -> dict | None:
    """The last line that is a JSON object holding ``key`` (rank 0's result)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if not (line.startswith("{") and key in line):
            continue
        try:
            payload = json.loads(line)
        except ValueError:
            continue
        if isinstance(payload, dict) and key in payload:
            return payload
    return None
