"""``Fault``: one ``TP_FAILPOINTS`` entry (docs/CONTRACT.md §4), checked against the contract's grammar.

The grammar is ``contract.faults``'s, shared with the reference TP path and the zero-touch bootstrap. What an
entry means (which sites exist, which actions each takes, what their arguments may be) is the TP path's: the
harness checks the shape here and asks the rank command about the rest before any rank starts
(``harness.launch.probe``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from contract import faults as grammar

TRIGGERS = {"rank": 0, "chunk": 0, "call": 0, "hit": 1}
"""Every trigger a TP path may take, and its least value (CONTRACT §4)."""
MAX_SITE_LEN = grammar.MAX_SITE_LEN
MAX_TRIGGER = grammar.MAX_TRIGGER


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
        where = f"Fault(site={grammar.show(self.site)})"
        if not isinstance(self.action, str) or grammar.Action.parse(self.action) is None:
            raise ValueError(f"{where}: action {grammar.show(str(self.action))} must be NAME or NAME(ARG), e.g. raise, "
                             "exit(40), kill(SIGKILL), sleep(0.5)")
        for trig, low in TRIGGERS.items():
            value = getattr(self, trig)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not low <= value <= MAX_TRIGGER):
                raise ValueError(f"{where}: {trig} must be an integer >= {low} and <= {MAX_TRIGGER} (int64) or None; "
                                 f"got {grammar.show(repr(value), 40)}")
        grammar.parse(self.spec(), where=where, triggers=TRIGGERS, check_args=False)

    @cached_property
    def act(self) -> grammar.Action:
        """The action, parsed once: ``act.signal``, ``act.exit_code``, ``act.freezes``, ``act.seconds``."""
        name, _, rest = self.action.partition("(")
        return grammar.Action(name, rest[:-1] if rest else None)

    def spec(self) -> str:
        """This fault as a ``TP_FAILPOINTS`` entry, e.g. ``envelope.after_header=raise@rank=0,chunk=2``."""
        triggers = [f"{t}={getattr(self, t)}" for t in TRIGGERS if getattr(self, t) is not None]
        return f"{self.site}={self.action}" + (f"@{','.join(triggers)}" if triggers else "")

    @classmethod
    def parse(cls, spec: str, where: str = "a fault spec") -> Fault:
        """Parse one ``SITE=ACTION[(ARG)][@TRIGGER,...]`` entry (inverse of ``spec()``)."""
        entries = grammar.parse(spec.strip(), where=where, triggers=TRIGGERS, check_args=False)
        if len(entries) != 1:
            raise ValueError(f"{where}: expected one fault, got {len(entries)} in {grammar.show(spec)}")
        (entry,) = entries
        return cls(site=entry.site, action=str(entry.action), **entry.triggers)


def parse_faults(spec: str) -> tuple[Fault, ...]:
    """Parse a whole ``;``-separated ``TP_FAILPOINTS`` value."""
    return tuple(Fault.parse(entry) for entry in spec.split(";") if entry.strip())


def frozen_by(faults: Iterable[Fault]) -> frozenset[int]:
    """Ranks a ``kill(SIGSTOP)`` fault freezes: they cannot exit, the harness reaps them (``Expect.frozen``)."""
    return frozenset(f.rank for f in faults if f.act.freezes and f.rank is not None)
