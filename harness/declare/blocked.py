"""Where a hang must leave its ranks: ``Expect.hang(blocked=...)``, checked against flight traces.

``harness.supervise.trace.check_blocked`` judges a HUNG run against these; a hang
anywhere else (in a lock, in the harness, before init) fails the proof.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DESYNC = "desync"
"""``Expect.hang(blocked=DESYNC)``: some rank waits in a collective that a peer never entered (or entered
with another op, shape or dtype), as the ranks' flight traces show (CONTRACT §6)."""


@dataclass(frozen=True, kw_only=True)
class Blocked:
    """Where a hung rank must be waiting, read from its flight trace (CONTRACT §6)."""

    op: str | None = None
    """Collective it must be inside, as the trace names it, e.g. ``all_reduce`` (None = any collective). For a
    zero-touch engine that is the Flight Recorder's name: on gloo a ``reduce_scatter_tensor`` is ``all_reduce``,
    an ``all_gather_into_tensor`` ``all_gather``; ``site`` (``reduce_scatter_tensor call 3``) names the engine's
    call."""
    site: str | None = None
    """Regex searched in the entry's site, e.g. ``envelope header`` or ``generator call`` (None = any)."""
    stopped: bool = False
    """The rank is frozen (SIGSTOP) and cannot dump a trace: it must be found stopped instead."""
    outside: bool = False
    """The rank waits outside any collective (idle, or in a lock): its trace shows no open collective."""

    def __post_init__(self) -> None:
        if (self.stopped or self.outside) and (self.op or self.site) or (self.stopped and self.outside):
            raise ValueError("Blocked: stopped=True and outside=True each stand alone; or give op/site")
        if self.site is not None:
            try:
                re.compile(self.site)
            except re.error as exc:
                raise ValueError(f"Blocked: site is not a valid regex {self.site!r}: {exc}") from None

    def describe(self) -> str:
        if self.stopped:
            return "stopped (SIGSTOP)"
        if self.outside:
            return "outside any collective"
        return f"inside {self.op or 'a collective'}" + (f" at /{self.site}/" if self.site else "")
