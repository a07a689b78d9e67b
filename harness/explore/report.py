"""The exploration report: ``explore.json`` and ``explore.md`` in the run directory.

Schedules run, per site and per action coverage (scheduled, fired, never
fired), verdict counts, the time-to-crash distribution, and each violation
with its shrunk schedule and one-line reproducer.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path

from harness.report.rows import shorten


def write(tally, *, sites: list[dict], run_dir: Path, meta: dict) -> dict:
    """Build the report from ``tally`` (``harness.explore.schedules.Tally``), write both files, return the JSON."""
    elapsed = time.monotonic() - tally.started
    doc = {
        "meta": meta,
        "schedules": len(tally.runs),
        "elapsed_s": round(elapsed, 1),
        "runs_per_s": round(len(tally.runs) / elapsed, 3) if elapsed > 0 else None,
        "world_sizes": dict(Counter(str(r["schedule"]["world_size"]) for r in tally.runs)),
        "verdicts": dict(Counter(r["observed"] for r in tally.runs)),
        "coverage": coverage(tally.runs, sites),
        "time_to_crash_s": distribution([r["time_to_crash_s"] for r in tally.runs
                                         if r["observed"] == "CRASHED" and r["time_to_crash_s"] is not None]),
        "violations": tally.violations,
        "runs": tally.runs,
        "dir": str(run_dir),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "explore.json").write_text(json.dumps(doc, indent=2) + "\n")
    (run_dir / "explore.md").write_text(markdown(doc))
    return doc


def coverage(runs: list[dict], sites: list[dict]) -> dict:
    """Per site=action pair: how often scheduled and how often it fired; plus per site and per action."""
    scheduled: Counter = Counter()
    fired: Counter = Counter()
    for r in runs:
        for spec in r["schedule"]["faults"]:
            site, _, rest = spec.partition("=")
            scheduled[f"{site}={rest.partition('@')[0].partition('(')[0]}"] += 1
        fired.update(r["fired"])
    every = [f"{s['site']}={a['action']}" for s in sites for a in s["actions"]]
    pairs = {p: {"scheduled": scheduled[p], "fired": fired[p]} for p in every}
    per_site: dict[str, dict] = {}
    per_action: dict[str, dict] = {}
    for p, c in pairs.items():
        site, action = p.split("=")
        for table, key in ((per_site, site), (per_action, action)):
            row = table.setdefault(key, {"scheduled": 0, "fired": 0})
            row["scheduled"] += c["scheduled"]
            row["fired"] += c["fired"]
    return {
        "pairs": pairs,
        "per_site": per_site,
        "per_action": per_action,
        "pairs_fired": sum(1 for c in pairs.values() if c["fired"]),
        "pairs_total": len(pairs),
        "never_fired": sorted(p for p, c in pairs.items() if c["scheduled"] and not c["fired"]),
        "never_scheduled": sorted(p for p, c in pairs.items() if not c["scheduled"]),
        "sites_fired": sorted(s for s, c in per_site.items() if c["fired"]),
    }


def distribution(values: list[float]) -> dict:
    """min / median / p90 / max of ``values`` (empty: count 0)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {"count": len(ordered), "min": round(ordered[0], 3), "median": round(statistics.median(ordered), 3),
            "p90": round(p90, 3), "max": round(ordered[-1], 3)}


def ran_with(m: dict) -> str:
    """What the ranks ran with: an engine as given and the user's ``--env``, or the TP path's settings."""
    if m.get("engine"):
        given = " ".join(f"--env {k}={v}" for k, v in (m.get("env") or {}).items())
        return f"engine `{m['engine']}` started as given, " + (f"with {given} and " if given else "") + \
            "no env of explore's own."
    return (f"backend {m['backend']}, {m['chunks']} chunks, TP_PROGRESS_TIMEOUT_S={m['progress_timeout_s']:g}, "
            f"TP_HANDSHAKE_TIMEOUT_S={m['handshake_timeout_s']:g}, every guardrail on.")


def markdown(doc: dict) -> str:
    """explore.md: the numbers a reader looks for first, then the tables."""
    m, cov = doc["meta"], doc["coverage"]
    ttc = doc["time_to_crash_s"]
    lines = [
        f"# explore: seed {m['seed']}, {doc['schedules']} schedules in {doc['elapsed_s']} s "
        f"({doc['runs_per_s']} runs/s), {len(doc['violations'])} violations",
        "",
        f"World sizes {doc['world_sizes']}, faults per run {m['faults_per_run'][0]}..{m['faults_per_run'][1]}, "
        f"launch {m['launch']}, {ran_with(m)}",
        "",
        "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["verdicts"].items())),
        "",
        "Time to crash (s): " + (", ".join(f"{k} {v}" for k, v in ttc.items()) if ttc["count"] else "no crash"),
        "",
        f"Coverage: {cov['pairs_fired']}/{cov['pairs_total']} site=action pairs fired, "
        f"{len(cov['sites_fired'])}/{len(cov['per_site'])} sites.",
        "",
        "## Violations",
        "",
    ]
    for v in doc["violations"]:
        lines += [f"- run {v['index']}: {v['observed']}: {shorten(v['violations'][0], 300)}",
                  f"  - shrunk ({v['shrink_runs']} runs): `{v['reproducer']}`"]
    if not doc["violations"]:
        lines.append("None.")
    lines += ["", "## Per site", "", "| site | scheduled | fired |", "|---|---|---|"]
    lines += [f"| {s} | {c['scheduled']} | {c['fired']} |" for s, c in cov["per_site"].items()]
    lines += ["", "## Per action", "", "| action | scheduled | fired |", "|---|---|---|"]
    lines += [f"| {a} | {c['scheduled']} | {c['fired']} |" for a, c in cov["per_action"].items()]
    lines += ["", "## Scheduled but never fired (another fault ended the run first, or the trigger never matched)",
              "", ", ".join(cov["never_fired"]) or "None.", "",
              "## Never scheduled (a longer budget reaches them)", "", ", ".join(cov["never_scheduled"]) or "None.",
              "", "## Rules", ""]
    lines += [f"- **{name}**: {reason}" for name, reason in m["rules"].items()]
    return "\n".join(lines) + "\n"


def print_ending(doc: dict, *, label: str, seed: int, run_dir: Path) -> int:
    """The command's last lines: one summary, then every violation's reproducer; the exit status (1: violations)."""
    cov = doc["coverage"]
    print(f"{label}: seed {seed}: {doc['schedules']} schedules in {doc['elapsed_s']} s, verdicts "
          f"{doc['verdicts']}, {cov['pairs_fired']}/{cov['pairs_total']} site=action pairs fired, "
          f"{len(doc['violations'])} violations; report: {run_dir / 'explore.md'}")
    for v in doc["violations"]:
        print(f"VIOLATION (run {v['index']}, {v['observed']}): {v['reproducer']}")
    return 1 if doc["violations"] else 0
