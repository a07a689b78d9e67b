"""Every run against the last trusted green one: what changed since it.

A run is compared with the newest earlier run of the same configuration
(backend, launch mode, world sizes, and the selection it was asked for: ids,
files, ``-m``/``-k``) under the same report root whose overall
verdict is PASS, or with a run named by ``--baseline DIR``. The delta lists
verdict flips, outcome changes, scenarios added and removed, and
time-to-crash regressions beyond the noise band.

The noise band: a scenario's time to crash regressed when it grew by more
than ``NOISE_ABS_S + NOISE_REL * before``. Measured on the 2-core CI box
shared with four other engineers' jobs: 7 full suites back to back (zygote
launch, world sizes 2 and 4, 34 crashing scenarios each). The largest
run-to-run spread was 0.50 s (FM-11: 0.06 to 0.57 s), then 0.47 s (FM-04);
ratios mean nothing at this scale (FM-08: 12 ms to 167 ms, 14x, scheduling
noise alone). 1 s is twice the largest spread; 25 % of the earlier value keeps
multi-second crashes (FM-15/handshake, 4.2 +- 0.06 s) from flagging on load
alone. A guarded proof whose crash went from 15 ms to 2 s is outside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.declare.verdicts import Verdict

NOISE_ABS_S = 1.0
"""Seconds any time to crash may grow by from one run to the next without counting as a regression."""
NOISE_REL = 0.25
"""Fraction of the earlier time to crash it may grow by on top of ``NOISE_ABS_S``."""


def config_of(scenarios: list[dict]) -> dict:
    """What makes two runs comparable: backend, launch mode and world sizes of its results."""
    return {
        "backend": sorted({str(s.get("backend", "")) for s in scenarios}),
        "launch": sorted({str(s.get("launch", "")) for s in scenarios}),
        "world_sizes": sorted({int(s["world_size"]) for s in scenarios}),
    }


def _load(run_dir: Path) -> dict | None:
    try:
        doc = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("scenarios"), list) else None


def last_green(run_dir: Path, config: dict) -> Path | None:
    """The newest run before ``run_dir`` under the same root, overall PASS, of the same configuration."""
    earlier = sorted((p for p in run_dir.parent.iterdir()
                      if p.is_dir() and not p.is_symlink() and p.name < run_dir.name), reverse=True)
    for path in earlier:
        doc = _load(path)
        if doc is not None and doc.get("overall") == Verdict.PASS and doc.get("config") == config:
            return path
    return None


def _key(row: dict) -> str:
    return f"{row['id']} (ws{row['world_size']})"


def compare(before: dict, after: dict, *, baseline: str) -> dict:
    """The delta from summary ``before`` to summary ``after`` (both summary.json documents)."""
    was = {_key(r): r for r in before["scenarios"]}
    now = {_key(r): r for r in after["scenarios"]}
    flips, changed, slower = [], [], []
    for key in sorted(was.keys() & now.keys()):
        a, b = was[key], now[key]
        if a["verdict"] != b["verdict"]:
            flips.append({"scenario": key, "was": a["verdict"], "now": b["verdict"],
                          "observed_was": a["observed"], "observed_now": b["observed"]})
        elif a["observed"] != b["observed"]:
            changed.append({"scenario": key, "was": a["observed"], "now": b["observed"]})
        t0, t1 = a.get("time_to_crash_s"), b.get("time_to_crash_s")
        if t0 is not None and t1 is not None and t1 - t0 > NOISE_ABS_S + NOISE_REL * t0:
            slower.append({"scenario": key, "was_s": t0, "now_s": t1})
    return {
        "baseline": baseline,
        "baseline_overall": before.get("overall"),
        "flips": flips,
        "outcome_changes": changed,
        "added": sorted(now.keys() - was.keys()),
        "removed": sorted(was.keys() - now.keys()),
        "ttc_regressions": slower,
        "noise_band": {"abs_s": NOISE_ABS_S, "rel": NOISE_REL},
    }


def for_run(run_dir: Path, doc: dict, baseline: Path | None = None) -> dict:
    """The delta of the run whose summary is ``doc``: against ``baseline`` or its last green run."""
    if baseline is None:
        baseline = last_green(run_dir, doc["config"])
        if baseline is None:
            return {"baseline": None, "note": "no earlier green run of this configuration "
                                              f"({_config_text(doc['config'])}) in {run_dir.parent}"}
    before = _load(baseline)
    if before is None:
        return {"baseline": str(baseline), "note": f"baseline {baseline} has no readable summary.json"}
    return compare(before, doc, baseline=str(baseline))


def _config_text(config: dict) -> str:
    return ", ".join(f"{k} {'/'.join(map(str, v)) if isinstance(v, list) else repr(v)}" for k, v in config.items())


def regressed(delta: dict) -> bool:
    """True when something got worse: a PASS turned FAIL, or a time to crash beyond the noise band."""
    return any(f["now"] != Verdict.PASS for f in delta.get("flips", ())) or bool(delta.get("ttc_regressions"))


def headline(delta: dict) -> str:
    """One line: ``vs 20261126-... (PASS): 1 verdict flip, 1 time-to-crash regression`` or why there is none."""
    if delta.get("baseline") is None or "note" in delta:
        return f"baseline: none ({delta.get('note', 'not compared')})"
    counts = [(len(delta["flips"]), "verdict flip"), (len(delta["outcome_changes"]), "outcome change"),
              (len(delta["added"]), "added"), (len(delta["removed"]), "removed"),
              (len(delta["ttc_regressions"]), "time-to-crash regression")]
    said = [f"{n} {what}" + ("s" if n != 1 and what.endswith(("flip", "change", "regression")) else "")
            for n, what in counts if n]
    name = Path(delta["baseline"]).name
    return f"vs {name} ({delta.get('baseline_overall')}): " + (", ".join(said) if said else "no change")


def lines(delta: dict) -> list[str]:
    """The headline, then one line per change (terminal and Markdown alike)."""
    out = [headline(delta)]
    out += [f"  verdict {f['scenario']}: {f['was']} -> {f['now']} (observed {f['observed_was']} -> "
            f"{f['observed_now']})" for f in delta.get("flips", ())]
    out += [f"  outcome {c['scenario']}: {c['was']} -> {c['now']}" for c in delta.get("outcome_changes", ())]
    out += [f"  time to crash {s['scenario']}: {s['was_s']:.3f} s -> {s['now_s']:.3f} s (band "
            f"+{NOISE_ABS_S:g} s +{NOISE_REL:.0%})" for s in delta.get("ttc_regressions", ())]
    out += [f"  added {k}" for k in delta.get("added", ())]
    out += [f"  removed {k}" for k in delta.get("removed", ())]
    return out
