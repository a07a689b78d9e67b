"""Flight traces (docs/CONTRACT.md §6): read them, diff them, name the first divergent collective.

Each rank's trace numbers its collectives from 0 (``seq``); on healthy ranks
the n-th collective is the same everywhere. The first ``seq`` at which ranks
disagree is where a hang or a desync starts: different op, shape, dtype or
root; a rank that never entered it while a peer did; a rank that entered and
never left. A TP path that writes no trace gets no line, nothing else changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = "tp-flight/1"
TRACE_PREFIX = "TP-TRACE "


def flight_path(log_dir: Path, rank: int) -> Path:
    return Path(log_dir) / f"flight_rank{rank}.json"


def load(log_dir: Path, rank: int, log_text: str = "") -> dict | None:
    """This rank's newest trace: ``flight_rank{R}.json``, else its log's last ``TP-TRACE`` line, else None."""
    path = flight_path(log_dir, rank)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    if doc is None:
        for line in reversed(log_text.splitlines()):
            if line.startswith(TRACE_PREFIX):
                try:
                    doc = json.loads(line[len(TRACE_PREFIX):])
                except ValueError:
                    continue
                break
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("entries"), list):
        return None
    return doc


def load_all(log_dir: Path, world_size: int, texts: dict[int, str] | None = None) -> dict[int, dict]:
    texts = texts or {}
    found = {r: load(log_dir, r, texts.get(r, "")) for r in range(world_size)}
    return {r: doc for r, doc in found.items() if doc is not None}


@dataclass(kw_only=True)
class Divergence:
    """The first collective the ranks disagree on."""

    seq: int
    """The disagreeing sequence number."""
    kind: str
    """``mismatch`` (op/shape/dtype/root), ``never entered`` or ``never left``."""
    line: str
    """One line with each rank's side."""
    sides: dict[int, str] = field(default_factory=dict)
    """Rank -> its side of the line."""
    blocked: dict[int, dict] = field(default_factory=dict)
    """Rank -> the entry it entered and never left (anywhere in its trace)."""
    marks: dict[int, float] = field(default_factory=dict)
    """Rank -> ``mono`` where its side happened: entering this seq, or leaving its last collective."""

    def to_json(self) -> dict:
        return {"seq": self.seq, "kind": self.kind, "line": self.line,
                "sides": {str(r): s for r, s in self.sides.items()},
                "blocked": {str(r): e for r, e in self.blocked.items()},
                "marks": {str(r): t for r, t in self.marks.items()}}


def signature(entry: dict) -> tuple:
    """What the transport matches a collective on: ranks that agree on it pair up, whatever each meant to call."""
    return (entry.get("op"), json.dumps(entry.get("shapes")), json.dumps(entry.get("dtypes")), entry.get("root"))


def same_call(a: dict, b: dict) -> bool:
    """Whether two ranks' n-th collectives are the same call: the same signature, and the same site and call id
    where both traces have them. A call id is compared only on an unrooted collective (all_reduce, all_gather):
    the receivers of a broadcast learn its call id from what it carries, so theirs may lag the root's."""
    if signature(a) != signature(b):
        return False
    if a.get("site") is not None and b.get("site") is not None and a["site"] != b["site"]:
        return False
    return (a.get("root") is not None or a.get("call_id") is None or b.get("call_id") is None
            or a["call_id"] == b["call_id"])


GROUP_STRIDE = 10**12
"""A zero-touch trace numbers process group N's collectives from ``N * GROUP_STRIDE`` (CONTRACT §6)."""


def seq_text(seq: int) -> str:
    """``7``, or ``3 of process group 1`` for another group's collective."""
    return str(seq) if seq < GROUP_STRIDE else f"{seq % GROUP_STRIDE} of process group {seq // GROUP_STRIDE}"


def describe(entry: dict) -> str:
    """``broadcast int64[8] (envelope header, chunk 3)``."""
    shapes, dtypes = entry.get("shapes") or [], entry.get("dtypes") or []
    tensors = "+".join(f"{d}[{','.join(map(str, s))}]" for d, s in zip(dtypes, shapes, strict=False)) or "?"
    root = f" root {entry['root']}" if entry.get("root") is not None else ""
    return f"{entry.get('op', '?')}{root} {tensors} ({entry.get('site', '?')}, chunk {entry.get('chunk', '?')})"


def _side(rank: int, doc: dict | None, entry: dict | None, note: str | None, show_call: bool = False) -> str:
    if doc is None:
        return f"rank {rank} has no flight trace" + (f" ({note})" if note else "")
    if entry is None:
        entries = doc["entries"]
        last = entries[-1] if entries else None
        if last is None:
            return f"rank {rank} never entered it (no collective yet)"
        state = "still inside it" if last.get("leave") is None else "left it"
        return f"rank {rank} never entered it (its last: seq {seq_text(last['seq'])} {describe(last)}, {state})"
    text = f"rank {rank} {describe(entry)}"
    if show_call and entry.get("call_id") is not None:
        text += f" call_id {entry['call_id']}"
    if entry.get("leave") is None:
        ago = float(doc.get("mono", entry["enter"])) - float(entry["enter"])
        text += f", entered {ago:.1f} s ago, never left"
    return text


def first_divergence(traces: dict[int, dict], world_size: int,
                     notes: dict[int, str] | None = None) -> Divergence | None:
    """The first ``seq`` the traced ranks disagree on; None when they agree or nobody traced."""
    if not traces:
        return None
    notes = notes or {}
    by_seq = {r: {e["seq"]: e for e in doc["entries"] if isinstance(e, dict) and "seq" in e}
              for r, doc in traces.items()}
    starts = {r: min(by_seq[r], default=int(doc.get("next_seq", 0))) for r, doc in traces.items()}
    blocked = {r: e for r, entries in by_seq.items() for e in entries.values() if e.get("leave") is None}
    lo = max(starts.values())
    # Every seq some rank entered, in the order they were first entered: within a group that is seq order, and
    # across groups (another group's numbers sit far above the default group's) it is when the ranks parted.
    first_enter: dict[int, float] = {}
    for entries in by_seq.values():
        for s, e in entries.items():
            first_enter[s] = min(first_enter.get(s, float("inf")), float(e.get("enter") or 0.0))
    for seq in sorted((s for s in first_enter if s >= lo), key=lambda s: (first_enter[s], s)):
        present = {r: by_seq[r].get(seq) for r in traces}
        entered = {r: e for r, e in present.items() if e is not None}
        kind = None
        sides_of = list(entered.values())
        if any(not same_call(sides_of[0], e) for e in sides_of[1:]):
            kind = "mismatch"
        elif len(entered) < len(traces):
            kind = "never entered"
        elif any(e.get("leave") is None for e in entered.values()):
            kind = "never left"
        if kind is None:
            continue
        show_call = kind == "mismatch" and len({signature(e) for e in entered.values()}) == 1
        sides = {r: _side(r, traces.get(r), present.get(r), notes.get(r), show_call) for r in range(world_size)}
        marks = {}
        for r, doc in traces.items():
            e = present[r] or (doc["entries"][-1] if doc["entries"] else None)
            if e is not None:
                marks[r] = float(e["enter"] if present[r] or e.get("leave") is None else e["leave"])
        return Divergence(seq=seq, kind=kind, line=f"seq {seq_text(seq)}: " + " - ".join(sides.values()), sides=sides,
                          blocked=blocked, marks=marks)
    return None


FINAL_REASONS = ("exit", "TP-FATAL")
"""A trace dumped for one of these (``reason`` starts so) is the rank's last word: nothing it does later counts."""


def stale(doc: dict, *, progress_at: float | None, alive_at: float | None) -> str:
    """Why ``doc`` is older than what its rank did since ("" when it is not).

    A trace dumped on the way out (``FINAL_REASONS``) never is. Any other is when the rank progressed after it
    (a chunk, a fault, a progress key: ``progress_at``), or, unless the trace shows it inside a collective it
    could still be stuck in, when it showed any life after it (a log line, a heartbeat, its exit: ``alive_at``).
    """
    if str(doc.get("reason", "")).startswith(FINAL_REASONS):
        return ""
    mono = float(doc.get("mono") or 0.0)
    later = progress_at if open_entry(doc) is not None else max(progress_at or 0.0, alive_at or 0.0) or None
    if later is None or later <= mono:
        return ""
    return (f"its newest trace ({doc.get('reason') or 'no reason'}, written at mono {mono:.3f}) is older than "
            f"its last sign of life (mono {later:.3f}), so it was dropped")


def for_run(*, traces: dict[int, dict], log_dir: Path | None, world_size: int, texts: dict[int, str],
            notes: dict[int, str], progress_at: dict[int, float] | None = None,
            alive_at: dict[int, float] | None = None) -> Divergence | None:
    """The run's first divergence: from the traces taken at the hang if any, else as the ranks left them,
    without those older than their rank's last sign of life (``stale``; their notes say so).

    When there is none the result still says why (kind ``agree`` or ``untraced``), so every failed
    run's report answers "where did the ranks part?".
    """
    dropped: dict[int, str] = {}
    if not traces and log_dir is not None:
        traces, notes = dict(load_all(log_dir, world_size, texts)), dict(notes)
        for rank, doc in list(traces.items()):
            why = stale(doc, progress_at=(progress_at or {}).get(rank), alive_at=(alive_at or {}).get(rank))
            if why:
                del traces[rank]
                notes[rank] = dropped[rank] = why
    found = first_divergence(traces, world_size, notes)
    if found is not None:
        return found
    untraced = [r for r in range(world_size) if r not in traces and r not in dropped]
    missing = f"; rank {', '.join(map(str, untraced))} left no trace" if untraced and traces else ""
    missing += "".join(f"; rank {r}: {why}" for r, why in sorted(dropped.items()))
    if not traces:
        return Divergence(seq=-1, kind="untraced", line=f"none known: no rank left a flight trace{missing}")
    last = [doc["entries"][-1] for doc in traces.values() if doc["entries"]]
    if not last:
        return Divergence(seq=-1, kind="agree", line=f"none: no rank entered a collective{missing}")
    top = max(last, key=lambda e: e["seq"])
    return Divergence(seq=top["seq"], kind="agree", line=f"none: the traced ranks agree on every collective up to "
                                                          f"seq {seq_text(top['seq'])} {describe(top)}{missing}")


def open_entry(doc: dict | None) -> dict | None:
    """The collective a rank is inside: its last entry, when it has no ``leave``."""
    entries = (doc or {}).get("entries") or []
    return entries[-1] if entries and entries[-1].get("leave") is None else None


def own_timeout(traces: dict[int, dict], *, live: list[int], stopped: set[int],
                after: float = float("-inf")) -> tuple[float, str] | None:
    """When the first stuck rank's own timeout still to come (after ``after``) ends its collective (``enter`` +
    the entry's ``timeout_s``, as ``time.monotonic()``), and which; None when no open entry has one to come."""
    first = None
    for rank in (r for r in live if r not in stopped):
        entry = open_entry(traces.get(rank))
        try:
            at = float(entry["enter"]) + float(entry["timeout_s"]) if entry and entry.get("timeout_s") else None
        except (TypeError, ValueError):  # an optional field a TP path wrote wrong: no timeout to wait for
            at = None
        if at is None or at <= after:
            continue
        if first is None or at < first[0]:
            first = (at, f"rank {rank}'s own {float(entry['timeout_s']):g} s timeout on its {describe(entry)}")
    return first


def check_blocked(expect, *, traces: dict[int, dict], divergence: Divergence | None, stopped: set[int],
                  world_size: int) -> list[str]:
    """Why a HUNG run is not hung where ``expect.blocked`` says (empty when it is, or nothing is said)."""
    if expect.blocked is None:
        return []
    if isinstance(expect.blocked, str):  # DESYNC
        if divergence is not None and divergence.kind in ("mismatch", "never entered") and divergence.blocked:
            return []
        found = divergence.line if divergence else ("no flight traces" if not traces else "the traces agree")
        return [f"the hang must leave a rank waiting in a collective its peers never entered; found: {found}"]
    errors = []
    for rank in range(world_size):
        spec = expect.blocked_for(rank)
        if spec is None:
            continue
        if spec.stopped:
            if rank not in stopped:
                errors.append(f"rank {rank} must be {spec.describe()} but was not found stopped")
            continue
        doc = traces.get(rank)
        entry = open_entry(doc)
        if doc is None:
            errors.append(f"rank {rank} must be {spec.describe()} but left no flight trace at the hang")
        elif spec.outside:
            if entry is not None:
                errors.append(f"rank {rank} must be {spec.describe()} but waits in seq {seq_text(entry['seq'])} {describe(entry)}")
        elif entry is None:
            last = doc["entries"][-1] if doc["entries"] else None
            where = f"its last collective, seq {seq_text(last['seq'])} {describe(last)}, returned" if last else "no collective"
            errors.append(f"rank {rank} must be {spec.describe()} but is in none ({where})")
        elif (spec.op and entry.get("op") != spec.op) or (spec.site and not re.search(spec.site, str(entry.get("site")))):
            errors.append(f"rank {rank} must be {spec.describe()} but waits in seq {seq_text(entry['seq'])} {describe(entry)}")
    return errors


def stall_verdict(traces: dict[int, dict], *, live: list[int], stopped: set[int], world_size: int,
                  parked: Mapping[int, str] | None = None) -> str | None:
    """Why every live rank waits forever, or None when the traces do not prove it.

    Every live rank that is not stopped must be inside a collective, or say in its trace that it is
    ``idle`` waiting for outside input (a rank computing or sleeping may still come back), or be
    ``parked``: in the hang its own fault armed (rank -> where, from its ``TP-FAULT action=hang`` line),
    which by the fault's definition never returns. And the
    collective of each rank inside one must be one its peers will never complete: a
    peer stopped, exited, never entered it, or entered another op, shape, dtype or root at that
    seq. When every peer entered the same collective it may just be slow, so that is no proof.
    """
    waiting = [r for r in live if r not in stopped]
    if not waiting:
        return None
    by_seq = {r: {e.get("seq"): e for e in doc["entries"]} for r, doc in traces.items()}
    parts = []
    for rank in waiting:
        entry = open_entry(traces.get(rank))
        if entry is None and rank in (parked or {}):
            parts.append(f"rank {rank} {parked[rank]}")
            continue
        if entry is None:
            idle = (traces.get(rank) or {}).get("idle")
            if not idle:
                return None
            parts.append(f"rank {rank} idle in no collective ({idle})")
            continue
        why = _unmatched(entry, rank, by_seq, live, stopped, world_size)
        if why is None:
            return None
        parts.append(f"rank {rank} in seq {seq_text(entry['seq'])} {describe(entry)}, {why}")
    return "; ".join(parts)


def _unmatched(entry: dict, rank: int, by_seq: dict[int, dict], live: list[int], stopped: set[int],
               world_size: int) -> str | None:
    for peer in (p for p in range(world_size) if p != rank):
        if peer in stopped:
            return f"rank {peer} is stopped"
        if peer not in live:
            return f"rank {peer} has exited"
        if peer not in by_seq:
            return None  # a live peer without a trace: nothing is proven
        theirs = by_seq[peer].get(entry["seq"])
        if theirs is None:
            return f"rank {peer} never entered it"
        if signature(theirs) != signature(entry):
            return f"rank {peer} is in {describe(theirs)} there"
    return None
