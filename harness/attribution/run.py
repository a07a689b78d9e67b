"""Run every case with the Flight Recorder on, read each run's dumps with PyTorch's analyzer, score, write.

``reports/attribution/attribution.json`` holds every run (its truth, the analyzer's and the harness's
answers, verdicts, why) and the table per fault kind; ``attribution.md`` and ``docs/ATTRIBUTION.md`` are
rendered from it (``render``).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from importlib import metadata
from pathlib import Path

from harness.attribution import fr, render, score, truth
from harness.attribution.cases import KINDS, Case
from harness.declare.scenario import Expect
from harness.pipeline.runner import RunConfig, run_scenario
from harness.supervise import trace

SCHEMA = "breakit-attribution/1"
FR_DIR, ASKED_DIR = "fr", "fr_asked"
"""Where the TP path writes each rank's newest Flight Recorder dump, and its newest answer to SIGUSR1."""
AT_HANG = "fr_at_hang"
"""Beside them: the dumps the analyzer reads, as a user would have them when the run stopped (``at_hang``)."""


def healthy_traces(case: Case, config: RunConfig, cache: dict) -> tuple[dict[int, dict], str]:
    """The same settings without the fault (guardrails change which collectives run): each rank's trace."""
    s = case.scenario
    key = (s.world_size, s.chunks, s.guardrails, tuple(sorted(s.env.items())))
    if key not in cache:
        healthy = replace(s, id=f"healthy-{len(cache)}", fm="control", proves="control", faults=(), rank_env={},
                          expect=Expect.clean(), interrupt=None, title="healthy: " + s.guardrails)
        result = run_scenario(healthy, config)
        cache[key] = (trace.load_all(Path(result.dir), s.world_size), result.observed)
    return cache[key]


def run_case(case: Case, config: RunConfig, cache: dict) -> dict:
    """Run ``case`` and find its truth; ``analyze`` adds the analyzer's answers and the scores."""
    s = case.scenario
    result = run_scenario(s, config)
    sdir = Path(result.dir)
    healthy, healthy_observed = healthy_traces(case, config, cache)
    traces = at_hang(sdir, s.world_size, hung=result.observed == "HUNG", drop=case.culprit if frozen(case) else None)
    departure = truth.first_departure(culprit=case.culprit, traces=traces, healthy=healthy)
    return {"id": s.id, "source": case.source, "kind": case.kind, "world_size": s.world_size,
            "faults": [f.spec() for f in s.faults], "rank_env": {str(r): dict(e) for r, e in s.rank_env.items()},
            "guardrails": s.guardrails, "observed": result.observed, "dir": str(sdir),
            "truth": {"rank": case.culprit, **departure, "healthy_observed": healthy_observed},
            "harness": result.divergence, "fr_dir": str(sdir / AT_HANG)}


def frozen(case: Case) -> bool:
    return any(f.action == "kill(SIGSTOP)" and f.rank == case.culprit for f in case.scenario.faults)


def at_hang(sdir: Path, world_size: int, *, hung: bool, drop: int | None) -> dict[int, dict]:
    """Each rank's flight trace as a user would have it when the run stopped, and its FR dump into ``AT_HANG``.

    A hung run's ranks dump again while the harness reaps them (SIGCONT, SIGTERM), so its files are read from
    the answers to the harness's SIGUSR1 (``fr_asked/``), and a rank that gave none from ``fr/`` only if it
    wrote there before those answers (it died first). ``drop``: a rank stopped by SIGSTOP, which writes
    nothing while stopped: whatever it wrote came after the harness let it go.
    """
    newest, asked, target = sdir / FR_DIR, sdir / ASKED_DIR, sdir / AT_HANG
    target.mkdir(exist_ok=True)
    answers = sorted(p.stat().st_mtime for p in asked.glob(f"{fr.PREFIX}*")) if hung and asked.is_dir() else []
    traces: dict[int, dict] = {}
    for rank in range(world_size):
        if rank == drop:
            continue
        if answers and (asked / f"{fr.PREFIX}{rank}").exists():
            where = asked
        elif (newest / f"{fr.PREFIX}{rank}").exists() and (
                not answers or (newest / f"{fr.PREFIX}{rank}").stat().st_mtime <= answers[0]):
            where = newest
        else:
            continue
        shutil.copy2(where / f"{fr.PREFIX}{rank}", target / f"{fr.PREFIX}{rank}")
        doc = trace.load(where if where == asked else sdir, rank)
        if doc is not None:
            traces[rank] = doc
    return traces


def analyze(records: list[dict]) -> list[dict]:
    """Each run's dumps through PyTorch's analyzer (one child for all), then every verdict."""
    all_answers = fr.analyze_many([Path(r["fr_dir"]) for r in records])
    for record, answers in zip(records, all_answers, strict=True):
        ws, fr_dir = record["world_size"], Path(record["fr_dir"])
        missing = [r for r in range(ws) if not (fr_dir / f"{fr.PREFIX}{r}").exists()]
        for answer in answers.values():
            answer["missing_dumps"] = missing
        record["analyzer"] = answers
        record["score"] = score.score_case(truth_rank=record["truth"]["rank"], truth=record["truth"],
                                           answers=answers, harness=record["harness"])
    return records


def rescore(doc: dict) -> dict:
    """``doc`` with every verdict and the table computed again from its runs' stored answers and truth."""
    for record in doc["runs"]:
        record["score"] = score.score_case(truth_rank=record["truth"]["rank"], truth=record["truth"],
                                           answers=record["analyzer"], harness=record["harness"])
    doc["table"] = score.summarize(doc["runs"], tuple(doc["kinds"]))
    return doc


def attribution(cases: list[Case], config: RunConfig, *, out_dir: Path, docs: Path | None,
                meta: dict, say: Callable[[str], None] = print) -> dict:
    """Run and score ``cases``; write ``attribution.{json,md}`` into ``out_dir`` (and ``docs``); return the JSON."""
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    records = []
    for i, case in enumerate(cases, 1):
        record = run_case(case, config, cache)
        records.append(record)
        (out_dir / "runs.partial.json").write_text(json.dumps(records, indent=1, default=str))
        h = record["harness"] or {}
        say(f"[{i}/{len(cases)}] {record['id']} ws{record['world_size']} ({record['kind']}): {record['observed']}; "
            f"truth rank {case.culprit} seq {record['truth']['seq']}; harness seq "
            f"{h.get('seq') if h.get('kind') in score.DIVERGENT else None}")
    say(f"reading {len(records)} runs' dumps with torch.distributed.flight_recorder")
    analyze(records)
    doc = {"schema": SCHEMA, "torch": metadata.version("torch"), "backend": config.backend, "kinds": list(KINDS),
           "meta": {**meta, "runs": len(records), "seconds": round(time.monotonic() - started, 1)},
           "table": score.summarize(records, KINDS), "runs": records}
    (out_dir / "attribution.json").write_text(json.dumps(doc, indent=1, default=str))
    (out_dir / "attribution.md").write_text(render.report(doc))
    if docs is not None:
        docs.write_text(render.docs(doc))
    return doc
