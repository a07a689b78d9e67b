"""Named guardrails, all on by default, switchable with ``TP_GUARDRAILS``.

``all``, ``none``, ``all,-preflight``, ``none,+watchdog``: a base set
followed by ``-name`` / ``+name`` edits. Scenarios turn single guardrails off
to prove that the guardrail, not luck, prevents their failure mode.
"""

from __future__ import annotations

NAMES: dict[str, str] = {
    "preflight": "validate, encode, dtype-map and materialise everything before the header",
    "poison_on_post_header_error": "an error after a header was sent is fatal for the whole group",
    "lockstep": "workers run exactly the broadcast plan; observed calls == expected",
    "handshake": "init handshake: versions, plan/role, env parity, weight fingerprints",
    "digest": "input and output digests compared across ranks",
    "clear_after_read": "override tensors are consumed once; absent never means 'reuse'",
    "epoch_fence": "work from an older cache epoch is dropped, never delivered",
    "watchdog": "heartbeats, abort key and progress deadline: a rank learns of a fatal error anywhere",
    "startup": "start-up is one phase with one deadline: a lost or foreign store, a rank claimed twice, a peer gone are named at once",
}


class GuardrailError(ValueError):
    """A malformed ``TP_GUARDRAILS`` spec."""


def parse(spec: str | None, *, where: str = "TP_GUARDRAILS") -> frozenset[str]:
    """The set of guardrails that are on."""
    parts = [p.strip() for p in (spec or "all").split(",") if p.strip()]
    if not parts:
        return frozenset(NAMES)
    base, edits = parts[0], parts[1:]
    if base in ("all", "none"):
        on = set(NAMES) if base == "all" else set()
    elif base[:1] in ("+", "-"):
        on, edits = set(NAMES), parts
    else:
        on, edits = set(), ["+" + p if p[:1] not in ("+", "-") else p for p in parts]
    for edit in edits:
        sign, name = edit[:1], edit[1:]
        if sign not in ("+", "-"):
            raise GuardrailError(f"invalid guardrail edit {edit!r} in {where} (value {spec!r}); "
                                 f"write all|none followed by -name or +name")
        if name not in NAMES:
            raise GuardrailError(f"unknown guardrail {name!r} in {where}; known: {', '.join(NAMES)}")
        (on.add if sign == "+" else on.discard)(name)
    return frozenset(on)


def describe(on: frozenset[str]) -> str:
    """The shortest spec that parses back to ``on`` (``all``, ``none``, ``all,-x`` or ``none,+x``)."""
    off = [name for name in NAMES if name not in on]
    if not off:
        return "all"
    if not on:
        return "none"
    minus = "all," + ",".join("-" + n for n in off)
    plus = "none," + ",".join("+" + n for n in NAMES if n in on)
    return minus if len(off) <= len(on) else plus
