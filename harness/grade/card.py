"""The report card: ``grade.json`` and ``grade.md``, each row in a sentence, and the delta since the last one.

The delta compares with the newest earlier ``grade.json`` of the same graded command and the same ``--env`` under
the same report root (another environment is another configuration of the engine, not a change of it): a row
whose outcome changed is listed first (in the delta and in the table), then times to crash that grew beyond the
noise band of run deltas (``harness.report.delta.NOISE_ABS_S`` / ``NOISE_REL``), then rows added, removed. Only
rows both grades asked for count: a row one of them left out by its ``--ops``/``--actions``/``--world-sizes``
is counted as not graded then (or now), never as added or removed.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

from harness.declare.verdicts import Outcome
from harness.grade.plan import Row
from harness.judge.outcome import FIRST_FAILURE_SHOWN_S
from harness.judge.result import Result
from harness.report import delta as run_delta
from harness.report import files as report

GRADE_SCHEMA = 1
_DOING = {"hang": "rank {r} stuck in {op}", "skip": "rank {r} skips {op}", "extra": "rank {r} issues an extra {op}",
          "raise": "rank {r} raises in {op}", "corrupt": "rank {r} corrupts the data of {op}",
          "kill(SIGKILL)": "rank {r} SIGKILLed in {op}", "kill(SIGSTOP)": "rank {r} frozen (SIGSTOP) in {op}"}
_NAMES = re.compile(r"\b(?:cause_rank=|rank\s*[=:]?\s*)(\d+)")


class GradeError(RuntimeError):
    """The harness could not grade (the engine's healthy run failed): exit 1, no card."""


def named_ranks(result: Result) -> list[int]:
    """Ranks the engine's own errors name, other than the rank that printed each (``cause_rank=1``, or "rank 1"
    inside a fatal line's ``detail``): what a user reading the engine's logs is told."""
    named = set()
    for rank in result.ranks:
        fatal = rank.fatal or ""
        detail = re.search(r'detail="(.*)"', fatal)
        text = " ".join(filter(None, [re.search(r"cause_rank=\d+", fatal) and fatal, detail and detail[1]]))
        named |= {int(n) for n in _NAMES.findall(text)} - {rank.rank}
    return sorted(named)


def sentence(row: Row, outcome: str, *, ttc: float | None, deadline: float, named: list[int], reason: str,
             subject: str = "your engine", ended: tuple[int, ...] = ()) -> str:
    """One line a design review can read: ``rank 1 stuck in all_reduce (call 3): your engine hangs (...)``."""
    what = _DOING[row.action].format(r=row.rank, op=row.op) + (f" (call {row.call})" if row.call else "") \
        + (f" [{row.how}]" if row.how else "")
    if outcome == Outcome.CRASHED.value:
        said = f"name rank {', '.join(map(str, named))}" if named else "name no rank"
        return f"{what}: {subject} crashes in {ttc:.2f} s (its errors {said})"
    if outcome == Outcome.HUNG.value and ended:  # its own timeout ended some ranks, the others never went
        who = f"rank {', '.join(map(str, ended))} ended on its own (its timeout fired)"
        return f"{what}: {subject} hangs ({who}, but the other ranks never exited within {deadline:.0f} s)"
    if outcome == Outcome.HUNG.value:
        return f"{what}: {subject} hangs (no timeout fires within {deadline:.0f} s)"
    if outcome == Outcome.DIVERGED.value:
        return f"{what}: {subject} diverges silently (every rank exits 0; rank 0's output is not the healthy one)"
    if outcome == Outcome.CLEAN.value:
        return f"{what}: {subject} is unaffected (every rank exits 0 with the healthy output)"
    return f"{what}: not graded, the harness could not judge it: {reason[:160]}"


def ended_on_their_own(result: Result) -> tuple[int, ...]:
    """Ranks that exited before the harness reaped anything: in a HUNG run, the ones a timeout of their own ended."""
    return tuple(r.rank for r in result.ranks if r.returncode is not None and not r.reaped)


def row_doc(row: Row, result: Result, *, subject: str = "your engine") -> dict:
    """One row of ``grade.json``: the fault, the judged outcome and what it means."""
    ttc = result.time_to_crash_s if result.observed == Outcome.CRASHED.value else None
    named = named_ranks(result) if ttc is not None else []
    return {
        "key": row.key, "world_size": row.world_size, "op": row.op, "action": row.action, "call": row.call,
        "rank": row.rank, "fault": row.fault, "outcome": result.observed, "time_to_crash_s": ttc,
        "first_failure_s": result.first_failure_s if ttc is not None else None,
        "named_ranks": named, "root_cause_rank": (result.root_cause or {}).get("rank"),
        "first_divergent": (result.divergence or {}).get("line"), "deadline_s": result.deadline_s,
        "duration_s": result.duration_s, "dir": result.dir, "reason": result.reason,
        "sentence": sentence(row, result.observed, ttc=ttc, deadline=result.deadline_s, named=named,
                             reason=result.reason, subject=subject, ended=ended_on_their_own(result)),
    }


def counts(rows: list[dict]) -> str:
    """``12 rows: 5 CRASHED, 6 HUNG, 1 DIVERGED``."""
    seen = Counter(r["outcome"] for r in rows)
    return f"{len(rows)} row{'s' if len(rows) != 1 else ''}: " + ", ".join(f"{seen[o.value]} {o.value}" for o in Outcome if seen[o.value])


def write(run_dir: Path, *, graded: str, rows: list[dict], settings: dict) -> dict:
    """Write ``grade.json`` and ``grade.md`` (and the run's summary, so ``report`` reads it); return the doc."""
    doc = {"schema": GRADE_SCHEMA, "graded": graded, "run_dir": str(run_dir),
           "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "settings": settings, "rows": rows}
    before = previous(run_dir, graded, settings)
    doc["delta"] = compare(json.loads((before / "grade.json").read_text()), doc, baseline=str(before)) \
        if before else {"baseline": None, "note": _no_baseline(run_dir, graded, settings)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "grade.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (run_dir / "grade.md").write_text(markdown(doc))
    report.write_summary(run_dir, planned=len(rows), selection=f"grade {graded}")
    return doc


SAME = ("env", "rank", "call", "hang_after_s", "launch", "output_regex")
"""Settings that change what a row means: only grades alike in these are compared (the ``--world-sizes``,
``--actions`` and ``--ops`` only choose which rows are graded)."""


def previous(run_dir: Path, graded: str, settings: dict) -> Path | None:
    """The newest run before ``run_dir`` under the same root holding a grade of ``graded`` with the same ``SAME``
    settings (a card written before ``--env`` existed had none)."""
    return next((path for path, doc in _earlier(run_dir, graded) if _alike(doc, settings)), None)


def _alike(doc: dict, settings: dict) -> bool:
    then = doc.get("settings") or {}
    return _env(doc) == (settings.get("env") or {}) and all(then.get(k) == settings.get(k) for k in SAME[1:])


def _earlier(run_dir: Path, graded: str):
    """``(path, grade.json)`` of each run before ``run_dir`` under the same root grading ``graded``, newest first."""
    earlier = sorted((p for p in run_dir.parent.iterdir() if p.is_dir() and not p.is_symlink()
                      and p.name < run_dir.name), reverse=True)
    for path in earlier:
        try:
            doc = json.loads((path / "grade.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and doc.get("graded") == graded and isinstance(doc.get("rows"), list):
            yield path, doc


def _env(doc: dict) -> dict[str, str]:
    return (doc.get("settings") or {}).get("env") or {}


def env_words(env: dict[str, str]) -> str:
    """``--env A=1 --env B=2``, or ``no --env``."""
    return " ".join(f"--env {k}={v}" for k, v in env.items()) or "no --env"


def _no_baseline(run_dir: Path, graded: str, settings: dict) -> str:
    """Why there is no delta, naming the grades of the same command left out for their other settings."""
    note = f"no earlier grade of {graded!r} with {env_words(settings.get('env') or {})} in {run_dir.parent}"
    others = [(path.name, doc) for path, doc in _earlier(run_dir, graded) if not _alike(doc, settings)]
    if others:
        name, doc = others[0]
        then = doc.get("settings") or {}
        differ = ["env"] * (_env(doc) != (settings.get("env") or {})) + [
            k for k in SAME[1:] if then.get(k) != settings.get(k)]
        note = (f"no earlier grade of {graded!r} with the same settings in {run_dir.parent}; not compared with "
                f"{len(others)} of it with other ones (the newest {name}: other {', '.join(differ)})")
    return note


def _asked(settings: dict, row: dict) -> bool:
    """Whether a grade of ``settings`` asked for ``row`` (its --world-sizes, --actions, --ops); a setting a card
    did not record counts as asking for every row."""
    ops = settings.get("ops")
    return row["world_size"] in settings.get("world_sizes", [row["world_size"]]) \
        and row["action"] in settings.get("actions", [row["action"]]) and (not ops or row["op"] in ops)


def compare(before: dict, after: dict, *, baseline: str) -> dict:
    """What changed from grade ``before`` to grade ``after``, row by row (keyed ``ws2 all_reduce hang``)."""
    was, now = {r["key"]: r for r in before["rows"]}, {r["key"]: r for r in after["rows"]}
    changed, slower = [], []
    for key in [r["key"] for r in after["rows"] if r["key"] in was]:
        a, b = was[key], now[key]
        if a["outcome"] != b["outcome"]:
            changed.append({"row": key, "was": a["outcome"], "now": b["outcome"]})
        t0, t1 = a.get("time_to_crash_s"), b.get("time_to_crash_s")
        if t0 is not None and t1 is not None and t1 - t0 > run_delta.NOISE_ABS_S + run_delta.NOISE_REL * t0:
            slower.append({"row": key, "was_s": t0, "now_s": t1})
    gone, new = [k for k in was if k not in now], [k for k in now if k not in was]
    then, this = before.get("settings") or {}, after.get("settings") or {}
    return {"baseline": baseline, "env": _env(after), "outcome_changes": changed, "ttc_regressions": slower,
            "added": [k for k in new if _asked(then, now[k])], "removed": [k for k in gone if _asked(this, was[k])],
            "compared": sum(k in was for k in now),
            "not_graded_now": [k for k in gone if not _asked(this, was[k])],
            "not_graded_then": [k for k in new if not _asked(then, now[k])],
            "noise_band": {"abs_s": run_delta.NOISE_ABS_S, "rel": run_delta.NOISE_REL}}


def delta_lines(d: dict) -> list[str]:
    """The delta's headline (which grade it compared with), then one line per change: outcome changes first;
    last, the rows one of the two grades did not ask for."""
    if d.get("baseline") is None:
        return [f"since the last grade: none ({d.get('note', 'not compared')})"]
    said = [f"{len(d[k])} {what}" for k, what in (("outcome_changes", "outcome changed"), ("ttc_regressions",
            "slower to crash"), ("added", "added"), ("removed", "removed")) if d[k]]
    narrower = d.get("not_graded_now") or d.get("not_graded_then")
    env = f" with {env_words(d['env'])}" if d.get("env") else ""
    out = [f"since the last grade{env} ({Path(d['baseline']).name}): " + (", ".join(said) or "no change")
           + (f" in the {_rows(d['compared'])} graded both times" if narrower else "")]
    out += [f"  {c['row']}: was {c['was']}, now {c['now']}" for c in d["outcome_changes"]]
    out += [f"  {s['row']}: crashes in {s['now_s']:.2f} s, was {s['was_s']:.2f} s (band +{run_delta.NOISE_ABS_S:g} s "
            f"+{run_delta.NOISE_REL:.0%})" for s in d["ttc_regressions"]]
    out += [f"  added {k}" for k in d["added"]]
    out += [f"  removed {k} (asked for this time, but no longer a row)" for k in d["removed"]]
    for key, when in (("not_graded_now", "this time"), ("not_graded_then", "then")):
        if d.get(key):
            out.append(f"  not graded {when} (narrower --ops/--actions/--world-sizes): {_rows(len(d[key]))} of "
                       f"{'that' if when == 'this time' else 'this'} grade, not compared")
    return out


def _rows(n: int) -> str:
    return f"{n} row{'s' if n != 1 else ''}"


def markdown(doc: dict) -> str:
    """``grade.md``: the counts, the delta, the table (changed rows first), each row in plain English."""
    s = doc["settings"]
    changed = {c["row"]: c["was"] for c in doc["delta"].get("outcome_changes", ())}
    rows = sorted(doc["rows"], key=lambda r: r["key"] not in changed)
    lines = [f"# Report card: `{doc['graded']}`", "",
             f"{doc['written']}; world sizes {', '.join(map(str, s['world_sizes']))}"
             f"{'; `' + env_words(s['env']) + '`' if s.get('env') else ''}; each row one fault on one "
             f"rank, judged like `run` (deadline: {_deadline(s)}).", "", f"**{counts(doc['rows'])}**", "",
             "## Since the last grade", "", *(f"* {x.strip()}" for x in delta_lines(doc["delta"])), "",
             "## Rows", "",
             "| ws | collective (call) | fault | outcome | time to crash | rank named / root cause "
             "| first divergent collective |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        was = f" (was {changed[r['key']]})" if r["key"] in changed else ""
        ttc = f"{r['time_to_crash_s']:.3f} s" if r["time_to_crash_s"] is not None else "-"
        first = r.get("first_failure_s")  # a grade.json of an older tool has none
        if first is not None and r["time_to_crash_s"] - first >= FIRST_FAILURE_SHOWN_S:
            ttc += f" (first failure {first:.3f} s)"
        named = ",".join(map(str, r["named_ranks"])) or "none"
        cause = r["root_cause_rank"] if r["root_cause_rank"] is not None else "-"
        call = f" ({r['call']})" if r["call"] else ""
        lines.append(f"| {r['world_size']} | {r['op']}{call} | `{r['fault']}` | **{r['outcome']}**{was} | {ttc} | "
                     f"{named} / {cause} | {_cell(r['first_divergent'] or '-')} |")
    lines += ["", "## In plain English", "", *(f"* ws {r['world_size']}: {_cell(r['sentence'])}" for r in rows), ""]
    return "\n".join(lines)


def _deadline(settings: dict) -> str:
    if settings.get("hang_after_s"):
        return f"--hang-after {settings['hang_after_s']:g} s"
    return "3x the healthy run" if settings.get("reference_env") is None else "the default 8 s"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
