"""``python -m harness.attribution``: score PyTorch's Flight Recorder analyzer against the harness's ground truth.

A module of its own rather than a ``breakit`` subcommand: ``harness/cli/main.py`` is at its size cap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness.attribution import cases as catalog_cases
from harness.attribution import render
from harness.attribution.run import attribution, rescore
from harness.pipeline import options
from harness.pipeline.runner import RunConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.attribution", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("reports/attribution"),
                        help="directory for attribution.json/.md and the runs (default reports/attribution)")
    parser.add_argument("--docs", type=Path, default=None, help="also write this markdown (docs/ATTRIBUTION.md)")
    parser.add_argument("--world-sizes", default="2,4", help="world sizes of the catalog proofs (default 2,4)")
    parser.add_argument("--every-size", action="store_true",
                        help="every proof at every world size (default: all at the first, one per kind at the rest)")
    parser.add_argument("--explore", type=int, default=6, help="explore schedules to add (default 6)")
    parser.add_argument("--seed", type=int, default=1, help="explore seed (default 1)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only these catalog ids (repeatable; e.g. FM-14/off)")
    parser.add_argument("--backend", default="gloo", help="gloo (CPU) or nccl (one GPU per rank)")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="run nothing: rescore this attribution.json, write attribution.md beside it (and --docs)")
    args = parser.parse_args(argv)
    if args.render is not None:
        doc = rescore(json.loads(args.render.read_text()))
        args.render.with_suffix(".md").write_text(render.report(doc))
        if args.docs is not None:
            args.docs.write_text(render.docs(doc))
        return 0
    try:
        world_sizes = tuple(int(w) for w in args.world_sizes.split(","))
    except ValueError:
        parser.error(f"--world-sizes {args.world_sizes!r}: give comma-separated integers, e.g. 2,4")
    cases = catalog_cases.catalog(world_sizes, every_size=args.every_size)
    if args.only:
        known = {c.scenario.id for c in cases}
        unknown = sorted(set(args.only) - known)
        if unknown:
            parser.error(f"--only {', '.join(unknown)}: not a scored proof; choose from {', '.join(sorted(known))}")
        cases = [c for c in cases if c.scenario.id in args.only]
    tp_command = options.default("tp_command")
    if args.explore:
        cases += catalog_cases.explored(seed=args.seed, count=args.explore, world_sizes=world_sizes,
                                        tp_command=tp_command, env=dict())
    config = RunConfig(run_dir=args.out / time.strftime("%Y%m%d-%H%M%S"), backend=args.backend,
                       tp_command=tp_command)
    doc = attribution(cases, config, out_dir=args.out, docs=args.docs,
                      meta={"seed": args.seed, "explore": args.explore, "world_sizes": list(world_sizes),
                            "every_size": args.every_size},
                      say=lambda line: print(line, flush=True))
    all_runs = doc["table"]["all"]
    print(f"attribution: {all_runs['runs']} runs; analyzer culprit right/wrong/none "
          f"{'/'.join(str(v) for v in all_runs['analyzer/repaired/culprit'].values())}; "
          f"report {args.out / 'attribution.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
