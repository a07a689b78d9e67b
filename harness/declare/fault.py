"""``Fault``: one ``TP_FAILPOINTS`` entry (docs/CONTRACT.md §4), checked for syntax only.

The TP path owns the meaning: which sites exist, which actions each site
takes and what their arguments may be. The harness checks the shape of an
entry here and asks the rank command about the rest before any rank starts
(``harness.launch.probe``), so one grammar is enforced in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

TRIGGERS = ("rank", "chunk", "call", "hit")
MAX_SITE_LEN = 200
"""Longest failpoint name the harness passes on (a longer one is a mistake, not a site)."""
MAX_TRIGGER = 2**63 - 1
"""Largest trigger value: chunk indices, call ids and hit counts are int64 in the TP path (and on the wire)."""
_SITE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z0-9_]+)+$")
_ACTION = re.compile(r"^[a-z_]+(\([^();]*\))?$")
_ENTRY = re.compile(r"^(?P<site>[^=@;\s]+)=(?P<action>[a-z_]+(?:\([^()]*\))?)(?:@(?P<triggers>.+))?$")


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One failpoint to arm in the ranks (``TP_FAILPOINTS`` entry, CONTRACT §4)."""

    site: str
    """Dotted failpoint name written in the TP path, e.g. ``envelope.after_header``."""
    action: str
    """``raise``, ``exit(40)``, ``kill(SIGKILL)``, ``hang``, ``sleep(0.5)``, ``corrupt[(ARG)]``, ``flip``, ``set(V)``.

    See CONTRACT §4; the TP path decides which actions and arguments each site takes.
    """
    rank: int | None = None
    """Only on this rank (None = every rank)."""
    chunk: int | None = None
    """Only in this chunk."""
    call: int | None = None
    """Only for this call_id."""
    hit: int | None = None
    """Only the N-th matching hit, 1-based (None = every matching hit)."""

    def __post_init__(self) -> None:
        where = f"Fault(site={_show(self.site)})"
        if len(self.site) > MAX_SITE_LEN:
            raise ValueError(f"{where}: site is {len(self.site)} characters; a failpoint name has at most "
                             f"{MAX_SITE_LEN}")
        if not _SITE.match(self.site):
            raise ValueError(f"{where}: site must be a dotted name like 'envelope.after_header'")
        if not isinstance(self.action, str) or not _ACTION.match(self.action):
            raise ValueError(f"{where}: action {_show(str(self.action))} must be NAME or NAME(ARG), "
                             "e.g. raise, exit(40), kill(SIGKILL), sleep(0.5)")
        for trig in TRIGGERS:
            value = getattr(self, trig)
            low = 1 if trig == "hit" else 0
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not low <= value <= MAX_TRIGGER):
                raise ValueError(f"{where}: {trig} must be an integer >= {low} and <= {MAX_TRIGGER} (int64) or None; "
                                 f"got {_show(repr(value), 40)}")

    def spec(self) -> str:
        """This fault as a ``TP_FAILPOINTS`` entry, e.g. ``envelope.after_header=raise@rank=0,chunk=2``."""
        triggers = [f"{t}={getattr(self, t)}" for t in TRIGGERS if getattr(self, t) is not None]
        return f"{self.site}={self.action}" + (f"@{','.join(triggers)}" if triggers else "")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse one ``SITE=ACTION[(ARG)][@TRIGGER,...]`` entry (inverse of ``spec()``)."""
        spec = spec.strip()
        m = _ENTRY.match(spec)
        if not m:
            raise ValueError(
                f"bad fault spec {_show(spec)}; expected SITE=ACTION[(ARG)][@TRIGGER,...], "
                "e.g. 'envelope.after_header=raise@rank=0,chunk=2'"
            )
        kwargs: dict[str, int] = {}
        for trig in (m["triggers"] or "").split(",") if m["triggers"] else ():
            key, eq, value = trig.partition("=")
            if key not in TRIGGERS or not eq or not re.fullmatch(r"\d+", value):
                raise ValueError(
                    f"bad trigger {_show(trig)} in fault spec {_show(spec)}; valid: rank=R, chunk=C, call=K, hit=N"
                )
            kwargs[key] = int(value)
        return cls(site=m["site"], action=m["action"], **kwargs)


def _show(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def parse_faults(spec: str) -> tuple[Fault, ...]:
    """Parse a whole ``;``-separated ``TP_FAILPOINTS`` value."""
    return tuple(Fault.parse(entry) for entry in spec.split(";") if entry.strip())


def frozen_by(faults: Iterable[Fault]) -> frozenset[int]:
    """Ranks a ``kill(SIGSTOP)`` fault freezes: they cannot exit, the harness reaps them (``Expect.frozen``)."""
    return frozenset(f.rank for f in faults if f.action == "kill(SIGSTOP)" and f.rank is not None)
