"""Zero-touch fault schedules: what an unmodified engine issues, random faults there, and the invariant.

An engine declares nothing (no ``--list-failpoints``): its sites are the collectives it issues, counted per
rank and op from a healthy run with ``collective.any=sleep(0)`` armed (one ``TP-FAULT ... op=NAME`` line per
collective, the sequence unchanged). A schedule arms one to three ``collective.<op>`` faults at a rank and a
call that rank really makes, with an action of ``ACTIONS``. Schedule ``i`` of a seed is a pure function of
``(seed, i, counts)``: it can be rebuilt alone.

The invariant (an engine promised no contract, so nothing more): the engine finishes CLEAN with the healthy
run's output, or its verdict (CRASHED, HUNG) is backed by evidence - the fault fired, a crash has a root
cause, nothing is left behind. DIVERGED (it served a wrong answer) and HARNESS_ERROR (the judge could not
prove what happened) break it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from harness.declare import adhoc
from harness.declare.fault import Fault
from harness.declare.scenario import Scenario
from harness.engine.command import Rerun
from harness.explore.schedules import fired
from harness.judge.result import Result
from harness.supervise import logs

ACTIONS = ("hang", "raise", "skip", "extra", "corrupt", "kill(SIGKILL)", "kill(SIGSTOP)", "sleep(0.2)", "sleep(1.5)")
"""What explore does to a collective (``exit(N)`` is left out: it is ``kill`` with a code of the user's choosing)."""
DISCOVERY_FAULT = "collective.any=sleep(0)"
"""Armed in the discovery run: a ``TP-FAULT`` line per collective, with its op, and no change to the engine."""
RULES: dict[str, str] = {
    "clean-or-evidence": "the engine finishes CLEAN with the healthy run's output, or its verdict is proven: the "
                         "fault fired (TP-FAULT), a crash names its root cause and served no wrong answer first, "
                         "no process is left behind; never DIVERGED (a wrong answer served) or HARNESS_ERROR (an "
                         "end the evidence cannot explain)",
    "straggler": "a schedule of sleep(S) only delays collectives: it must end CLEAN, or crash on the engine's own "
                 "timeout, never hang",
    "same-output-at-every-world-size": "the healthy output is the same at every world size the engine accepts "
                                       "(checked once per explore)",
}


@dataclass(frozen=True, kw_only=True)
class EngineSchedule:
    """One explored run of an engine: the faults and the world size."""

    world_size: int
    """Ranks."""
    faults: tuple[Fault, ...]
    """``collective.<op>`` faults armed together."""
    env: tuple[tuple[str, str], ...] = ()
    """The user's ``--env`` (explore sets none of its own: an engine declares no knob)."""

    def expect(self) -> str:
        """The ``--expect`` words the run is supervised and judged with (its reproducer carries the same): what
        ``check`` accepts, so a run's own verdict is PASS exactly when it keeps the invariant's outcome rule.
        A straggler schedule may not hang (it runs to the deadline); any other ends at a proven stall."""
        return "clean,crash" if self.straggler else "clean,crash,hang"

    @property
    def straggler(self) -> bool:
        """Every fault a ``sleep(S)``: the run must not hang (rule straggler)."""
        return all(f.action.startswith("sleep(") for f in self.faults)

    def scenario(self, sid: str) -> Scenario:
        """This schedule as ``run --engine --fault ... --expect ...`` builds it: the same supervision."""
        base = adhoc.scenario(faults=[f.spec() for f in self.faults], expect=self.expect(), signatures=[],
                              env=[f"{k}={v}" for k, v in self.env])
        return replace(base, id=sid, world_size=self.world_size,
                       title="explore --engine: " + "; ".join(f.spec() for f in self.faults))

    def rerun(self, engine: tuple[str, ...], **run) -> Rerun:
        """The ``run --engine`` command that runs this schedule alone (``run``: launch, output regex, ...)."""
        return Rerun(engine=engine, faults=tuple(f.spec() for f in self.faults), expect=self.expect(),
                     world_size=self.world_size, env=dict(self.env), **run)

    def to_json(self) -> dict:
        """The schedule as recorded in reports."""
        return {"world_size": self.world_size, "faults": [f.spec() for f in self.faults], "env": dict(self.env)}


Counts = dict[int, dict[str, int]]
"""rank -> op -> how many of that op the rank issued in the discovery run."""


def counted(result: Result) -> Counts:
    """Per rank and op, the collectives of a discovery run (its ``TP-FAULT ... op=NAME`` lines)."""
    counts: Counts = {}
    for r in result.ranks:
        ops = counts.setdefault(r.rank, {})
        for line in logs.contract_lines(logs.read_text(Path(r.log))) if r.log else ():
            if line.kind == "TP-FAULT" and line.fields.get("op"):
                ops[str(line.fields["op"])] = ops.get(str(line.fields["op"]), 0) + 1
    return counts


def per_rank(counts: Counts) -> str:
    """``25 collectives per rank (all_reduce 24, broadcast 1)``; rank by rank where the ranks issue different ones."""
    said = {rank: (sum(ops.values()), ", ".join(f"{op} {n}" for op, n in sorted(ops.items())))
            for rank, ops in sorted(counts.items())}
    if len(set(said.values())) == 1:
        total, ops = next(iter(said.values()))
        return f"{total} collectives per rank" + (f" ({ops})" if ops else "")
    return "collectives per rank: " + "; ".join(f"rank {rank}: {total}" + (f" ({ops})" if ops else "")
                                                for rank, (total, ops) in said.items())


def deck_pair(seed: int, index: int, ops: list[str]) -> tuple[str, str]:
    """The (op, action) schedule ``index`` starts with: every pair once per ``len(ops) * len(ACTIONS)`` runs."""
    pairs = [(op, action) for op in ops for action in ACTIONS]
    order = random.Random(f"{seed}:deck").sample(range(len(pairs)), len(pairs))
    return pairs[order[index % len(pairs)]]


def generate(seed: int, index: int, counts: dict[int, Counts], *, ops: list[str],
             faults_per_run: tuple[int, int]) -> EngineSchedule:
    """Schedule ``index`` of ``seed`` over ``counts`` (world size -> the discovery run's counts there)."""
    rng = random.Random(f"{seed}:{index}")
    op, action = deck_pair(seed, index, ops)
    sizes = [ws for ws in sorted(counts) if _issuers(counts[ws], op)] or sorted(counts)
    ws = rng.choice(sizes)
    faults = [_fault(rng, op, action, counts[ws])]
    for _ in range(rng.randint(*faults_per_run) - 1):
        more = rng.choice([o for o in ops if _issuers(counts[ws], o)] or [op])
        faults.append(_fault(rng, more, rng.choice(ACTIONS), counts[ws]))
    return EngineSchedule(world_size=ws, faults=tuple(dict.fromkeys(faults)))


def _issuers(counts: Counts, op: str) -> list[int]:
    return [rank for rank, ops in sorted(counts.items()) if ops.get(op)]


def _fault(rng: random.Random, op: str, action: str, counts: Counts) -> Fault:
    """``action`` at one call of ``op`` that a rank really makes (any rank when no rank issues it here)."""
    ranks = _issuers(counts, op) or sorted(counts)
    rank = rng.choice(ranks)
    call = rng.randint(1, max(1, counts.get(rank, {}).get(op, 1)))
    return Fault(site=f"collective.{op}", action=action, rank=rank, call=call)


def shrink_candidates(s: EngineSchedule, counts: dict[int, Counts]) -> list[EngineSchedule]:
    """Smaller schedules, most promising first: fewer faults, the smallest world size, earlier calls."""
    out = [replace(s, faults=s.faults[:i] + s.faults[i + 1:]) for i in range(len(s.faults))] if len(s.faults) > 1 else []
    smallest = min(counts)
    if smallest < s.world_size:
        out.append(replace(s, world_size=smallest, faults=tuple(_refit(f, counts[smallest]) for f in s.faults)))
    for i, f in enumerate(s.faults):
        earlier = [replace(f, call=c) for c in dict.fromkeys((1, f.call // 2, f.call - 1)) if 1 <= c < f.call]
        out += [replace(s, faults=s.faults[:i] + (g,) + s.faults[i + 1:]) for g in earlier]
    return out


def _refit(f: Fault, counts: Counts) -> Fault:
    """``f`` at a smaller world size: the last rank there if its own is gone, its call if that rank makes it."""
    rank = f.rank if f.rank in counts else max(counts)
    made = counts[rank].get(f.site.partition(".")[2], 0)
    return replace(f, rank=rank, call=min(f.call or 1, made) if made else f.call)


def check(result: Result, schedule: EngineSchedule) -> list[str]:
    """Every way ``result`` breaks the engine's invariant (``RULES``), one sentence each; empty when it holds."""
    observed, broken = result.observed, []
    if observed == "DIVERGED":
        broken.append(f"DIVERGED: the engine finished but served another answer than its healthy run "
                      f"(rule clean-or-evidence): {result.reason[:400]}")
    elif observed == "HARNESS_ERROR":
        broken.append(f"HARNESS_ERROR: the evidence does not explain how the run ended (rule clean-or-evidence): "
                      f"{result.reason[:400]}")
    elif observed == "CLEAN" and result.digests.get("rank0_final") != result.digests.get("baseline"):
        broken.append(f"CLEAN with output {result.digests.get('rank0_final')} but the healthy run's is "
                      f"{result.digests.get('baseline')}")
    elif observed in ("CRASHED", "HUNG") and not fired(result):
        broken.append(f"{observed} though no fault fired (rule clean-or-evidence): {result.reason[:400]}")
    if observed == "CRASHED" and result.root_cause is None:
        broken.append("CRASHED with no root cause (rule clean-or-evidence)")
    if result.served_wrong:
        broken.append(f"CRASHED, but rank 0 first served output {result.digests['rank0_final']}, not the healthy "
                      f"run's {result.digests['baseline']} (rule clean-or-evidence: a wrong answer served)")
    if observed == "HUNG" and schedule.straggler:
        broken.append(f"HUNG under stragglers only (rule straggler): {result.reason[:400]}")
    if result.leftovers:
        broken.append("processes left behind: " + ", ".join(result.leftovers))
    return broken


def same_output(baselines: Iterable[tuple[int, object]]) -> list[str]:
    """The world-size rule over ``(world size, Baseline)`` pairs of the sizes the engine accepts."""
    seen = [(ws, b.digest) for ws, b in baselines]
    if len({d for _, d in seen}) <= 1:
        return []
    shown = ", ".join(f"ws {ws}: {d}" for ws, d in seen)
    return [f"the healthy output differs between world sizes ({shown}) (rule same-output-at-every-world-size)"]
