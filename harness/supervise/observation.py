"""What the supervisor saw of one run: each rank's exit, the log lines and store
keys that matter, and what it did on a hang. The verdict (``harness.judge.outcome``)
is computed from this and the rank logs alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.supervise import logs


@dataclass(kw_only=True)
class RankExit:
    """How and when one rank exited."""

    rank: int
    """Rank number."""
    returncode: int | None
    """Exit code, negative signal number, or None when unknown."""
    mono: float | None
    """``time.monotonic()`` when the exit was observed."""
    reaped: bool = False
    """True when the harness killed it after a deadline."""


@dataclass(kw_only=True)
class Stall:
    """A stall the flight traces proved that did not end the run: HUNG is not allowed, or a stuck rank's own
    timeout was to fire before the deadline. Recorded, and the run went on."""

    at: float
    """``time.monotonic()`` of the probe (SIGUSR1) whose answers proved it."""
    reason: str
    """Where each live rank was stuck (``harness.supervise.trace.stall_verdict``)."""
    stacks: dict[int, str] = field(default_factory=dict)
    """Rank -> the stacks it dumped for that probe."""
    stack_notes: dict[int, str] = field(default_factory=dict)
    """Rank -> why it gave no stack then."""
    traces: dict[int, dict] = field(default_factory=dict)
    """Rank -> the flight trace it dumped for that probe."""
    awaited: str | None = None
    """Where HUNG was allowed: the stuck rank's own timeout the run went on for, as its trace gave it
    (``harness.supervise.trace.own_timeout``), which is why the proof did not end the run."""
    awaited_at: float | None = None
    """``time.monotonic()`` when that timeout fell due."""


@dataclass(kw_only=True)
class Observation:
    """What the supervisor saw; the verdict is computed from this and the logs."""

    world_size: int
    """Number of ranks."""
    pids: dict[int, int]
    """Rank -> pid."""
    log_paths: dict[int, Path]
    """Rank -> log file."""
    started_at: float
    """``time.monotonic()`` when supervision began."""
    ended_at: float = 0.0
    """``time.monotonic()`` when the last rank was gone."""
    exits: dict[int, RankExit] = field(default_factory=dict)
    """Rank -> exit."""
    fault_lines: list[logs.LogLine] = field(default_factory=list)
    """Every TP-FAULT line seen."""
    init_mono: float | None = None
    """Earliest ``mono`` of a TP-EVENT init."""
    progress: dict[int, str] = field(default_factory=dict)
    """Last ``tp/progress/{rank}`` value."""
    heartbeats: dict[int, int] = field(default_factory=dict)
    """Last ``tp/hb/{rank}`` counter."""
    progress_seen_at: dict[int, float] = field(default_factory=dict)
    """Rank -> ``time.monotonic()`` when the harness last saw its ``tp/progress/{rank}`` change."""
    beat_seen_at: dict[int, float] = field(default_factory=dict)
    """Rank -> ``time.monotonic()`` when the harness last saw its heartbeat counter move."""
    abort: dict | None = None
    """Parsed ``tp/abort`` value."""
    hung: bool = False
    """True when a deadline passed with ranks alive."""
    hang_reason: str = ""
    """Which deadline passed and which ranks were alive."""
    hung_at: float | None = None
    """``time.monotonic()`` when the deadline passed (or the stall probe began); later failures are reaping's doing."""
    verdict_at: float | None = None
    """``time.monotonic()`` when HUNG was decided with stacks and traces in hand."""
    stacks: dict[int, str] = field(default_factory=dict)
    """Rank -> stacks it dumped on SIGUSR1."""
    stack_notes: dict[int, str] = field(default_factory=dict)
    """Rank -> why it has no stack (stopped, no faulthandler, silent)."""
    interrupt_sent: bool = False
    """True when the scenario's interrupt was delivered."""
    interrupt_note: str | None = None
    """What the interrupt did, or why it was not sent."""
    harness_error: str | None = None
    """A problem of the harness itself."""
    leftovers: list[str] = field(default_factory=list)
    """Processes still alive after every rank exited (killed)."""
    frozen_reaped: list[int] = field(default_factory=list)
    """Expected-frozen ranks found stopped after every other rank exited, then reaped."""
    traces: dict[int, dict] = field(default_factory=dict)
    """Rank -> flight trace (CONTRACT §6) as dumped on SIGUSR1 when the run hung, before reaping."""
    signals_sent: dict[int, list[tuple[str, float]]] = field(default_factory=dict)
    """Rank -> ``(signal name, time.monotonic())`` of every signal the harness sent it before reaping (stack
    requests, the scenario's interrupt): a death by one of them is the harness's doing, never the rank's."""
    wrapped: dict[int, int] = field(default_factory=dict)
    """Rank -> the pid its init event names, a descendant of the process the harness started (a shell script that
    runs the rank without ``exec``): signals and status go to it (``Launch.adopt``); its exit status is the
    wrapper's (a signal N reads as exit 128 + N)."""
    signal_notes: dict[int, str] = field(default_factory=dict)
    """Rank -> why the harness did not send it a stack request it wanted to (no SIGUSR1 handler installed)."""
    interrupt_at: float | None = None
    """``time.monotonic()`` when the scenario's interrupt was sent."""
    stall: Stall | None = None
    """A stall proven that did not end the run (``Stall``): the first one, with what was awaited."""
    reap_offsets: dict[int, int] = field(default_factory=dict)
    """Rank -> its log's size when reaping began: what a rank wrote later is the reaping's doing, not evidence."""

    def anchor(self) -> tuple[float | None, str]:
        """``(mono, name)`` that deadline and time-to-crash count from: the first TP-FAULT, else the scenario's
        interrupt once sent, else the first init."""
        monos = [ln.mono for ln in self.fault_lines if ln.mono is not None]
        if monos:
            return min(monos), "TP-FAULT"
        if self.interrupt_at is not None:  # the scenario's interrupt is its fault: the crash counts from it
            return self.interrupt_at, "interrupt"
        if self.init_mono is not None:
            return self.init_mono, "init"
        return None, ""
