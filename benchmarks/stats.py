"""Small statistics and the description of the box the numbers were taken on.

Percentiles interpolate linearly between order statistics (numpy's default),
so the p95 of 20 samples lies between the 19th and the 20th.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``; ValueError when empty."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float], *, digits: int = 4) -> dict:
    """``n``, ``median``, ``p95``, ``min``, ``max`` of ``values`` (None for each when empty)."""
    if not values:
        return {"n": 0, "median": None, "p95": None, "min": None, "max": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), digits),
        "p95": round(percentile(values, 95), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def spread(values: Sequence[float], *, digits: int = 2) -> dict:
    """``median`` with its 95 % ``ci95``, ``p25``, ``p75``, ``min``, ``max`` of repeated measurements of one thing."""
    if not values:
        return {"n": 0, "median": None, "ci95": None, "p25": None, "p75": None, "min": None, "max": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), digits),
        "ci95": [round(x, digits) for x in median_ci(values)],
        "p25": round(percentile(values, 25), digits),
        "p75": round(percentile(values, 75), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def median_ci(values: Sequence[float], *, confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: order statistics from the binomial(n, 1/2).

    With few values the widest interval, ``(min, max)``, may cover less than ``confidence``.
    """
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("median_ci of no values")
    tail = (1.0 - confidence) / 2.0
    k, below = 0, 0.5 ** n  # P(Bin(n, 1/2) <= k)
    while k + 1 < n / 2 and below + math.comb(n, k + 1) * 0.5 ** n <= tail:
        k += 1
        below += math.comb(n, k) * 0.5 ** n
    return ordered[k], ordered[n - 1 - k]


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """What the numbers depend on: CPUs, torch, Python, OS, and the load when the run began."""
    try:
        import torch

        torch_version = torch.__version__
        torch_threads = torch.get_num_threads()
    except ImportError:  # the bench still describes the box; the sections will fail on their own
        torch_version, torch_threads = None, None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "cpu_model": _cpu_model(),
        "torch": torch_version,
        "torch_threads": torch_threads,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_at_start": load(),
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
