"""What the attribution run breaks: the catalog's hang and desync proofs, and seeded explore schedules.

Each case carries its ground-truth culprit rank and a fault kind. Kinds are the ways a rank can break a
collective job that users ask a hang analyzer about; a catalog proof is filed under the kind of what its
culprit does, an explore schedule under its action (and, for the site-specific actions, its site).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from harness.declare.scenario import Scenario, load_catalog
from harness.declare.verdicts import Outcome
from harness.explore import schedules as explore

KINDS = ("skip", "extra", "hang in Python", "hang in a collective", "SIGSTOP", "SIGKILL", "corrupt",
         "dtype/shape mismatch")
FR_ENV = {"TORCH_FR_BUFFER_SIZE": "20000"}
"""Turns PyTorch's Flight Recorder on in every rank (a ring long enough for a whole run)."""

CATALOG_KINDS = {
    "FM-01/off": "dtype/shape mismatch",  # meta fails after the header: the driver's next broadcast has another shape
    "FM-02/off": "dtype/shape mismatch",  # uint16 latents: the workers expect another tensor
    "FM-03/off": "extra",  # a worker runs a call nobody joins
    "FM-03/worker-off": "extra",
    "FM-03/skip-off": "skip",
    "FM-04/off": "extra",  # an all_reduce only rank 1 calls
    "FM-04/last-rank-off": "skip",  # the last rank skips a digest all_gather
    "FM-05/off": "extra",
    "FM-05/role-off": "hang in a collective",  # two drivers: both wait inside a broadcast each roots itself
    "FM-06/off": "corrupt",
    "FM-07/off": "corrupt",
    "FM-08/off": "corrupt",
    "FM-09/off": "corrupt",
    "FM-10/off": "corrupt",
    "FM-10/worker-off": "corrupt",
    "FM-10/worker-at-cut-off": "extra",
    "FM-11/off": "corrupt",
    "FM-11/last-off": "corrupt",
    "FM-12/off": "corrupt",
    "FM-13/off": "SIGSTOP",
    "FM-14/off": "SIGSTOP",
    "FM-15/off": "hang in Python",
    "FM-15/handshake-off": "hang in Python",
}
"""Catalog proofs scored, by kind. FM-15/busy-peer-off is left out: it breaks two ranks, so no one culprit."""

SITE_KINDS = {"worker.skip_recompute": "skip", "driver.plan": "extra", "worker.replay": "extra",
              "driver.latents": "dtype/shape mismatch", "driver.meta": "dtype/shape mismatch",
              "envelope.after_recv": "corrupt", "model.shard": "corrupt", "worker.stale_override": "corrupt",
              "driver.override": "corrupt", "driver.aux": "corrupt", "driver.late_result": "corrupt"}
ACTION_KINDS = {"kill(SIGKILL)": "SIGKILL", "kill(SIGSTOP)": "SIGSTOP", "hang": "hang in Python"}


@dataclass(frozen=True, kw_only=True)
class Case:
    """One run to score."""

    scenario: Scenario
    """What runs (Flight Recorder on)."""
    kind: str
    """One of ``KINDS``."""
    culprit: int
    """The rank the fault breaks."""
    source: str
    """``catalog`` or ``explore seed S #I``."""


def culprit_of(scenario: Scenario) -> int | None:
    """The one rank a scenario breaks: its faults' rank, or the one rank whose environment differs."""
    ranks = {f.rank for f in scenario.faults} | set((scenario.rank_env or {}).keys())
    return ranks.pop() if len(ranks) == 1 and None not in ranks else None


def kind_of(scenario: Scenario) -> str | None:
    if scenario.id in CATALOG_KINDS:
        return CATALOG_KINDS[scenario.id]
    if len(scenario.faults) != 1:
        return None
    fault = scenario.faults[0]
    return ACTION_KINDS.get(fault.action) or (SITE_KINDS.get(fault.site) if not fault.action.startswith(
        ("raise", "exit", "sleep")) else None)


def with_fr(scenario: Scenario, sid: str | None = None) -> Scenario:
    return replace(scenario, id=sid or scenario.id, env={**scenario.env, **FR_ENV})


def catalog(world_sizes: tuple[int, ...], *, every_size: bool = False) -> list[Case]:
    """Every scored hang/desync proof at the first of ``world_sizes`` (a fixed world size at its own), and at
    the others the first proof of each kind (all of them with ``every_size``): every kind at every size."""
    cases = []
    for i, ws in enumerate(world_sizes):
        kinds_done = set()
        for s in load_catalog():
            kind, culprit = CATALOG_KINDS.get(s.id), culprit_of(s)
            if kind is None or culprit is None or not s.expect.outcomes & {Outcome.HUNG, Outcome.DIVERGED}:
                continue
            if s.world_size not in (None, ws) or (s.world_size is None and i and kind in kinds_done and not every_size):
                continue
            if culprit >= ws or s.skip_reason(ws):
                continue
            kinds_done.add(kind)
            cases.append(Case(scenario=with_fr(replace(s, world_size=ws)), kind=kind, culprit=culprit,
                              source="catalog"))
    return cases


def explored(*, seed: int, count: int, world_sizes: tuple[int, ...], tp_command: tuple[str, ...],
             env: dict[str, str]) -> list[Case]:
    """``count`` single-fault explore schedules of ``seed`` whose fault has a kind, kinds taken in turn."""
    sites = explore.declared_sites(tp_command, env)
    knobs = explore.tuned(tp_command, env)
    by_kind: dict[str, list[Case]] = {}
    for index in range(count * 40):
        schedule = replace(explore.generate(seed, index, sites, world_sizes=world_sizes, faults_per_run=(1, 1)),
                           knobs=knobs)
        s = schedule.scenario(f"explore-{seed}-{index}")
        kind, culprit = kind_of(s), culprit_of(s)
        if kind is not None and culprit is not None:
            by_kind.setdefault(kind, []).append(Case(scenario=with_fr(s), kind=kind, culprit=culprit,
                                                     source=f"explore seed {seed} #{index}"))
    order = [k for k in KINDS if k in by_kind]
    random.Random(seed).shuffle(order)
    picked: list[Case] = []
    while len(picked) < count and any(by_kind.get(k) for k in order):
        for k in order:
            if by_kind.get(k) and len(picked) < count:
                picked.append(by_kind[k].pop(0))
    return picked
