"""report.html: a run's summary and a per-rank timeline per scenario, in one self-contained page.

No script, no network: tables, ``<details>`` sections and inline SVG, every value escaped.
Timelines come from the ``mono`` stamps in the rank logs (one host's ``time.monotonic()``)
and are drawn relative to the earliest TP-FAULT, or to the first init when no fault fired:
the same anchor the deadline and time to crash count from.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from urllib.parse import quote

from harness.declare.verdicts import Verdict
from harness.judge import explain
from harness.judge.result import RESULT_SCHEMA
from harness.report import delta
from harness.report.rows import guardrail_table, guardrails_text, ttc_text
from harness.supervise import logs

_NEEDED = ("id", "title", "proves", "guardrails", "world_size", "deadline_s", "expected", "observed",
           "verdict", "reason", "time_to_crash_s", "ranks")
_COLOURS = {"collective": "#2563eb", "init": "#15803d", "chunk": "#64748b", "fault": "#d97706", "fatal": "#b91c1c",
            "exit": "#111827"}
_W, _LEFT, _RIGHT, _LANE, _TOP = 1000, 130, 220, 60, 44
_ORDER = ("exit", "chunk", "init", "collective", "fault", "fatal")  # drawn in this order: a fatal X stays visible on its exit
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#111827}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #cbd5e1;padding:3px 8px;text-align:left}
th{background:#f1f5f9}tr.fail td,tr.error td{background:#fee2e2}.PASS{color:#15803d}.FAIL,.ERROR,.INCOMPLETE{color:#b91c1c}
td.num{text-align:right;font-variant-numeric:tabular-nums}details{margin:.6em 0;border:1px solid #cbd5e1;padding:.4em .8em}
summary{cursor:pointer;font-weight:600}dl.reason{display:grid;grid-template-columns:max-content auto;gap:2px 1em;max-width:80em}
dl.reason dt{font-weight:600}dl.reason dd{margin:0}pre{font-size:12px;overflow-x:auto;background:#f8fafc;padding:.5em}p.reason{max-width:75em}code{font-size:12px}
svg text{font:11px system-ui,sans-serif}.legend span{margin-right:1.2em}
"""


@dataclass
class _Mark:
    t: float
    kind: str
    label: str = ""
    tip: str = ""


@dataclass
class _Lane:
    name: str
    start: float | None = None
    end: float | None = None
    approx_end: bool = False
    marks: list[_Mark] = field(default_factory=list)


def write_html(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from every ``*/result.json`` and rank log; return its path."""
    docs, errors = [], []
    for path in sorted(run_dir.glob("*/result.json")):
        try:
            docs.append((_load(path), path.parent))
        except (OSError, ValueError, TypeError) as exc:
            errors.append((path.parent.name, f"{path.name}: {exc}"))
    docs.sort(key=lambda dp: (str(dp[0]["id"]), dp[0]["world_size"], dp[1].name))
    out = run_dir / "report.html"
    out.write_text(_page(run_dir, docs, errors), encoding="utf-8")
    return out


def _load(path: Path) -> dict:
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("schema") != RESULT_SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"result schema {found!r}, expected {RESULT_SCHEMA}")
    missing = [k for k in _NEEDED if k not in doc]
    if missing:
        raise ValueError(f"missing keys {', '.join(missing)}")
    return doc


def _anchor_id(where: Path) -> str:
    return "s-" + re.sub(r"[^A-Za-z0-9_-]", "_", where.name)


def _summary(run_dir: Path) -> dict:
    try:
        doc = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _delta(d: object) -> str:
    """The delta against the last green run (``harness.report.delta``), at the top of the page."""
    if not isinstance(d, dict) or not d:
        return ""
    head, *rest = delta.lines(d)
    cls = "FAIL" if delta.regressed(d) else ""  # a CSS class, not a verdict
    items = "".join(f"<li>{escape(x.strip())}</li>" for x in rest)
    return (f'<p id="delta">Baseline delta: <b class="{cls}">{escape(head)}</b></p>'
            + (f"<ul>{items}</ul>" if items else ""))


def _page(run_dir: Path, docs: list[tuple[dict, Path]], errors: list[tuple[str, str]]) -> str:
    passed = sum(d["verdict"] == Verdict.PASS for d, _ in docs)
    failed = len(docs) - passed + len(errors)
    overall = Verdict.PASS if docs and not failed else Verdict.FAIL
    summary = _summary(run_dir)
    if summary.get("overall") == Verdict.INCOMPLETE:  # a partial run is never green, whatever ran
        overall = Verdict.INCOMPLETE
    e = escape
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>tp-breakit report {e(run_dir.name)}</title><style>{_CSS}</style></head><body>",
           f"<h1>tp-breakit report {e(run_dir.name)}</h1>",
           f'<p>Overall: <b class="{overall}">{overall}</b> ({passed} passed, '
           f"{failed} failed) &middot; written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
           _delta(summary.get("delta")),
           "<table><tr><th>scenario</th><th>title</th><th>expected</th><th>observed</th><th>time to crash</th>"
           "<th>deadline</th><th>guardrails</th><th>verdict</th></tr>"]
    for d, where in docs:
        cls = "" if d["verdict"] == Verdict.PASS else ' class="fail"'
        ttc = ttc_text({"observed": d["observed"], "time_to_crash_s": d["time_to_crash_s"]})
        out.append(f'<tr{cls}><td><a href="#{_anchor_id(where)}">{e(str(d["id"]))}</a> (ws{e(str(d["world_size"]))})'
                   f"</td><td>{e(str(d['title']))}</td><td>{e('|'.join(map(str, d['expected'])))}</td>"
                   f"<td>{e(str(d['observed']))}</td><td class=num>{e(ttc)}</td>"
                   f"<td class=num>{e(_secs(d['deadline_s']))}</td><td>{e(guardrails_text(d))}</td>"
                   f'<td class="{e(str(d["verdict"]))}">{e(str(d["verdict"]))}</td></tr>')
    for name, message in errors:
        out.append(f'<tr class="error"><td>{e(name)}</td><td colspan=6>unreadable result: {e(message)}</td>'
                   '<td class="ERROR">ERROR</td></tr>')
    out += ["</table>", "<h2>Invariants &amp; guardrails</h2>",
            "<table><tr><th>guardrail</th><th>guarded proofs (must crash cleanly)</th>"
            "<th>guardrail-off proofs (hazard is real)</th></tr>"]
    rows = [{"id": d["id"], "world_size": d["world_size"], "proves": d["proves"],
             "guardrails": d["guardrails"], "verdict": d["verdict"]} for d, _ in docs]
    for name, sides in guardrail_table(rows).items():
        cells = "".join(f"<td>{e(', '.join(sides[k]) or '-')}</td>" for k in ("guarded", "off"))
        out.append(f"<tr><td>{e(name)}</td>{cells}</tr>")
    out += ["</table>", "<h2>Scenarios</h2>", _legend()]
    out += [_section(d, where) for d, where in docs]
    out += [f'<details open><summary class="ERROR">{e(name)}: ERROR</summary><p>{e(message)}</p></details>'
            for name, message in errors]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _section(d: dict, where: Path) -> str:
    e = escape
    is_open = "" if d["verdict"] == Verdict.PASS else " open"
    try:
        timeline = _timeline(*_lanes(d, where), float(d["deadline_s"]))
    except (ValueError, TypeError, KeyError) as exc:
        timeline = f"<p>timeline unavailable: {e(str(exc))}</p>"
    return (f'<details id="{_anchor_id(where)}"{is_open}><summary>{e(str(d["id"]))} (ws{e(str(d["world_size"]))}) '
            f'&middot; <span class="{e(str(d["verdict"]))}">{e(str(d["verdict"]))}</span> &middot; '
            f'{e(str(d["title"]))}</summary>{_reason(d)}{timeline}{_stacks(d)}{_logs(d, where)}</details>')


def _reason(d: dict) -> str:
    parts = d.get("reason_parts")
    if isinstance(parts, dict) and parts.get("headline"):
        return explain.html(parts)
    return f'<p class="reason">{escape(str(d["reason"]))}</p>'


def _stacks(d: dict) -> str:
    """Each hung rank's stacks (dumped on SIGUSR1), collapsed; or why a rank has none."""
    out = []
    for r in (r for r in d["ranks"] if isinstance(r, dict)):
        if r.get("stack"):
            out.append(f'<details class="stack"><summary>stack of rank {escape(str(r.get("rank")))} '
                       f'(pid {escape(str(r.get("pid")))})</summary><pre>{escape(str(r["stack"]))}</pre></details>')
        elif r.get("stack_note"):
            out.append(f"<p>no stack for rank {escape(str(r.get('rank')))}: {escape(str(r['stack_note']))}</p>")
    return "".join(out)


def _logs(d: dict, where: Path) -> str:
    """Links to every rank's log, relative to report.html (one directory up from the scenario's)."""
    links = []
    for r in range(int(d["world_size"])):
        name = f"rank{r}.log"
        if (where / name).exists():
            links.append(f'<a href="{escape(quote(where.name))}/{name}">{name}</a>')
    return f"<p>Logs in <code>{escape(where.name)}/</code>: {' '.join(links) or 'none written'}</p>"


def _lanes(d: dict, where: Path) -> tuple[list[_Lane], str]:
    """One lane per rank, times in seconds from the anchor; no lanes when no log line has a ``mono``."""
    ws = int(d["world_size"])
    lines = {r: logs.contract_lines(logs.read_text(where / f"rank{r}.log")) for r in range(ws)}
    faults = [ln.mono for ls in lines.values() for ln in ls if ln.kind == "TP-FAULT" and ln.mono is not None]
    inits = [ln.mono for ls in lines.values() for ln in ls if ln.event == "init" and ln.mono is not None]
    if not faults and not inits:
        return [], ""
    origin, anchor = (min(faults), "TP-FAULT") if faults else (min(inits), "init")
    info = {r.get("rank"): r for r in d["ranks"] if isinstance(r, dict)}
    lanes = []
    for r in range(ws):
        lane, rank = _Lane(name=f"rank {r}"), info.get(r, {})
        for ln in lines[r]:
            if ln.mono is None:
                continue
            t = ln.mono - origin
            lane.start = t if lane.start is None else min(lane.start, t)
            if ln.event == "init":
                lane.name += f" · {ln.fields.get('role', '')}".rstrip(" ·")
                lane.marks.append(_Mark(t, "init", "init", f"init at {_num(t)} s"))
            elif ln.event == "chunk":
                lane.marks.append(_Mark(t, "chunk", "", f"chunk {ln.fields.get('chunk')} ends at {_num(t)} s: "
                                        f"{ln.fields.get('calls')} calls, {ln.fields.get('latency_ms')} ms"))
            elif ln.event == "exit":
                lane.end = t
            elif ln.kind == "TP-FAULT":
                lane.marks.append(_Mark(t, "fault", str(ln.fields.get("site", "TP-FAULT")), ln.raw))
            elif ln.kind == "TP-FATAL":
                lane.marks.append(_Mark(t, "fatal", str(ln.fields.get("code", "TP-FATAL")), ln.raw))
        lane.marks.extend(_divergence_marks(d, r, origin))
        if lane.start is None:
            lane.name += " (no log)"
            lanes.append(lane)
            continue
        last = max([lane.start, *(m.t for m in lane.marks)])
        tip = ""
        if lane.end is None:
            lane.approx_end = True
            if d["observed"] == "HUNG" and rank.get("reaped"):
                lane.end, tip = max(float(d["deadline_s"]), last), "exit not logged: reaped after the deadline"
            elif d["time_to_crash_s"] is not None and d.get("anchor", anchor) == anchor:
                lane.end, tip = max(float(d["time_to_crash_s"]), last), "exit not logged: at most the last exit"
            else:
                lane.end, tip = last, "exit not logged: drawn at its last logged line"
        label = str(rank.get("exit", "exit ?")) + (", reaped" if rank.get("reaped") else "")
        label += " (frozen)" if rank.get("frozen") else ""
        lane.marks.append(_Mark(lane.end, "exit", ("≈ " if lane.approx_end else "") + label,
                                f"{label} at {_num(lane.end)} s" + (f"; {tip}" if tip else "")))
        lanes.append(lane)
    return lanes, anchor


def _divergence_marks(d: dict, rank: int, origin: float) -> list[_Mark]:
    """The first divergent collective (flight traces) on this rank's lane: where it entered, or its last exit."""
    div = d.get("divergence") or {}
    t = (div.get("marks") or {}).get(str(rank))
    if t is None:
        return []
    side = (div.get("sides") or {}).get(str(rank), "")
    return [_Mark(float(t) - origin, "collective", f"seq {div.get('seq')}", f"first divergent collective: {side}")]


def _timeline(lanes: list[_Lane], anchor: str, deadline: float) -> str:
    """The whole run; then, when the crash is a sliver of it, the same lanes from the fault to the last exit."""
    if not lanes:
        return "<p>no timeline: no rank log line carries a <code>mono</code> stamp</p>"
    times = [0.0] + [t for ln in lanes for t in (ln.start, ln.end) if t is not None]
    lo, hi = min(times), max(times)
    if deadline <= hi + 0.25 * max(hi - lo, 1e-3):
        hi = max(hi, deadline)
    out = _svg(lanes, anchor, deadline, lo, hi)
    if anchor == "TP-FAULT" and 0 < max(times) < 0.2 * (hi - lo):
        width = max(times)
        out += (f"<p>Zoom: {escape(anchor)} to the last exit</p>"
                + _svg(lanes, anchor, deadline, -0.15 * width, width))
    return out


def _svg(lanes: list[_Lane], anchor: str, deadline: float, lo: float, hi: float) -> str:
    span = max(hi - lo, 1e-4)
    lo, hi = lo - 0.02 * span, hi + 0.02 * span
    plot = _W - _LEFT - _RIGHT

    def x(t: float) -> float:
        return _LEFT + (min(max(t, lo), hi) - lo) / (hi - lo) * plot

    height = _TOP + _LANE * len(lanes) + 34
    axis_y = height - 26
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" role="img" '
           f'aria-label="per-rank timeline">', f'<rect width="{_W}" height="{height}" fill="#fff"/>']
    step = _step(hi - lo)
    for k in range(math.ceil(lo / step), math.floor(hi / step) + 1):
        tx = x(k * step)
        out.append(f'<line x1="{tx:.1f}" y1="{_TOP - 6}" x2="{tx:.1f}" y2="{axis_y}" stroke="#e2e8f0"/>'
                   f'<text x="{tx:.1f}" y="{axis_y + 14}" text-anchor="middle">{escape(_num(k * step, step))} s</text>')
    out.append(f'<line x1="{x(0):.1f}" y1="{_TOP - 20}" x2="{x(0):.1f}" y2="{axis_y}" stroke="#94a3b8"/>'
               f'<text x="{x(0) + 3:.1f}" y="{_TOP - 10}">{escape(anchor)} = 0</text>')
    on_scale = lo <= deadline <= hi
    dx = x(deadline) if on_scale else _W - 8
    out.append(f'<line x1="{dx:.1f}" y1="{_TOP - 34}" x2="{dx:.1f}" y2="{axis_y}" stroke="#7c3aed" '
               f'stroke-dasharray="5,3"><title>deadline {escape(_secs(deadline))} after {escape(anchor)}</title></line>'
               f'<text x="{dx - 3:.1f}" y="{_TOP - 24}" text-anchor="end" fill="#7c3aed">deadline '
               f'{"" if on_scale else "(off scale) "}+{escape(_secs(deadline))}</text>')
    for i, lane in enumerate(lanes):
        y = _TOP + _LANE * i + _LANE // 2
        out.append(f'<text x="8" y="{y + 4}">{escape(lane.name)}</text>')
        if lane.start is None or lane.end is None or lane.end < lo or lane.start > hi:
            continue
        dash = ' stroke-dasharray="4,3"' if lane.approx_end else ""
        out.append(f'<line x1="{x(lane.start):.1f}" y1="{y}" x2="{x(lane.end):.1f}" y2="{y}" '
                   f'stroke="#94a3b8" stroke-width="3"{dash}/>')
        taken: dict[int, list[tuple[float, float]]] = {}
        for m in sorted(lane.marks, key=lambda m: (_ORDER.index(m.kind), m.t)):
            if lo <= m.t <= hi:
                out.append(_mark(m, x(m.t), y, taken))
    out.append("</svg>")
    return "\n".join(out)


def _mark(m: _Mark, mx: float, y: int, taken: dict[int, list[tuple[float, float]]]) -> str:
    """One mark, its tooltip and its label; labels take the first free row on their side."""
    c, tip = _COLOURS[m.kind], f"<title>{escape(m.tip)}</title>"
    shape = {
        "init": f'<circle cx="{mx:.1f}" cy="{y}" r="4" fill="{c}">{tip}</circle>',
        "collective": f'<circle cx="{mx:.1f}" cy="{y}" r="5" fill="none" stroke="{c}" stroke-width="2.5">{tip}</circle>',
        "chunk": f'<line x1="{mx:.1f}" y1="{y - 6}" x2="{mx:.1f}" y2="{y + 6}" stroke="{c}" stroke-width="2">{tip}</line>',
        "fault": f'<path d="M{mx:.1f} {y - 7}l6 7-6 7-6-7z" fill="{c}">{tip}</path>',
        "fatal": f'<path d="M{mx - 5:.1f} {y - 5}l10 10m0-10l-10 10" stroke="{c}" stroke-width="2.5">{tip}</path>',
        "exit": f'<rect x="{mx - 2:.1f}" y="{y - 9}" width="4" height="18" fill="{c}">{tip}</rect>',
    }[m.kind]
    if not m.label:
        return shape
    width = 6.3 * len(m.label)
    if m.kind == "exit":
        return shape + f'<text x="{mx + 8:.1f}" y="{y + 4}">{escape(m.label)}</text>'
    rows = (-1, -2) if m.kind in ("init", "fault", "collective") else (1, 2)
    left = mx - width / 2
    row = next((r for r in rows if all(b < left or a > left + width for a, b in taken.get(r, []))), rows[-1])
    taken.setdefault(row, []).append((left, left + width))
    ty = y + (row * 13 + (3 if row > 0 else -2))
    return shape + f'<text x="{mx:.1f}" y="{ty}" text-anchor="middle" fill="{c}">{escape(m.label)}</text>'


def _legend() -> str:
    names = {"collective": "first divergent collective (flight trace)", "init": "init", "chunk": "chunk end",
             "fault": "TP-FAULT (site)", "fatal": "TP-FATAL (code)",
             "exit": "exit (≈ when not logged)"}
    items = "".join(f'<span style="color:{_COLOURS[k]}">&#9632; {escape(v)}</span>' for k, v in names.items())
    return (f'<p class="legend">{items}<span style="color:#7c3aed">&#9482; deadline</span> '
            "Times are seconds from the first TP-FAULT (or the first init); hover a mark for its log line.</p>")


def _step(span: float) -> float:
    """A 1-2-5 tick step giving at most about seven ticks over ``span``."""
    base = 10 ** math.floor(math.log10(span / 7))
    return next(base * k for k in (1, 2, 5, 10) if span / (base * k) <= 7)


def _secs(value: object) -> str:
    """A deadline as ``8 s``, the way summary.md writes it."""
    try:
        return f"{float(value):g} s"
    except (TypeError, ValueError):
        return f"{value} s"


def _num(value: float, step: float | None = None) -> str:
    """Seconds with as many decimals as the tick step (or 3) needs; never ``-0``."""
    places = 3 if step is None else max(0, -math.floor(math.log10(step) + 1e-9))
    text = f"{float(value):.{places}f}"
    return "0" if float(text) == 0 else text
