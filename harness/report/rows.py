"""What a run's result rows say in a table: shared by the Markdown summary, the HTML report and the terminal."""

from __future__ import annotations

import re

from harness.declare.scenario import guardrail_off


def guardrail_table(rows: list[dict]) -> dict[str, dict[str, list[str]]]:
    """Guardrail -> {"guarded": [...], "off": [...]}: the scenarios that proved it."""
    table: dict[str, dict[str, list[str]]] = {}
    for row in rows:
        if row["proves"] in ("control", "adhoc") or row["guardrails"] is None:
            continue
        for name in row["proves"].split("+"):
            side = "off" if guardrail_off(row["guardrails"], name) else "guarded"
            entry = table.setdefault(name, {"guarded": [], "off": []})
            entry[side].append(f"{row['id']} (ws{row['world_size']}, {row['verdict']})")
    return dict(sorted(table.items()))


def guardrails_text(row: dict) -> str:
    """The guardrails a run had: ``TP_GUARDRAILS``, or an engine's own, which the harness neither sets nor knows."""
    return "the engine's own" if row["guardrails"] is None else str(row["guardrails"])


def ttc_text(row: dict) -> str:
    """Time to crash for a table: only a crash has one (JSON keeps every run's time to last exit)."""
    if row["observed"] != "CRASHED" or row["time_to_crash_s"] is None:
        return "-"
    return f"{row['time_to_crash_s']:.3f} s"


def shorten(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut at a word boundary and ending with "…" only when it was cut."""
    if len(text) <= width:
        return text
    head = text[:width - 1]
    if not text[width - 1].isspace():  # the cut falls inside a word: end at the word before it
        head = re.sub(r"\S*$", "", head).rstrip() or head  # one word longer than the room is cut where it must be
    return head.rstrip() + "…"
