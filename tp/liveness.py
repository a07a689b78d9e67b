"""How long a peer's heartbeat may stay still before the peer counts as lost.

A fixed timeout has to be set for the worst scheduling hiccup the box will
ever see, so it is slow on every healthy box (2 s). This detector learns
from the arrivals it observes instead: each peer's timeout is the mean of its
recent heartbeat gaps plus ``k`` standard deviations, clamped to
``[floor_s, ceiling_s]``.

This is the phi-accrual detector (Hayashibara et al., as used by Akka and
Cassandra) with a normal model, reduced to the one number the watchdog needs:
with phi = -log10(P(gap > t)), a threshold phi maps to t = mean + k * std for
a fixed k, so a threshold on phi and a timeout of mean + k*std are the same
decision. ``k = 8`` is phi ~ 15: a healthy peer whose gaps stay normal is
never declared lost. The floor absorbs what a normal model gets wrong (gaps
are quantised to the poll interval and come in bursts when a loaded box
deschedules a rank); the ceiling keeps the old fixed timeout as the bound.
A fault can strike a tenth of a second after start, before any gap is seen,
so the window starts with two made-up gaps around the expected beat interval
(``expected_s`` -/+ a quarter, as Akka bootstraps its phi-accrual detector);
real gaps soon outweigh them.
"""

from __future__ import annotations

import collections
import math


class Arrivals:
    """One peer's heartbeat gaps and the timeout they imply."""

    def __init__(self, *, floor_s: float, ceiling_s: float, expected_s: float, k: float = 8.0,
                 window: int = 200) -> None:
        if not 0 < floor_s <= ceiling_s:
            raise ValueError(f"liveness: need 0 < floor ({floor_s}) <= ceiling ({ceiling_s})")
        self.floor_s, self.ceiling_s, self.k = floor_s, ceiling_s, k
        self.gaps: collections.deque[float] = collections.deque(maxlen=window)
        self._sum = self._sumsq = 0.0
        self.last: float | None = None
        for gap in (0.75 * expected_s, 1.25 * expected_s):
            self._add(gap)

    def arrived(self, now: float) -> None:
        """The peer's heartbeat was seen to move at ``now``."""
        if self.last is not None:
            self._add(now - self.last)
        self.last = now

    def _add(self, gap: float) -> None:
        if len(self.gaps) == self.gaps.maxlen:
            old = self.gaps[0]
            self._sum -= old
            self._sumsq -= old * old
        self.gaps.append(gap)
        self._sum += gap
        self._sumsq += gap * gap

    def timeout(self) -> float:
        """Seconds of silence after which the peer is lost."""
        n = len(self.gaps)
        mean = self._sum / n
        std = math.sqrt(max(0.0, self._sumsq / n - mean * mean))
        return min(self.ceiling_s, max(self.floor_s, mean + self.k * std))

    def describe(self) -> str:
        n = len(self.gaps)
        mean = self._sum / n if n else 0.0
        return f"adaptive timeout {self.timeout():.2f} s from {n} gaps (mean {mean * 1e3:.0f} ms)"
