"""What one scenario run produced: the result types (``Outcome`` and ``Verdict`` are ``harness.declare.verdicts``'s).

Kept apart from the verdict logic (``harness.judge.outcome``) so that the
declarations (``harness.declare.scenario``), the reports and the explorer can name
outcomes and read results without importing the judge.
"""

from __future__ import annotations

import signal
from dataclasses import asdict, dataclass, field

from harness.declare.verdicts import Outcome, Verdict

RESULT_SCHEMA = 1


def exit_name(returncode: int | None) -> str:
    """``exit 40`` / ``SIGKILL`` / ``no exit status``: signals by name, never ``-9``."""
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"


@dataclass(frozen=True, kw_only=True)
class Baseline:
    """The healthy run a scenario's outputs are compared with."""

    ok: bool
    """True when the healthy run ended CLEAN with a digest."""
    digest: str | None = None
    """Rank 0's final ``output_digest`` of the healthy run."""
    reason: str = ""
    """Why the baseline is unusable (when ``ok`` is False)."""
    where: str = ""
    """Directory holding the baseline's rank logs."""
    elapsed_s: float | None = None
    """Launch to last exit of the healthy run (sizes an engine's deadline when none is given)."""


@dataclass(kw_only=True)
class RankResult:
    """How one rank ended."""

    rank: int
    """Rank number."""
    pid: int | None
    """Process id of the rank (None if it never started)."""
    exit: str
    """``exit 40``, ``SIGKILL`` or ``no exit status``."""
    returncode: int | None
    """Raw status: >= 0 exit code, < 0 signal number negated."""
    reaped: bool = False
    """True when the harness killed it (after a deadline, or frozen by its own fault)."""
    frozen: bool = False
    """True when it was an expected-frozen rank found stopped and reaped."""
    code: str | None = None
    """``code=`` of this rank's TP-FATAL line, if any."""
    fatal: str | None = None
    """This rank's first TP-FATAL line."""
    role: str = ""
    """``root cause`` or ``collateral`` for ranks that died on a fatal path."""
    output_digest: str | None = None
    """``output_digest`` of this rank's ``result`` event, if it printed one."""
    stack: str | None = None
    """Stacks this rank dumped on SIGUSR1 when the run hung."""
    stack_note: str | None = None
    """Why a hung rank has no stack (stopped, no faulthandler, silent)."""
    signatures: list[dict] = field(default_factory=list)
    """``{"regex", "matched", "line"}`` for each signature expected in this log."""
    log: str = ""
    """Path of this rank's log file."""
    log_tail: list[str] = field(default_factory=list)
    """The last lines of the log."""


@dataclass(kw_only=True)
class Result:
    """Everything known about one scenario run; ``result.json`` is its JSON."""

    id: str
    """Scenario id, e.g. ``FM-01/off``."""
    fm: str
    """Failure mode id or ``control``."""
    title: str
    """One-line description."""
    proves: str
    """Guardrail the scenario proves (or ``control``)."""
    guardrails: str | None
    """``TP_GUARDRAILS`` the ranks ran with; None for an engine, which runs with its own (the harness sets none)."""
    faults: list[str]
    """Armed failpoints as ``TP_FAILPOINTS`` entries."""
    world_size: int
    """Number of ranks."""
    chunks: int
    """Chunks each run processes."""
    backend: str
    """``gloo`` or ``nccl``."""
    launch: str
    """Launch mode used."""
    deadline_s: float
    """Seconds allowed from fault (or init) to the last rank's exit."""
    expected: list[str]
    """Allowed outcomes."""
    observed: str
    """Observed outcome."""
    passed: bool
    """True when observed is allowed and every signature matched."""
    reason: str
    """One readable paragraph: expected vs observed, per-rank exits, signatures."""
    reason_parts: dict = field(default_factory=dict)
    """The reason, structured (``harness.judge.explain``): expected, observed, ranks, root cause, signatures, notes."""
    time_to_crash_s: float | None = None
    """CRASHED only: last rank exit minus the TP-FAULT instant (or first init). A run that did not crash has none."""
    first_failure_s: float | None = None
    """CRASHED only: when the first failure happened (``root_cause``, or its ``noticed_by``), from the same
    anchor: the crash was caught then, the rest is the ranks' way out (teardown, a peer's longer timeout)."""
    anchor: str = ""
    """What time_to_crash_s counts from: ``TP-FAULT`` or ``init``."""
    root_cause: dict | None = None
    """Where the failure began (``harness.judge.rootcause``): ``{"rank", "code", "line", "how"}``, and
    ``noticed_by`` (``{"rank", "code", "line"}``, the first failure) where an injected fault began it."""
    ranks: list[RankResult] = field(default_factory=list)
    """Per-rank detail."""
    digests: dict = field(default_factory=dict)
    """Rank 0's final digest, the baseline's, and each rank's result digest."""
    abort: dict | None = None
    """Value of the ``tp/abort`` store key, if written."""
    interrupt: str | None = None
    """What the harness-side interrupt did."""
    duration_s: float | None = None
    """Wall time of the whole run as the harness saw it."""
    dir: str = ""
    """Directory holding result.json and the rank logs."""
    hang_verdict_s: float | None = None
    """HUNG only: from the TP-FAULT instant (or first init) to the verdict, stacks and traces in hand."""
    divergence: dict | None = None
    """First divergent collective from the ranks' flight traces (``harness.supervise.trace``), if they wrote any."""
    leftovers: list[str] = field(default_factory=list)
    """Processes of the run still alive after every rank was reaped (the harness killed them)."""
    stall: dict | None = None
    """A stall the flight traces proved that did not end the run (HUNG was not allowed, or a stuck rank's own
    timeout, ``awaited``, fell due before the deadline): ``{"at_s", "after", "reason", "awaited", "stacks",
    "stack_notes"}`` (``at_s`` counts from ``after``, the anchor)."""

    @property
    def verdict(self) -> str:
        """``PASS`` or ``FAIL``."""
        return (Verdict.PASS if self.passed else Verdict.FAIL).value  # plain str: it crosses execnet

    @property
    def served_wrong(self) -> bool:
        """A crash in which rank 0 still exited 0 with an output other than the healthy run's."""
        final, base = self.digests.get("rank0_final"), self.digests.get("baseline")
        return self.observed == Outcome.CRASHED.value and None not in (final, base) and final != base

    def to_json(self) -> dict:
        """The ``result.json`` document."""
        return {"schema": RESULT_SCHEMA, "verdict": self.verdict, **asdict(self)}

    def failure_text(self) -> str:
        """The reason paragraph, then each rank's stack and the tail of its log."""
        parts = [f"{self.id}: {self.reason}"]
        for rank in self.ranks:
            if rank.stack:
                parts.append(f"--- stack of rank {rank.rank} (pid {rank.pid}) ---\n{rank.stack.rstrip()}")
            elif rank.stack_note:
                parts.append(f"--- no stack for rank {rank.rank}: {rank.stack_note} ---")
        if self.stall:
            at = f"{self.stall['at_s']:.1f} s after {self.stall['after']}"
            for rank in self.ranks:
                stack = self.stall["stacks"].get(str(rank.rank))
                if stack:
                    parts.append(f"--- stack of rank {rank.rank} (pid {rank.pid}) when stalled at {at} ---\n"
                                 + stack.rstrip())
        for rank in self.ranks:
            header = f"--- rank {rank.rank} ({rank.exit}), last lines of {rank.log} ---"
            parts.append("\n".join([header, *rank.log_tail]))
        return "\n\n".join(parts)
