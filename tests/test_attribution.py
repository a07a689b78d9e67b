"""Attribution: the TP path's Flight Recorder dumps, PyTorch's analyzer reading them, and the scorer.

One small real run (two ranks, real gloo, the harness's launcher): rank 0 hangs in Python between chunks
(FM-15/off), so rank 1 waits in a broadcast rank 0 never enters. The analyzer reads its dumps; a wrong
culprit planted into one dump must lower the score.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from harness.attribution import cases, fr, render, score, truth
from harness.attribution.run import analyze, run_case
from harness.declare.scenario import load_catalog
from harness.pipeline.runner import RunConfig
from tp import flight


def test_fr_dump_is_written_only_when_the_recorder_is_on(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(flight.FR_ENV, raising=False)
    off = flight.Recorder(rank=1, world_size=2, ctx={"chunk": 0, "call_id": 0}, report_dir=str(tmp_path / "off"))
    (tmp_path / "off").mkdir()
    off.dump("exit")
    assert not (tmp_path / "off" / flight.FR_DIR).exists()
    monkeypatch.setenv(flight.FR_ENV, "64")
    (tmp_path / "on").mkdir()
    on = flight.Recorder(rank=1, world_size=2, ctx={"chunk": 0, "call_id": 0}, report_dir=str(tmp_path / "on"))
    on.dump("SIGUSR1")
    dump = pickle.loads((tmp_path / "on" / flight.FR_DIR / "fr_rank1").read_bytes())
    assert {"version", "pg_config", "entries"} <= set(dump)
    assert sorted(p.name for p in (tmp_path / "on" / flight.FR_DIR).iterdir()) == ["fr_rank1"]
    asked = tmp_path / "on" / flight.FR_ASKED_DIR
    assert sorted(p.name for p in asked.iterdir()) == ["flight_rank1.json", "fr_rank1"]
    on.dump("TP-FATAL PEER_LOST")  # what reaping makes a rank write: not the answer it gave when asked
    assert json.loads((asked / "flight_rank1.json").read_text())["reason"] == "SIGUSR1"
    assert json.loads((tmp_path / "on" / "flight_rank1.json").read_text())["reason"] == "TP-FATAL PEER_LOST"


@pytest.fixture(scope="module")
def hung(tmp_path_factory) -> dict:
    """FM-15/off at two ranks with the recorder on, scored (a healthy run of the same settings included)."""
    proof = next(s for s in load_catalog() if s.id == "FM-15/off")
    short = dataclasses.replace(proof, world_size=2, chunks=3)  # the fault fires in chunk 2
    case = cases.Case(scenario=cases.with_fr(short),
                      kind=cases.CATALOG_KINDS[proof.id], culprit=0, source="catalog")
    config = RunConfig(run_dir=tmp_path_factory.mktemp("attribution"))
    return analyze([run_case(case, config, {})])[0]


def test_a_real_run_leaves_dumps_the_analyzer_reads(hung) -> None:
    assert hung["observed"] == "HUNG"
    asked = sorted(p.name for p in (Path(hung["dir"]) / flight.FR_ASKED_DIR).iterdir())
    assert asked == ["flight_rank0.json", "flight_rank1.json", "fr_rank0", "fr_rank1"], "both ranks answer SIGUSR1"
    assert hung["analyzer"]["as_dumped"]["missing_dumps"] == []
    answer = hung["analyzer"]["repaired"]
    assert answer["ok"] and answer["ranks"] == [0, 1], answer
    assert answer["repaired"], "gloo's dumps name no group in pg_config: the repair must have had work to do"
    assert hung["truth"]["rank"] == 0 and hung["truth"]["seq"] is not None


def test_the_harness_names_the_collective_rank_0_never_entered(hung) -> None:
    assert hung["score"]["harness"]["collective"] == "right", hung["score"]["harness"]
    assert hung["harness"]["seq"] == hung["truth"]["seq"]


def test_a_planted_wrong_culprit_lowers_the_score(hung, tmp_path) -> None:
    real = hung["score"]["analyzer"]["repaired"]
    assert real["culprit"] == "right", hung["analyzer"]["repaired"]
    planted = tmp_path / "fr"
    shutil.copytree(hung["fr_dir"], planted)
    # Rank 0's dump is made to show it joined the broadcast rank 1 waits in, and one more nobody joined:
    # now rank 1 looks like the rank that stopped.
    path = planted / "fr_rank0"
    dump = pickle.loads(path.read_bytes())
    waiting = pickle.loads((planted / "fr_rank1").read_bytes())["entries"][-1]
    last = dump["entries"][-1]
    for step in (1, 2):
        dump["entries"].append({**waiting, "record_id": last["record_id"] + step,
                                "collective_seq_id": waiting["collective_seq_id"] + step - 1})
    path.write_bytes(pickle.dumps(dump))
    answers = fr.analyze(planted)
    verdicts = score.score_case(truth_rank=0, truth=hung["truth"], answers=answers, harness=hung["harness"])
    assert answers["repaired"]["culprits"] == [1], answers["repaired"]
    assert verdicts["analyzer"]["repaired"]["culprit"] == "wrong"
    before = score.summarize([hung], cases.KINDS)["all"]["analyzer/repaired/culprit"]
    after = score.summarize([{**hung, "score": verdicts}], cases.KINDS)["all"]["analyzer/repaired/culprit"]
    assert after["right"] == before["right"] - 1 and after["wrong"] == before["wrong"] + 1


def test_the_docs_show_where_the_harness_is_wrong_or_silent(hung) -> None:
    wrong = {**hung, "id": "X/planted", "harness": {**hung["harness"], "seq": hung["truth"]["seq"] + 3}}
    wrong["score"] = score.score_case(truth_rank=0, truth=hung["truth"], answers=hung["analyzer"],
                                      harness=wrong["harness"])
    silent = {**hung, "id": "Y/planted", "harness": None}
    silent["score"] = score.score_case(truth_rank=0, truth=hung["truth"], answers=hung["analyzer"], harness=None)
    records = [hung, wrong, silent]
    doc = {"torch": torch.__version__, "backend": "gloo", "meta": {"runs": 3, "seed": 1},
           "table": score.summarize(records, cases.KINDS), "runs": records}
    text = render.docs(doc)
    assert "right in 1, wrong in 1, none in 1 of 3 runs" in text
    assert "`X/planted` ws2" in text and "+3 (later)" in text
    assert "`Y/planted` ws2" in text and "the harness names no collective" in text


def _trace(rank: int, calls: list[tuple], left: bool = True) -> dict:
    entries = [{"seq": i, "op": op, "shapes": [[n]], "dtypes": ["int64"], "root": 0, "site": site,
                "enter": float(i), "leave": float(i) if left or i < len(calls) - 1 else None}
               for i, (op, n, site) in enumerate(calls)]
    return {"rank": rank, "next_seq": len(calls), "entries": entries}


HEALTHY = [("broadcast", 8, "envelope header"), ("broadcast", 40, "envelope meta"),
           ("all_reduce", 4, "generator call 1")]


def test_truth_is_where_the_culprit_left_and_its_peers_did_not_follow() -> None:
    healthy = {0: _trace(0, HEALTHY), 1: _trace(1, HEALTHY)}
    longer_meta = [HEALTHY[0], ("broadcast", 48, "envelope meta"), HEALTHY[2]]
    followed = {0: _trace(0, longer_meta), 1: _trace(1, longer_meta)}  # the driver told rank 1 the new size
    assert truth.first_departure(culprit=0, traces=followed, healthy=healthy)["seq"] is None
    alone = {0: _trace(0, longer_meta), 1: _trace(1, HEALTHY)}
    assert truth.first_departure(culprit=0, traces=alone, healthy=healthy)["seq"] == 1
    stopped = {0: _trace(0, HEALTHY[:1]), 1: _trace(1, HEALTHY[:2], left=False)}
    assert truth.first_departure(culprit=0, traces=stopped, healthy=healthy)["seq"] == 1
    gone = {1: _trace(1, HEALTHY[:2], left=False)}
    found = truth.first_departure(culprit=0, traces=gone, healthy=healthy)
    assert found["seq"] == 1 and found["from"] == truth.FROM_PEERS


def test_every_fault_kind_has_a_catalog_proof_or_an_explore_action() -> None:
    covered = set(cases.CATALOG_KINDS.values()) | set(cases.ACTION_KINDS.values()) | set(cases.SITE_KINDS.values())
    assert covered == set(cases.KINDS)
    ids = {s.id for s in load_catalog()}
    assert set(cases.CATALOG_KINDS) <= ids, sorted(set(cases.CATALOG_KINDS) - ids)
