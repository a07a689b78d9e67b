"""What a grade runs: one row per (world size, collective, action), each one fault.

An engine's rows come from what it issues: one healthy instrumented run per world size
(``collective.any=sleep(0)`` on the graded rank: one ``TP-FAULT ... op=NAME`` line per collective, the
engine's sequence unchanged) gives every op and how often it is called. The reference TP path's rows come
from its own failpoint catalog (``REFERENCE``), because it refuses ``collective.*`` sites in ``TP_FAILPOINTS``
(``tp: no such failpoint 'collective.all_reduce'``): it is graded as it is tested, on the sites it guards.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

ACTIONS = ("hang", "skip", "extra", "raise", "corrupt", "kill(SIGKILL)", "kill(SIGSTOP)")
"""The standard matrix's actions, in the order rows are run and shown."""
CALL_PAST_STARTUP = 3
"""Without ``--call``, an op is broken at its 3rd call after start-up (or its last, if it has fewer): far enough
into the steady state that every rank is past loading, early enough that the run is mostly still ahead."""
REFERENCE_ENV = {"TP_PROGRESS_TIMEOUT_S": "1"}
"""The reference path's progress deadline in the grade: the catalog's setting for its stuck-rank proofs (FM-15).
Its default, 60 s, is for production; a grade bounded by a few seconds would call every stuck rank HUNG."""
REFERENCE: dict[str, dict[str, str]] = {
    "all_reduce": {
        "hang": "generator.call=hang@rank={rank},chunk=1,hit=1",
        "skip": "worker.skip_recompute=flip@rank={rank},chunk=1",
        "extra": "driver.plan=corrupt@chunk=1",
        "raise": "generator.call=raise@rank={rank},chunk=1,hit=1",
        "kill(SIGKILL)": "generator.call=kill(SIGKILL)@rank={rank},chunk=1,hit=1",
        "kill(SIGSTOP)": "generator.call=kill(SIGSTOP)@rank={rank},chunk=1,hit=1",
    },
    "broadcast": {
        "hang": "envelope.after_header=hang@rank=0,chunk=1",
        "raise": "envelope.after_header=raise@rank=0,chunk=1",
        "corrupt": "envelope.after_recv=corrupt@rank={rank},chunk=1",
        "kill(SIGKILL)": "envelope.after_header=kill(SIGKILL)@rank=0,chunk=1",
        "kill(SIGSTOP)": "envelope.after_header=kill(SIGSTOP)@rank=0,chunk=1",
    },
}
"""The reference path's rows: per collective and action, the failpoint of its catalog that does it. Its
all_reduces run inside a generator call (``generator.call``: the rank never enters them); a skipped
all_reduce is a worker skipping its KV-recompute call, an extra one the driver planning one call more; its
broadcast is the envelope the driver (rank 0) sends (``envelope.after_header``: header out, the rest not),
corrupted on the receiving worker. No site of it repeats or skips a broadcast: those rows do not exist."""
REFERENCE_HOW = {"generator.call": "at the start of a generator call, before its all_reduces",
                 "worker.skip_recompute": "a worker skips its KV-recompute generator call",
                 "driver.plan": "the driver plans one generator call more",
                 "envelope.after_header": "the driver, after the envelope header, before the rest",
                 "envelope.after_recv": "the received latents"}
"""What each reference site does, in the card's sentence (the row is not literally that collective)."""
_FAULT_LINE = re.compile(r"^TP-FAULT .*\bop=(\S+)", re.MULTILINE)


@dataclass(frozen=True, kw_only=True)
class Row:
    """One run of the grade: one fault, judged."""

    world_size: int
    """Ranks of this run."""
    op: str
    """The collective broken (``all_reduce``, ``broadcast``...)."""
    action: str
    """One of ``ACTIONS``."""
    fault: str
    """The ``TP_FAILPOINTS`` entry armed."""
    rank: int
    """The rank the fault is armed on."""
    call: int | None = None
    """The op's call the fault fires at (engines; None for reference rows, whose fault names its chunk)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment of every rank."""
    how: str = ""
    """How the fault does ``action`` to ``op`` where the row is not literally that (reference rows)."""

    @property
    def key(self) -> str:
        """``ws2 all_reduce hang``: what a row is called in deltas."""
        return f"ws{self.world_size} {self.op} {self.action}"

    @property
    def slug(self) -> str:
        """A scenario id for the row's directory: ``grade.all_reduce.kill-SIGKILL``."""
        return "grade." + re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{self.op}.{self.action}").strip("-")


@dataclass(frozen=True, kw_only=True)
class OpCalls:
    """How often the graded rank issued one op in its healthy run."""

    startup: int
    """Calls during start-up (before the steady state, see ``op_calls``)."""
    later: int
    """Calls after start-up."""

    def default_call(self) -> int:
        """The call a fault fires at without ``--call``: the ``CALL_PAST_STARTUP``-th after start-up."""
        return self.startup + min(CALL_PAST_STARTUP, self.later)


def ops_in(log_text: str) -> list[str]:
    """The ops of a rank's log, in order: one per ``TP-FAULT ... op=NAME`` line."""
    return _FAULT_LINE.findall(log_text)


def op_calls(sequence: list[str]) -> dict[str, OpCalls]:
    """Each op's calls before and after start-up, for ops issued after it.

    Start-up is the longest prefix of ops that never come back in the second half of the sequence (a
    DTensor engine's weight scatters): whatever the steady state (decoding) issues recurs to the end."""
    steady = set(sequence[len(sequence) // 2:])
    cut = next((i for i, op in enumerate(sequence) if op in steady), len(sequence))
    before, after = Counter(sequence[:cut]), Counter(sequence[cut:])
    return {op: OpCalls(startup=before[op], later=after[op]) for op in dict.fromkeys(sequence[cut:])}


def engine_rows(world_size: int, calls: dict[str, OpCalls], *, ops: tuple[str, ...] | None,
                actions: tuple[str, ...], rank: int, call: int | None, env: dict[str, str] | None = None) -> list[Row]:
    """An engine's rows at one world size: ``ops`` (default: every op after start-up) x ``actions``, each with
    the rank environment ``env`` (``--env``)."""
    chosen = [op for op in (ops or tuple(calls)) if op in calls]
    rows = []
    for op in chosen:
        k = call or calls[op].default_call()
        rows += [Row(world_size=world_size, op=op, action=a, rank=rank, call=k, env=dict(env or {}),
                     fault=f"collective.{op}={a}@rank={rank},call={k}") for a in actions
                 if not (a == "corrupt" and op in NO_DATA)]
    return rows


NO_DATA = ("barrier", "monitored_barrier")
"""Collectives that carry no tensor of the engine's: a ``corrupt`` row of one would grade nothing ("unaffected")."""


def reference_rows(world_size: int, *, ops: tuple[str, ...] | None, actions: tuple[str, ...],
                   rank: int) -> list[Row]:
    """The reference path's rows at one world size, from ``REFERENCE``."""
    rows = []
    for op in ops or tuple(REFERENCE):
        for action in actions:
            spec = REFERENCE.get(op, {}).get(action)
            if spec is not None:
                fault = spec.format(rank=rank)
                acts_on = re.search(r"\brank=(\d+)", fault)  # the driver's sites act on rank 0, whatever --rank
                rows.append(Row(world_size=world_size, op=op, action=action, fault=fault, env=dict(REFERENCE_ENV),
                                rank=int(acts_on[1]) if acts_on else 0, how=REFERENCE_HOW[fault.split("=")[0]]))
    return rows
