"""``python -m mutate``: apply every semantic mutant of ``mutate/mutants.toml`` and report.

Writes ``reports/mutate/mutate.json`` and ``mutate.md`` and prints the
Markdown. The exit status is 0 only when every mutant was killed and none is
stale (the bar ``nox -s mutate`` holds the code to); 1 otherwise; 2 for a bad
mutants file or a selection that fails without any mutant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from mutate import mutants as data
from mutate import run

SCHEMA = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mutate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=data.DATA, help="mutants file (default: mutate/mutants.toml)")
    p.add_argument("--only", nargs="+", metavar="ID", help="run only these mutant ids")
    p.add_argument("--fallback", action="store_true",
                   help="run a survivor against the whole suite before calling it a survivor (slow)")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip the unmutated run of every selection (faster; a failing selection then kills anything)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per pytest run; past it: killed (hang)")
    p.add_argument("--root", type=Path, default=run.REPO, help="repository to copy (default: this one)")
    p.add_argument("--out", type=Path, default=None, help="report directory (default: ROOT/reports/mutate)")
    return p


def summarise(verdicts: list[run.Verdict], *, wall_s: float, baseline: dict) -> dict:
    counts = {s: sum(v.status == s for v in verdicts) for s in ("killed", "survived", "stale", "error")}
    judged = len(verdicts) - counts["stale"]
    score = round(100.0 * counts["killed"] / judged, 1) if judged else 0.0
    return {"schema": SCHEMA, "total": len(verdicts), **counts, "score_pct": score, "wall_s": round(wall_s, 1),
            "baseline": baseline, "mutants": [asdict(v) for v in verdicts]}


def markdown(summary: dict) -> str:
    lines = [
        "# Mutation run", "",
        f"**{summary['score_pct']} %** killed ({summary['killed']} of {summary['total'] - summary['stale']} "
        f"applicable), {summary['survived']} survived, {summary['stale']} stale, {summary['error']} error; "
        f"wall {summary['wall_s']} s (baseline {summary['baseline'].get('wall_s', '-')} s: "
        f"{summary['baseline'].get('detail', 'skipped')}).", "",
        "| mutant | status | how | s | killed by / why | description |",
        "|---|---|---|---|---|---|",
    ]
    for m in summary["mutants"]:
        why = ", ".join(f"`{f}`" for f in m["failed"]) or (m["how"] if m["status"] != "killed" else "")
        desc = m["description"].replace("|", "\\|")
        lines.append(f"| {m['id']} | {m['status']} | {m['how'].split(':')[0]} | {m['wall_s']} | {why} | {desc} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.monotonic()
    try:
        mutants = data.load(args.data)
    except data.MutantError as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    if args.only:
        unknown = sorted(set(args.only) - {m.id for m in mutants})
        if unknown:
            print(f"mutate: unknown mutant id(s) {unknown}; known: {', '.join(m.id for m in mutants)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.id in args.only]
    settings = run.Settings(root=args.root.resolve(), fallback=args.fallback, timeout_s=args.timeout,
                            baseline=not args.no_baseline)
    base = {"ran": False}
    if settings.baseline:
        ok, detail, secs = run.baseline([m for m in mutants if not m.stale_reason(settings.root)], settings)
        base = {"ran": True, "passed": ok, "detail": detail, "wall_s": secs}
        print(f"baseline (every selection, unmutated): {'pass' if ok else 'FAIL'} in {secs} s: {detail}", flush=True)
        if not ok:
            print("mutate: a selection fails without any mutant; fix it before judging mutants", file=sys.stderr)
            return 2
    verdicts = run.run_all(mutants, settings, say=lambda msg: print(msg, flush=True))
    summary = summarise(verdicts, wall_s=time.monotonic() - t0, baseline=base)
    out = args.out or settings.root / "reports" / "mutate"
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutate.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (out / "mutate.md").write_text(text)
    print(text)
    print(f"mutate: {summary['score_pct']} % killed, {summary['stale']} stale, wall {summary['wall_s']} s; "
          f"report: {out / 'mutate.md'}")
    return 0 if summary["killed"] == summary["total"] else 1


if __name__ == "__main__":
    sys.exit(main())
