"""A verdict's reason, structured, and the three ways reports show it.

``Result.reason_parts`` holds the reason as data: the headline (expected vs
observed, time to crash), each rank's exit, the root cause, notes (why the run
was classed so, ``tp/abort``, stacks), signatures matched and missing, and the
verdict. The pytest message and the CLI print it as one paragraph; summary.md
and report.html show it as a labelled list. Values are never Python reprs.
"""

from __future__ import annotations

from html import escape


def fields(value: object) -> str:
    """``rank=0 code=PEER_LOST``: a mapping as ``key=value`` pairs (anything else as text)."""
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _items(parts: dict) -> list[tuple[str, str]]:
    """(label, text) pairs in reading order, empty ones left out."""
    matched, missing = parts.get("signatures_matched") or [], parts.get("signatures_missing") or []
    verdict = parts.get("verdict", "")
    if parts.get("verdict_why"):
        verdict += f": {parts['verdict_why']}"
    items = [
        ("never fired", parts.get("first") or ""),
        ("outcome", parts.get("headline", "")),
        ("ranks", ", ".join(parts.get("ranks") or [])),
        ("root cause", parts.get("root_cause") or ""),
        *(("note", n) for n in parts.get("notes") or []),
        *(("signature check", e) for e in parts.get("signature_errors") or []),
        ("signatures matched", ", ".join(matched)),
        ("signatures missing", ", ".join(missing)),
        ("verdict", verdict),
    ]
    return [(label, text) for label, text in items if text]


def paragraph(parts: dict) -> str:
    """One readable paragraph (the pytest message, the CLI line, summary rows)."""
    sentences = [parts["first"]] if parts.get("first") else []
    sentences.append(parts["headline"] + ": " + ", ".join(parts["ranks"]))
    if parts.get("root_cause"):
        sentences.append(f"root cause: {parts['root_cause']}")
    sentences += parts.get("notes") or []
    sentences += parts.get("signature_errors") or []
    if parts.get("signatures_missing"):
        sentences.append("signatures missing: " + ", ".join(parts["signatures_missing"]))
    if parts.get("signatures_matched"):
        sentences.append("signatures matched: " + ", ".join(parts["signatures_matched"]))
    if parts.get("verdict_why"):
        sentences.append(f"verdict FAIL: {parts['verdict_why']}")
    return "; ".join(sentences) + "."


def markdown(parts: dict) -> list[str]:
    """A bulleted list for summary.md."""
    return [f"* **{label}**: {text.replace('|', chr(92) + '|')}" for label, text in _items(parts)]


def html(parts: dict) -> str:
    """A definition list for report.html (every value escaped)."""
    rows = "".join(f"<dt>{escape(label)}</dt><dd>{escape(text)}</dd>" for label, text in _items(parts))
    return f'<dl class="reason">{rows}</dl>'
