"""``python -m benchmarks``: measure, write ``bench.json`` and ``bench.md``, print the Markdown.

The full run takes about twelve minutes on a 2-core box (the hang and
false-alarm sections alone about five; ``--false-alarm-runs`` and
``--hang-runs`` size them), plus about thirteen for the zero-touch engine
sections on a loaded box (``--sections`` without ``engine_cost``,
``engine_hang`` leaves them out); ``--quick`` is a
smoke run (3 repetitions, the FMs' own ids, a short suite subset) for tests.
Sections run one after another, never in parallel: they would time each
other. A section that fails is recorded with its error and the rest go on;
the exit status is then 1. Missed targets do not fail the run: they are
numbers to read, not tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import (
    SCHEMA,
    SECTIONS,
    crash_time,
    detection,
    engine,
    launch_cost,
    overhead,
    reference,
    render,
    stats,
    suite,
    targets,
)

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, kw_only=True)
class Plan:
    """How much of everything to measure."""

    launches: int
    """Launches per launch-cost row (>= 10 for the full run)."""
    ttc_runs: int
    """Runs per guarded scenario (>= 20 for the full run)."""
    ttc_variants: bool
    """Include the guarded variants (``FM-13/frozen``...) besides the FMs' own ids."""
    ttc_reference_runs: int
    """Runs per reference row (frozen peers with a short peer timeout); 0 skips them."""
    overhead: dict[int, tuple[int, int]]
    """World size -> (interleaved repetitions of every overhead configuration, chunks per run)."""
    reference_iters: int
    """Timed operations per reference row."""
    suite_workers: tuple[int, ...]
    """Suite runs: pytest-xdist worker counts, 1 = serial."""
    suite_marker: str
    """pytest ``-m`` expression of the suite runs."""
    flight_iters: int = 20000
    """Timed trace entries per batch (7 batches)."""
    hang_runs: int = 10
    """Runs per hang proof."""
    hang_proofs: int | None = None
    """Measure only the first N hang proofs of the catalog (None = all)."""
    ttc_only: str | None = None
    """Comma-separated scenario ids: the ``ttc`` section measures only these (``--ttc-only``)."""
    false_alarm_runs: int = 100
    """Healthy runs on the oversubscribed box (``--false-alarm-runs``; the issue asks for >= 500)."""
    busy_processes: int = 4
    """Spinning processes that oversubscribe the box during the false-alarm runs."""
    engine_cost: dict[int, tuple[int, int]] = dataclasses.field(default_factory=lambda: {2: (6, 500), 1: (5, 1500)})
    """World size -> (interleaved repetitions of c10d_ops.py per bootstrap configuration, its OPS_REPEAT)."""
    engine_runs: int = 5
    """Interleaved pairs of whole healthy dtensor_engine.py runs (ws 2) without / with the bootstrap; 0 skips."""
    engine_hang_runs: int = 10
    """Zero-touch hang runs (``run_engine``, expect HUNG)."""
    engine_hang_fixture: str = "dtensor_engine.py"
    """The fixture engine (under fixtures/engines) the zero-touch hang runs break."""


FULL = Plan(launches=12, ttc_runs=20, ttc_variants=True, ttc_reference_runs=5, overhead={2: (12, 30), 4: (3, 20)},
            reference_iters=300, suite_workers=(2, 1), suite_marker="breakit")
QUICK = Plan(launches=3, ttc_runs=3, ttc_variants=False, ttc_reference_runs=0, overhead={2: (1, 8), 4: (1, 6)},
             reference_iters=30, suite_workers=(1,), suite_marker="breakit and control", flight_iters=2000,
             hang_runs=1, hang_proofs=2, false_alarm_runs=2, busy_processes=1,
             # c10d_ops.py alone: a dtensor_engine.py run costs ~10 s of start-up on a loaded 2-core box
             engine_cost={1: (1, 50)}, engine_runs=0, engine_hang_runs=1, engine_hang_fixture="c10d_ops.py")
WORLD_SIZE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: N=3, FM ids only, control suite subset")
    p.add_argument("--out", type=Path, default=REPO / "reports" / "bench",
                   help="directory for bench.json, bench.md and the runs' logs (default reports/bench)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (default all)")
    p.add_argument("--no-serial-suite", action="store_true", help="time the suite with -n 2 only")
    p.add_argument("--false-alarm-runs", type=int, default=None, metavar="N",
                   help="healthy runs on the oversubscribed box (default 100, --quick 2; the issue asks >= 500)")
    p.add_argument("--hang-runs", type=int, default=None, metavar="N", help="runs per hang proof (default 10)")
    p.add_argument("--docs", type=Path, default=None, metavar="FILE",
                   help="also write the report as this Markdown page (nox -s bench: docs/PERFORMANCE.md), "
                        "so the figures in the docs are this run's, never copied by hand")
    p.add_argument("--ttc-only", default=None, metavar="IDS",
                   help="comma-separated ids the ttc section measures, e.g. FM-13/frozen,FM-14/frozen")
    return p


def _sections(parser: argparse.ArgumentParser, value: str) -> list[str]:
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        parser.error(f"unknown section(s) {', '.join(unknown) or '(none given)'} in --sections {value!r}; "
                     f"valid: {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in chosen]


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _measure(name: str, plan: Plan, work: Path, no_serial: bool) -> dict:
    common = {"cwd": REPO, "say": _say}
    if name == "launch":
        return launch_cost.run(launches=plan.launches, world_size=WORLD_SIZE, work_dir=work / name, **common)
    if name == "ttc":
        return crash_time.run(runs=plan.ttc_runs, world_size=WORLD_SIZE, run_dir=work / name,
                              variants=plan.ttc_variants, reference_runs=plan.ttc_reference_runs,
                              only=plan.ttc_only, **common)
    if name == "overhead":
        return overhead.run(plan=plan.overhead, run_dir=work / name, **common)
    if name == "reference":
        return reference.run(world_sizes=tuple(plan.overhead), iters=plan.reference_iters, work_dir=work / name,
                             **common)
    if name == "flight":
        return detection.flight(iters=plan.flight_iters, **common)
    if name == "hang":
        return detection.hang(runs=plan.hang_runs, world_size=WORLD_SIZE, run_dir=work / name,
                              limit=plan.hang_proofs, **common)
    if name == "false_alarm":
        return detection.false_alarm(runs=plan.false_alarm_runs, busy=plan.busy_processes, world_size=WORLD_SIZE,
                                     run_dir=work / name, **common)
    if name == "engine_cost":
        return engine.cost(plan=plan.engine_cost, engine_runs=plan.engine_runs, **common)
    if name == "engine_hang":
        return engine.hang(runs=plan.engine_hang_runs, fixture=plan.engine_hang_fixture, call=3, run_dir=work / name,
                           **common)
    workers = tuple(w for w in plan.suite_workers if not (no_serial and w == 1)) or plan.suite_workers[:1]
    return suite.run(modes=workers, work_dir=work / name, cwd=REPO, marker=plan.suite_marker, say=_say)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    names = _sections(parser, args.sections)
    plan = QUICK if args.quick else FULL
    for arg, field in (("false_alarm_runs", "false_alarm_runs"), ("hang_runs", "hang_runs")):
        value = getattr(args, arg)
        if value is not None:
            if value < 1:
                parser.error(f"--{arg.replace('_', '-')} must be >= 1; got {value}")
            plan = dataclasses.replace(plan, **{field: value})
    if args.ttc_only:
        plan = dataclasses.replace(plan, ttc_only=args.ttc_only, ttc_variants=True)
    out = args.out.resolve()
    work = out / "runs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started_at = time.monotonic()
    doc: dict = {
        "schema": SCHEMA,
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "plan": asdict(plan),
        "machine": stats.machine(),
        "sections": {},
    }
    failed = False
    for name in names:
        section_at = time.monotonic()
        load_before = stats.load()
        try:
            result = _measure(name, plan, work, args.no_serial_suite)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' numbers
            failed = True
            _say(f"{name}: FAILED: {exc}")
            result = {"error": "".join(traceback.format_exception_only(exc)).strip(),
                      "traceback": traceback.format_exc()}
        result["elapsed_s"] = round(time.monotonic() - section_at, 1)
        result["load_before"] = load_before
        result["load_after"] = stats.load()
        doc["sections"][name] = result
        _say(f"{name}: done in {result['elapsed_s']} s (load {result['load_after']})")
    doc["total_s"] = round(time.monotonic() - started_at, 1)
    doc["load_at_end"] = stats.load()
    doc["targets"] = targets.judge(doc)
    text = render.markdown(doc, doc["targets"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (out / "bench.md").write_text(text)
    if args.docs is not None:
        args.docs.write_text(render.page(doc, text))
        _say(f"wrote {args.docs}")
    print(text)
    _say(f"wrote {out / 'bench.json'} and {out / 'bench.md'} in {doc['total_s']} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
