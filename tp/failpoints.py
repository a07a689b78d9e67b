"""Failpoints: dotted sites written where they fire, armed by ``TP_FAILPOINTS``.

Spec (docs/CONTRACT.md §4): ``;``-separated ``SITE=ACTION[(ARG)][@TRIGGER,...]``
with actions ``raise``, ``exit(CODE)``, ``kill(SIGNAME)``, ``hang``,
``sleep(SECONDS)``, ``corrupt[(ARG)]``, ``flip``, ``set(VALUE)`` and triggers
``rank=R``, ``chunk=C``, ``call=K``, ``hit=N``.

Disarmed cost: ``failpoint()`` returns after one module-level boolean check.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from contract import faults as grammar
from tp import log

ACTIONS = ("raise", "exit", "kill", "hang", "sleep", "corrupt", "flip", "set")


@dataclass(frozen=True, kw_only=True)
class Site:
    """One failpoint site: what it is and what can be broken there (``--list-failpoints``, CONTRACT §4)."""

    description: str
    """Where it fires and what its data actions do, for people."""
    ranks: str
    """Which ranks pass it: ``driver``, ``workers`` or ``any``."""
    chunked: bool = True
    """False for a site passed once, before chunk 0 (handshake, weight loading)."""
    first_chunk: int | None = None
    """The first chunk where the site is passed, where that is not 0."""
    data: tuple[dict, ...] = ()
    """The data actions that mean something here, beyond every site's process actions: each with its arguments
    (a list: the values worth trying, None = no argument; a word: its type) and the first chunk where it does
    what it says ("cut": the first hard cut's chunk)."""


# Every site, once: the registry the grammar checks an armed spec against and --list-failpoints prints.
_PROCESS = ({"action": "raise"}, {"action": "exit", "args": ["3", "0"]}, {"action": "kill", "args": ["SIGKILL", "SIGSTOP"]},
            {"action": "hang"}, {"action": "sleep", "args": "seconds"})
REGISTRY: dict[str, Site] = {
    "driver.meta": Site(
        description="the driver, the meta dict before encoding (corrupt(callable|tensor|nan) adds an unencodable "
                    "value)",
        ranks="driver", data=({"action": "corrupt", "args": ["callable", "tensor", "nan"]},)),
    "driver.latents": Site(
        description="the driver, the latents tensor before the envelope is built (set(DTYPE) casts it late)",
        ranks="driver", data=({"action": "set", "args": ["uint16"]},)),
    "driver.plan": Site(
        description="the driver, the plan dict (corrupt: expected generator calls + 1)",
        ranks="driver", data=({"action": "corrupt", "args": ["1", "-1"]},)),
    "driver.override": Site(
        description="the driver, context_frames_override (set(none) drops it while recompute is on)",
        ranks="driver", first_chunk=1, data=({"action": "set", "args": ["none"]},)),
    "driver.aux": Site(
        description="the driver, attach an ad-hoc tensor outside the envelope schema (flip)",
        ranks="driver", data=({"action": "flip"},)),
    "driver.idle": Site(
        description="the driver, between chunks (kill/hang here is 'mid-idle')",
        ranks="driver"),
    "driver.late_result": Site(
        description="the driver, a result of the old cache epoch arrives after a hard cut (flip)",
        ranks="driver", data=({"action": "flip", "first_chunk": "cut"},)),
    "envelope.before_header": Site(
        description="sender, after preflight, before the header goes out",
        ranks="driver"),
    "envelope.after_header": Site(
        description="sender, after the header went out, before meta",
        ranks="driver"),
    "envelope.after_recv": Site(
        description="receiver, the received latents (corrupt perturbs element 0, corrupt(last) the last one)",
        ranks="workers", data=({"action": "corrupt", "args": [None, "last"]},)),
    "worker.skip_recompute": Site(
        description="worker, the recompute call decision (flip skips it)",
        ranks="workers", data=({"action": "flip"},)),
    "worker.stale_override": Site(
        description="worker, keeps using the previous override instead of the new one (flip)",
        ranks="workers", data=({"action": "flip"},)),
    "worker.replay": Site(
        description="worker, runs the last envelope before the latest hard cut again instead of the received one "
                    "(flip: a late duplicate of the old cache epoch)",
        ranks="workers", data=({"action": "flip", "first_chunk": "cut"},)),
    "generator.call": Site(
        description="any rank, at the start of each generator call (kill/hang here is 'mid-collective')",
        ranks="any"),
    "model.shard": Site(
        description="any rank, its weight shard after loading (corrupt perturbs one weight)",
        ranks="any", chunked=False, data=({"action": "corrupt", "args": [None]},)),
    "handshake.publish": Site(
        description="any rank, its handshake record before publishing",
        ranks="any", chunked=False),
    "store.connect": Site(
        description="a rank that connects to the store as a client, just before (sleep here starts it late)",
        ranks="any", chunked=False),
}
SITES: dict[str, str] = {name: site.description for name, site in REGISTRY.items()}
"""Site name -> description: the registry as the grammar reads it."""


def declared(site: str, *, reset_every: int = 4) -> dict:
    """The ``--list-failpoints`` line of ``site``: description, actions with their arguments, ranks, chunked, and
    ``first_chunk`` (site or action) where it is not 0; "cut" is ``reset_every``, the first hard cut after chunk 0."""
    def chunk(value):
        return reset_every if value == "cut" else value

    spec = REGISTRY[site]
    actions = [{k: chunk(v) if k == "first_chunk" else v for k, v in a.items()} for a in (*_PROCESS, *spec.data)]
    line = {"site": site, "description": spec.description, "actions": actions, "ranks": spec.ranks,
            "chunked": spec.chunked}
    if spec.first_chunk is not None:
        line["first_chunk"] = spec.first_chunk
    return line


TRIGGERS = {"rank": 0, "chunk": 0, "call": 0, "hit": 1}
"""Each trigger and its least value (``hit`` counts matches from 1)."""
MAX_SLEEP_S = grammar.MAX_SLEEP_S
ARMED = False
"""True iff any failpoint is armed; the only cost of a disarmed site."""

FailpointError = grammar.FaultSpecError
"""A malformed ``TP_FAILPOINTS`` spec or an unknown site (the grammar's error: one grammar, one error)."""


class InjectedFault(RuntimeError):
    """Raised by the ``raise`` action."""


Armed = grammar.Entry
"""One armed failpoint: ``site``, a typed ``action`` (``action.name``, ``action.arg``), ``triggers`` (rank / chunk /
call / hit; a missing key matches anything) and ``matches`` (for ``hit``): the grammar's ``Entry``."""


_armed: dict[str, list[Armed]] = {}
_lock = threading.Lock()


def parse(spec: str, *, where: str = "TP_FAILPOINTS", sites: dict[str, str] | None = None) -> list[Armed]:
    """Parse a spec with the contract's grammar (``contract.faults``) against this TP path's sites, actions and
    argument rules; errors name ``where`` and list the valid choices.

    ``sites`` defaults to this TP path's ``SITES``; a stand-in TP path passes its own, so one grammar
    holds for both.
    """
    return grammar.parse(spec, where=where, triggers=TRIGGERS, sites=SITES if sites is None else sites,
                         actions=ACTIONS, check_arg=_check_arg)


def _check_arg(action: grammar.Action, where: str) -> None:
    """This TP path's own argument rules (the common ones are the grammar's)."""
    name, arg = action.name, action.arg
    if name == "set" and not arg:
        raise FailpointError(f"set needs a value, e.g. set(none), at {where}")
    if name == "corrupt" and arg not in (None, "callable", "tensor", "nan", "last"):
        try:
            float(arg)
        except ValueError:
            raise FailpointError(f"corrupt takes callable|tensor|nan|last or a number, got {arg!r} at {where}") from None


def arm(spec: str, *, where: str = "TP_FAILPOINTS") -> None:
    """Parse ``spec`` and arm it (replacing what was armed); a bad spec arms nothing."""
    install(parse(spec, where=where))


def install(entries: Iterable[Armed]) -> None:
    """Arm parsed entries (``RankConfig.failpoints``), replacing what was armed."""
    global ARMED
    with _lock:
        _armed.clear()
        for entry in entries:
            _armed.setdefault(entry.site, []).append(entry)
        ARMED = bool(_armed)


def failpoint(site: str, value: object = None, **ctx: object) -> object:
    """Fire ``site`` if armed and its triggers match; return ``value`` (maybe changed)."""
    if not ARMED:
        return value
    return _fire(site, value, ctx)


def _fire(site: str, value: object, ctx: dict) -> object:
    if site not in SITES:
        raise FailpointError(f"no such failpoint {site!r}; known: {', '.join(sorted(SITES))}")
    for entry in _armed.get(site, ()):
        if not _matches(entry, ctx):
            continue
        log.fault(site, entry.describe(), ctx)
        value = _act(entry, value)
    return value


def _matches(entry: Armed, ctx: dict) -> bool:
    names = {"rank": "rank", "chunk": "chunk", "call": "call_id"}
    for key, ctx_key in names.items():
        if key in entry.triggers and ctx.get(ctx_key) != entry.triggers[key]:
            return False
    with _lock:
        entry.matches += 1
        nth = entry.matches
    return "hit" not in entry.triggers or entry.triggers["hit"] == nth


def _act(entry: Armed, value: object) -> object:
    action, arg = entry.action.name, entry.action.arg
    if action == "raise":
        raise InjectedFault(f"failpoint {entry.site} raised")
    if action == "exit":
        os._exit(int(arg))
    if action == "kill":
        os.kill(os.getpid(), getattr(signal, arg))
        return value
    if action == "hang":
        threading.Event().wait()
    if action == "sleep":
        # The injected straggler: a deliberate delay, not synchronisation.
        time.sleep(float(arg))
        return value
    if action == "flip":
        return not value
    if action == "set":
        return _parse_value(arg)
    return corrupt(value, arg)


def _parse_value(arg: str) -> object:
    if arg.lower() == "none":
        return None
    try:
        return json.loads(arg)
    except ValueError:
        return arg


def corrupt(value: object, arg: str | None) -> object:
    """Type-directed corruption: small enough to pass shape checks, big enough to matter."""
    import torch

    if isinstance(value, dict):
        bad = {"callable": lambda: None, "tensor": torch.zeros(1), "nan": float("nan")}
        kind = arg or "callable"
        if kind not in bad:
            raise FailpointError(f"corrupt({kind}) on a dict; known: {', '.join(bad)}")
        return {**value, "callback" if kind == "callable" else f"bad_{kind}": bad[kind]}
    if isinstance(value, torch.Tensor):
        # Element 0 by default; ``last`` reaches the end of the buffer, where a digest of a prefix would not look.
        out = value.clone()
        index = -1 if arg == "last" else 0
        out.view(-1)[index] += 1e-3 if arg in (None, "last") else float(arg)
        return out
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + int(arg or 1)
    raise FailpointError(f"cannot corrupt a {type(value).__name__}")
