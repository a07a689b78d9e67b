"""The supervisor's stall clock: when to ask the ranks for their flight traces.

Progress is anything a rank does that the harness can see: a log line, a
changed ``tp/progress/{rank}`` key, an exit. Heartbeats are not progress (a
hung rank's watchdog thread keeps beating), but they say the TP path's own
watchdog is alive. The loop asks for traces (SIGUSR1) only when nothing
progressed for the window, every live rank announced that it answers with a
trace (``"flight"`` in its init event) or is stopped, and no stopped rank is
still the watchdog's to catch; ``harness.supervise.trace.stall_verdict`` then decides
(a rank parked in its own fault's hang counts only where no rank has a
watchdog, so it never holds a probe back).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from harness.supervise import trace

OWN_TIMEOUT_GRACE_S = 1.0
"""After a stuck rank's own timeout falls due, how long the ranks get to act on it (raise, print, exit)
before a stall the traces still prove is a hang."""
PROVEN = "the flight traces show every live rank stuck"
"""In the hang reason of every stall verdict (a HUNG the deadline called never says it)."""
BEATS_SILENT_S = 1.0
"""With a stopped rank and the peers' watchdogs beating, a probe waits until no beat moved for this long (or
the window, if longer). It is the peers' watchdogs' horizon, not the window's: a live peer's heartbeat thread
starved for a few hundred milliseconds on a busy box is common, and a probe then would call HUNG a run those
watchdogs were about to end (their frozen-peer detector needs about half a second)."""


@dataclass(kw_only=True)
class StallClock:
    """The stall window's state inside one supervisor loop."""

    stall_s: float | None
    """No progress for this long makes a probe due; None never probes (deadline only)."""
    last_progress_at: float
    """``time.monotonic()`` of the last progress seen."""
    next_probe_at: float
    """No probe before this instant (one window after an inconclusive probe)."""
    beat_moved_at: float | None = None
    """``time.monotonic()`` when a heartbeat counter last moved."""
    flight_ranks: set[int] = field(default_factory=set)
    """Ranks whose init event says they dump a flight trace on SIGUSR1."""
    proof: str = ""
    """What the last conclusive probe's traces showed (``harness.supervise.trace.stall_verdict``), without the preamble."""

    def due(self, now: float, live: list[int], stopped_ranks: Callable[[], list[int]], *, beats_visible: bool,
            unwatched: bool = False) -> bool:
        """Whether to probe now (``stopped_ranks`` reads /proc: called only once the window has passed).

        ``beats_visible`` is False when the harness cannot read the store (a rank that serves it froze or
        died): with a stopped rank, the peers' watchdogs may be about to catch it, and only the deadline
        may call the run HUNG.
        The same while no heartbeat was ever seen (a TP path may run a watchdog whose beats the harness cannot
        see), unless ``unwatched``: every live rank's init event lists its guardrails without the watchdog.
        """
        window = self.stall_s
        if window is None or now < self.next_probe_at or now - self.last_progress_at < window:
            return False
        stopped = stopped_ranks()
        if not live or any(r not in self.flight_ranks and r not in stopped for r in live):
            return False
        # A stopped peer is the TP path's own watchdog's to catch while the others' heartbeats still run.
        if stopped and not unwatched and (not beats_visible or self.beat_moved_at is None):
            return False
        silent = max(window, BEATS_SILENT_S)
        return not (stopped and self.beat_moved_at is not None and now - self.beat_moved_at < silent)

    def back_off(self, now: float) -> None:
        """An inconclusive probe: wait another window."""
        self.next_probe_at = now + (self.stall_s or 0.0)

    def own_timeout_ahead(self, obs, *, now: float, probe_at: float, live: list[int], stopped: set[int],
                          deadline_at: float) -> tuple[float, str] | None:
        """When a stuck rank's own collective timeout fires, after ``now`` and before ``deadline_at``, and
        which (``trace.own_timeout`` on the probe's fresh traces); None when none does."""
        own = trace.own_timeout(_fresh(obs, probe_at), live=live, stopped=stopped, after=now)
        return own if own is not None and own[0] < deadline_at else None

    def wait_for(self, at: float) -> None:
        """A stuck rank's own guardrail acts at ``at``: a hang is what outlives it, so probe again only after."""
        self.next_probe_at = at + max(self.stall_s or 0.0, OWN_TIMEOUT_GRACE_S)

    def verdict(self, obs, *, probe_at: float, live: list[int], stopped: set[int],
                parked: Mapping[int, str] | None = None) -> str | None:
        """The hang reason when the probe's fresh traces prove every live rank stuck, else None."""
        if any(e.mono is not None and e.mono >= probe_at for e in obs.exits.values()):
            return None  # a rank exited meanwhile: the run is moving
        fresh = _fresh(obs, probe_at)
        why = trace.stall_verdict(fresh, live=live, stopped=stopped, world_size=obs.world_size, parked=parked)
        if why is None:
            return None
        self.proof = why
        _, name = obs.anchor()
        return (f"no progress for {self.stall_s:g} s after {name} and {PROVEN}: {why}")


def _fresh(obs, probe_at: float) -> dict[int, dict]:
    """The traces the ranks dumped for the probe sent at ``probe_at``."""
    return {r: d for r, d in obs.traces.items() if float(d.get("mono") or 0.0) >= probe_at - 1e-3}
