"""The fault grammar of docs/CONTRACT.md §4, owned once: ``SITE=ACTION[(ARG)][@TRIGGER=N,...]``, ``;``-separated.

Three places read fault specs: the reference TP path (``tp/failpoints.py``), the zero-touch bootstrap in an
engine's ranks (``harness/engine/boot``) and the harness's declarations (``harness/declare/fault.py``). Each
knows its own sites, actions and triggers; the grammar, the arguments every action takes and the errors are
this module's. It is parsed once, into ``Entry`` with a typed ``Action`` (``Action.signal``,
``Action.exit_code``, ``Action.freezes``), so nothing downstream re-parses an action string.

Standard library only, and no import of ``tp`` or ``harness``: both import it, and the bootstrap loads it by
path into an engine's interpreter, whatever that has installed.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

MAX_SLEEP_S = 86400.0
"""Longest ``sleep(S)``: a day (``time.sleep`` overflows far beyond it)."""
MAX_SITE_LEN = 200
"""Longest failpoint name: a longer one is a mistake, not a site."""
MAX_TRIGGER = 2**63 - 1
"""Largest trigger value: chunk indices, call ids and hit counts are int64 in a TP path (and on the wire)."""
NO_ARG = frozenset({"hang", "raise", "flip", "skip", "extra"})
"""Actions that take no argument."""
_ENTRY = re.compile(r"^(?P<site>[^=@;\s]+)=(?P<action>[a-z_]+)(?:\((?P<arg>[^()]*)\))?(?:@(?P<triggers>.*))?$")
_ACTION = re.compile(r"(?P<name>[a-z_]+)(?:\((?P<arg>[^();]*)\))?")
_SITE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z0-9_]+)+$")


class FaultSpecError(ValueError):
    """A malformed spec, an unknown site or action, a bad argument or trigger; the message says where."""


@dataclass(frozen=True)
class Action:
    """What a fault does, parsed: ``kill(SIGSTOP)`` is ``Action("kill", "SIGSTOP")``."""

    name: str
    """``hang``, ``raise``, ``sleep``, ``kill``, ``exit``, ``skip``, ``extra``, ``corrupt``, ``flip``, ``set``..."""
    arg: str | None = None
    """The argument as written, or None."""

    def __str__(self) -> str:
        return self.name + (f"({self.arg})" if self.arg is not None else "")

    @classmethod
    def parse(cls, text: str) -> Action | None:
        """``NAME`` or ``NAME(ARG)`` as a TP-FAULT line writes it; None when it is neither."""
        m = _ACTION.fullmatch(text)
        return cls(m["name"], m["arg"]) if m else None

    @property
    def signal(self) -> signal.Signals | None:
        """The signal a ``kill(SIG)`` sends its own rank, else None."""
        sig = signal.Signals.__members__.get(self.arg or "") if self.name == "kill" else None
        return sig

    @property
    def exit_code(self) -> int | None:
        """The code an ``exit(N)`` exits with, else None."""
        return int(self.arg) if self.name == "exit" and self.arg is not None and self.arg.isdigit() else None

    @property
    def returncode(self) -> int | None:
        """How the action ends its own rank, as ``Popen.returncode`` says it: the exit code, minus the signal."""
        if self.exit_code is not None:
            return self.exit_code
        return -int(self.signal) if self.signal is not None else None

    @property
    def freezes(self) -> bool:
        """True for ``kill(SIGSTOP)``: the rank stops and cannot exit (the harness reaps it)."""
        return self.signal == signal.SIGSTOP

    @property
    def ends_rank(self) -> bool:
        """True when the action itself ends or freezes its rank: ``kill(SIG)`` or ``exit(N)``."""
        return self.signal is not None or self.exit_code is not None

    @property
    def seconds(self) -> float | None:
        """How long a ``sleep(S)`` sleeps, else None."""
        return float(self.arg) if self.name == "sleep" and self.arg is not None else None


@dataclass(kw_only=True)
class Entry:
    """One armed fault: where, what, on which triggers."""

    site: str
    """The failpoint's dotted name, e.g. ``envelope.after_header`` or ``collective.all_reduce``."""
    action: Action
    """What it does."""
    triggers: dict[str, int] = field(default_factory=dict)
    """Trigger filters (``rank``, ``chunk``, ``call``, ``hit``...); a missing key matches anything."""
    matches: int = 0
    """How many times the filters matched so far (a ``hit`` trigger counts these)."""

    def describe(self) -> str:
        return str(self.action)

    def spec(self) -> str:
        """The entry as written in a spec (the inverse of ``parse``)."""
        triggers = ",".join(f"{k}={v}" for k, v in self.triggers.items())
        return f"{self.site}={self.action}" + (f"@{triggers}" if triggers else "")


def show(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters (a spec can be any size)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def parse(spec: str, *, where: str, triggers: Mapping[str, int], sites: Mapping[str, str] | None = None,
          actions: tuple[str, ...] | None = None, check_arg: Callable[[Action, str], None] | None = None,
          check_args: bool = True, example: str = "envelope.after_header=raise@rank=0,chunk=2") -> list[Entry]:
    """Parse a ``;``-separated spec. ``triggers`` maps each trigger this reader knows to its least value;
    ``sites`` / ``actions`` (None: any dotted site / any action name) are its registry; ``check_arg`` adds its
    own argument rules to the common ones; ``check_args=False`` checks the shape only (the harness: what an
    argument means is the TP path's). Every error names ``where``, the bad part and the valid choices."""
    entries = []
    for raw in filter(None, (part.strip() for part in spec.split(";"))):
        m = _ENTRY.match(raw)
        if not m:
            raise FaultSpecError(f"malformed failpoint {show(raw)} in {where}; expected SITE=ACTION[(ARG)][@TRIGGER=N,...], "
                                 f"e.g. {example}")
        site, action = m["site"], Action(m["action"], m["arg"])
        _check_site(site, sites, where)
        if actions is not None and action.name not in actions:
            raise FaultSpecError(f"unknown failpoint action {action.name!r} at {site} in {where}; known: "
                                 f"{', '.join(actions)}")
        if check_args:
            check_action(action, f"{site} in {where}")
        if check_args and check_arg is not None:
            check_arg(action, f"{site} in {where}")
        entries.append(Entry(site=site, action=action, triggers=_triggers(m["triggers"], triggers, f"{site} in {where}")))
    return entries


def _check_site(site: str, sites: Mapping[str, str] | None, where: str) -> None:
    if len(site) > MAX_SITE_LEN:
        raise FaultSpecError(f"site {show(site)} in {where} is {len(site)} characters; a failpoint name has at most "
                             f"{MAX_SITE_LEN}")
    if sites is None and not _SITE.match(site):
        raise FaultSpecError(f"site {show(site)} in {where} must be a dotted name like 'envelope.after_header'")
    if sites is not None and site not in sites:
        raise FaultSpecError(f"no such failpoint {show(site)} in {where}; known: {', '.join(sorted(sites))}")


def _triggers(text: str | None, known: Mapping[str, int], where: str) -> dict[str, int]:
    out = {}
    for item in filter(None, (text or "").split(",")) if text is not None else ():
        key, eq, value = item.partition("=")
        # A negative rank, chunk or call never matches: refusing it beats an armed fault that never fires.
        if key not in known or not eq or not value.isdigit() or not known[key] <= int(value) <= MAX_TRIGGER:
            lows = ", ".join(f"{k} from {low}" for k, low in known.items())
            raise FaultSpecError(f"bad trigger {show(item, 40)} at {where}; expected one of "
                                 f"{', '.join(k + '=N' for k in known)} ({lows}; N <= {MAX_TRIGGER}, int64)")
        out[key] = int(value)
    if text is not None and not out:
        raise FaultSpecError(f"empty trigger list after '@' at {where}; valid: {', '.join(known)}")
    return out


def check_action(action: Action, where: str) -> None:
    """The arguments every reader agrees on: none for ``NO_ARG``, a code, a signal, seconds."""
    name, arg = action.name, action.arg
    if name in NO_ARG and arg is not None:
        raise FaultSpecError(f"{name} takes no argument, got {action} at {where}")
    if name == "exit" and (arg is None or not arg.isdigit() or int(arg) > 255):
        raise FaultSpecError(f"exit needs an integer code 0..255, e.g. exit(3), got {arg!r} at {where}")
    if name == "kill" and not isinstance(action.signal, signal.Signals):
        raise FaultSpecError(f"kill needs a signal name, e.g. kill(SIGKILL) or kill(SIGSTOP), got {arg!r} at {where}")
    if name == "sleep":
        try:
            seconds = float(arg or "")
        except ValueError:
            seconds = -1.0
        if not (math.isfinite(seconds) and 0 <= seconds <= MAX_SLEEP_S):
            raise FaultSpecError(f"sleep needs seconds, e.g. sleep(0.5), got {arg!r} (finite, 0..{MAX_SLEEP_S:g}) "
                                 f"at {where}")
