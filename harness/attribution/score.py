"""Scoring: an answer (a culprit rank, a first mismatching collective) against the ground truth.

Verdicts are ``right``, ``wrong`` or ``none`` (no answer: silent, or the analyzer failed). Where no
collective diverged (a corrupted value), saying nothing about collectives is ``right`` and naming one is
``wrong``. Every ``wrong`` and ``none`` carries one line saying why.
"""

from __future__ import annotations

from collections import Counter

VERDICTS = ("right", "wrong", "none")
DIVERGENT = ("mismatch", "never entered", "never left")
"""Kinds of the judge's ``divergence`` that name a collective (``agree`` and ``untraced`` name none)."""
GLOO_UNNAMED = "KeyError: ('0', "
"""How the analyzer fails on gloo dumps (the rank it started with follows): ``KeyError: ('0', 0)``."""


def culprit(answer: dict, truth_rank: int, truth_seq: int | None = None) -> tuple[str, str]:
    """The analyzer's blamed ranks against ``truth_rank``: ``(verdict, why)``."""
    if not answer.get("ok"):
        return "none", _failed(answer)
    named = answer.get("culprits") or []
    if not named:
        unseen = ""
        if answer.get("collectives") == 0:
            unseen = "; no entry: no rank entered a collective"
        elif answer.get("how") == "every collective matched" and not answer.get("missing_dumps"):
            unseen = ("; the fault changed values, and Flight Recorder records none" if truth_seq is None else
                      "; what differs there is not recorded (a broadcast's root, which call it is, values)")
        return "none", f"blames no rank: {_said(answer)}{unseen}"
    if named == [truth_rank]:
        return "right", ""
    where = f"seq {answer['seq']} {answer['op']} ({answer['how']})"
    if truth_rank in named:
        return "wrong", f"blames ranks {named} at {where}, not rank {truth_rank} alone"
    why = f"blames rank {', '.join(map(str, named))} at {where}; the fault was on rank {truth_rank}"
    if answer.get("reference") == truth_rank and answer.get("how") != "not all ranks joined":
        why += (f" (it takes the first dump it reads, rank {truth_rank}'s, as the reference and blames every rank "
                "that differs from it)")
    return "wrong", why


def collective(seq: int | None, truth: dict, *, who: str, said: str = "") -> tuple[str, str]:
    """A named first mismatching ``seq`` (None: none named) against the truth's ``seq``: ``(verdict, why)``."""
    want = truth.get("seq")
    if want is None:
        if seq is None:
            return "right", ""
        return "wrong", f"{who} flags seq {seq} but no collective diverged (every rank called the same ones)"
    if seq is None:
        return "none", f"{who} names no collective{': ' + said if said else ''}; the culprit left at seq {want}"
    if seq == want:
        return "right", ""
    when = "later" if seq > want else "earlier"
    return "wrong", f"{who} flags seq {seq}, {seq - want:+d} ({when}) from seq {want} where the culprit left"


def score_case(*, truth_rank: int, truth: dict, answers: dict[str, dict], harness: dict | None) -> dict:
    """Every verdict of one run: the analyzer per mode (culprit, collective) and the harness (collective)."""
    out: dict = {"analyzer": {}}
    for mode, answer in answers.items():
        c_verdict, c_why = culprit(answer, truth_rank, truth.get("seq"))
        if answer.get("ok"):
            said = _said(answer)
            k_verdict, k_why = collective(answer.get("seq"), truth, who="the analyzer",
                                          said="(as above)" if said in c_why else said)
        else:
            k_verdict, k_why = "none", _failed(answer)
        out["analyzer"][mode] = {"culprit": c_verdict, "culprit_why": c_why, "collective": k_verdict,
                                 "collective_why": k_why}
    named = harness is not None and harness.get("kind") in DIVERGENT
    h_verdict, h_why = collective(harness["seq"] if named else None, truth, who="the harness",
                                  said=(harness or {}).get("line", "no divergence recorded") if not named else "")
    out["harness"] = {"collective": h_verdict, "collective_why": h_why}
    return out


def _failed(answer: dict) -> str:
    error = str(answer.get("error", "failed"))
    if error.startswith(GLOO_UNNAMED):
        return ("the analyzer stops on its input: gloo's dump names the default group '' in pg_config while its "
                f"entries name it '0' ({error})")
    return f"the analyzer failed: {error}"


def _said(answer: dict) -> str:
    how = answer.get("how") or ""
    said = [s for s in answer.get("said", []) if "tabulate" not in s]
    if how == "every collective matched" and said:
        return said[0].split(". ")[0]
    if how == "every collective matched":
        missing = answer.get("missing_dumps") or []
        extra = f" (no dump from rank {', '.join(map(str, missing))})" if missing else ""
        return f"every collective it holds matched on op, sizes and dtypes{extra}"
    return how or (said[0] if said else "nothing")


def summarize(records: list[dict], kinds: tuple[str, ...]) -> dict:
    """Counts per kind and overall: ``{kind: {"runs", "<who>/<what>": {verdict: n}}}``."""
    columns = [("analyzer/repaired", "culprit"), ("analyzer/repaired", "collective"),
               ("analyzer/as_dumped", "culprit"), ("analyzer/as_dumped", "collective"), ("harness", "collective")]
    table: dict[str, dict] = {}
    for kind in (*kinds, "all"):
        rows = [r for r in records if kind == "all" or r["kind"] == kind]
        entry: dict = {"runs": len(rows)}
        for who, what in columns:
            counts = Counter(_pick(r["score"], who)[what] for r in rows)
            entry[f"{who}/{what}"] = {v: counts.get(v, 0) for v in VERDICTS}
        table[kind] = entry
    return table


def _pick(score: dict, who: str) -> dict:
    if who == "harness":
        return score["harness"]
    return score["analyzer"][who.split("/")[1]]
