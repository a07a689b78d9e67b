"""Read what ranks write: the contract's log lines (docs/CONTRACT.md §2).

Only lines that start at column 0 with ``TP-EVENT``, ``TP-FAULT`` or
``TP-FATAL`` are contract lines; everything else in a rank log is free text.
"""

from __future__ import annotations

import json
import os
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


MAX_LINE_BYTES = 4096
"""A log line longer than this is cut (the contract's lines are far shorter)."""
READ_CAP_BYTES = 8 << 20
"""At most this much of one log is read for judging: its first and last halves."""
FOLLOW_CHUNK_BYTES = 4 << 20
"""At most this much new log is read per supervisor tick."""
TAIL_LINE_CHARS = 1000
"""Lines shown in result.json and on stderr (``tail``) are cut to this many characters."""
STACK_CAP_BYTES = 64 << 10
"""At most this much of a stack dump is kept."""


_GLUED = re.compile(rb'^((?:  File "|Thread 0x|Current thread 0x).*?)('
                    + b"|".join(re.escape(p.encode()) for p in (*PREFIXES, "TP-INFO ")) + rb")")


def _split(data: bytes) -> list[bytes]:
    """``data`` split into lines, a contract line that ran into a stack dump's line set apart.

    faulthandler writes each frame line in pieces from a signal handler (the harness's SIGUSR1): a rank's
    ``TP-FATAL`` line, one write, can land between ``... in recv`` and its newline. It started at column 0
    of its own write, so it is read as its own line (the frame line keeps its text).
    """
    out = []
    for raw in data.split(b"\n"):
        glued = _GLUED.match(raw) if b"TP-" in raw else None
        if glued is not None:
            out.append(glued[1])
            raw = raw[len(glued[1]):]
        out.append(raw)
    return out


def _cut(raw: bytes, limit: int = MAX_LINE_BYTES) -> str:
    """One line as text, cut to ``limit`` bytes with a note saying how much was dropped."""
    if len(raw) <= limit:
        return raw.decode("utf-8", "replace")
    return raw[:limit].decode("utf-8", "replace") + f" [truncated: {len(raw) - limit} bytes omitted]"


class LogFollower:
    """Reads a growing log file incrementally, yielding whole lines only (each cut to MAX_LINE_BYTES)."""

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
        """Whole lines written since the last call (at most FOLLOW_CHUNK_BYTES of new log per call)."""
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(FOLLOW_CHUNK_BYTES)
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *lines, partial = _split(self._partial + data)
        # A line still growing is kept only as far as it will be shown; the rest is never held.
        self._partial = partial[:MAX_LINE_BYTES + 1]
        return [_cut(raw) for raw in lines]


def read_text(path: Path, limit: int = READ_CAP_BYTES) -> str:
    """The log as text, bounded: every line cut to MAX_LINE_BYTES, and of a log larger than
    ``limit`` only the first and last ``limit / 2`` bytes, with a ``[truncated: N bytes omitted]``
    line between them. Empty when the file is missing.
    """
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= limit:
                return _lines(fh.read(limit))
            half = limit // 2
            head = fh.read(half)
            fh.seek(max(half, size - half))
            tail = fh.read(half)
    except FileNotFoundError:
        return ""
    omitted = size - len(head) - len(tail)
    return _lines(head) + f"\n[truncated: {omitted} bytes omitted]\n" + _lines(tail)


def _lines(data: bytes) -> str:
    return "\n".join(_cut(raw) for raw in _split(data))


def read_bytes_from(path: Path, offset: int, limit: int = STACK_CAP_BYTES) -> str:
    """The log's text from byte ``offset`` on (a stack dump's region), at most ``limit`` bytes of it."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(limit + 1)
    except FileNotFoundError:
        return ""
    if len(data) > limit:
        return _lines(data[:limit]) + "\n[truncated: the rest of the dump omitted]"
    return _lines(data)


def tail(text: str, lines: int = 30) -> list[str]:
    """The last ``lines`` lines of ``text``, each cut to TAIL_LINE_CHARS characters."""
    out = []
    for line in text.splitlines()[-lines:]:
        if len(line) > TAIL_LINE_CHARS:
            line = line[:TAIL_LINE_CHARS] + f" [truncated: {len(line) - TAIL_LINE_CHARS} characters omitted]"
        out.append(line)
    return out


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
