"""The one invariant every explored run must keep, and the rules for faults that by nature end otherwise.

A run under any fault schedule, every guardrail on, ends either CLEAN with
the healthy output digest of its world size, or CRASHED: every rank gone,
within the deadline, the first rank to die with a TP-FATAL root cause (or
the fault's own exit or signal), every other rank following on a fatal path, and
rank 0 serving no output but the healthy one on its way.
Never HUNG, DIVERGED or HARNESS_ERROR, never a rank outside the crash-only
contract (CONTRACT §3), never a process left behind.

The checker reads only the judged ``Result`` (``harness.judge.result``): what
the harness observed, never the TP path's opinion of itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.declare.fault import Fault
from harness.declare.verdicts import Outcome
from harness.judge.result import Result

# Faults that by their nature end other than "CLEAN or a proper crash": each rule, with its reason. The checker
# cites a rule by name wherever it applies one; nothing else in the checker makes exceptions.
RULES: dict[str, str] = {
    "short-sleep": "a sleep(S) shorter than half the progress timeout is a straggler inside every timeout "
                   "(heartbeats go on, the peer timeout adapts, progress resumes in time): the run must end CLEAN",
    "fenced-late-result": "driver.late_result=flip delivers a result of the previous cache epoch; the epoch fence "
                          "drops it (FM-10), so the run must end CLEAN",
    "own-exit": "a rank a fault made exit(CODE) leaves with that code and no TP-FATAL line (exit(0) included): "
                "its death is the fault's, not the contract's; its peers must still follow on a fatal path",
    "own-signal": "a rank a fault sent kill(SIG) dies of that signal with no TP-FATAL line; SIGSTOP freezes it, "
                  "so the harness reaps it once every other rank is gone (Expect.frozen), which counts as its end",
}
FATAL_EXITS = range(40, 64)


def allowed_outcomes(faults: Iterable[Fault], *, progress_timeout_s: float) -> tuple[frozenset[str], list[str]]:
    """The outcomes a schedule may end in, and the rules that narrowed them."""
    rules = [_benign_rule(f, progress_timeout_s) for f in faults]
    if rules and all(rules):
        return frozenset({Outcome.CLEAN.value}), sorted(set(rules))
    return frozenset({Outcome.CLEAN.value, Outcome.CRASHED.value}), []


def _benign_rule(fault: Fault, progress_timeout_s: float) -> str | None:
    if fault.act.seconds is not None and fault.act.seconds < progress_timeout_s / 2:
        return "short-sleep"
    if fault.site == "driver.late_result" and fault.act.name == "flip":
        return "fenced-late-result"
    return None


def own_ends(faults: Iterable[Fault], world_size: int) -> dict[int, set[int]]:
    """Per rank, the return codes its own faults may end it with (exit code, or minus the signal number)."""
    ends: dict[int, set[int]] = {r: set() for r in range(world_size)}
    for f in faults:
        code = f.act.returncode
        if code is None:
            continue
        for r in ([f.rank] if f.rank is not None else range(world_size)):
            if r in ends:
                ends[r].add(code)
    return ends


def check(result: Result, faults: tuple[Fault, ...], *, progress_timeout_s: float) -> list[str]:
    """Every way ``result`` breaks the invariant, one sentence each; empty when it holds."""
    allowed, rules = allowed_outcomes(faults, progress_timeout_s=progress_timeout_s)
    broken = []
    if result.observed not in allowed:
        because = f" (rule {', '.join(rules)})" if rules else ""
        broken.append(f"observed {result.observed}, allowed {'|'.join(sorted(allowed))}{because}: "
                      f"{result.reason[:400]}")
    if result.leftovers:
        broken.append("processes left behind: " + ", ".join(result.leftovers))
    if result.observed == Outcome.CLEAN.value:
        final, base = result.digests.get("rank0_final"), result.digests.get("baseline")
        if final != base:
            broken.append(f"CLEAN with digest {final} but the healthy run's is {base}")
    if result.observed == Outcome.CRASHED.value:
        broken += _crash_violations(result, faults)
    if result.served_wrong:
        broken.append(f"CRASHED, but rank 0 first served output {result.digests['rank0_final']}, not the healthy "
                      f"run's {result.digests['baseline']}")
    return broken


def _crash_violations(result: Result, faults: tuple[Fault, ...]) -> list[str]:
    own = own_ends(faults, result.world_size)
    frozen = {f.rank for f in faults if f.act.freezes}
    broken = []
    for r in result.ranks:
        if r.returncode is None:
            broken.append(f"rank {r.rank} has no exit status in a CRASHED run")
        elif r.frozen and (r.rank in frozen or None in frozen):
            continue  # rule own-signal: frozen by its own SIGSTOP, reaped by the harness
        elif r.returncode in own[r.rank]:
            continue  # rules own-exit / own-signal
        elif r.returncode in FATAL_EXITS and r.code:
            continue
        elif r.returncode == 0:
            broken.append(f"rank {r.rank} exited 0 while its peers crashed: it did not follow")
        else:
            broken.append(f"rank {r.rank} {r.exit} outside the crash-only contract (no TP-FATAL with an exit in "
                          f"40..63, and no fault of its own ended it so)")
    root = result.root_cause
    # Where the root cause is the rank whose injected fault began the failure, the first failure is the
    # rank that noticed it: that one must have died on the contract's terms.
    first = (root or {}).get("noticed_by") or root
    if first is None:
        broken.append("CRASHED with no root cause")
    elif first.get("code") is None and not own[first["rank"]]:
        broken.append(f"the first rank to die, rank {first['rank']}, has no TP-FATAL and no fault of its own: "
                      f"{first.get('line')}")
    if result.time_to_crash_s is None or result.time_to_crash_s > result.deadline_s:
        broken.append(f"the crash took {result.time_to_crash_s} s, deadline {result.deadline_s:g} s")
    return broken
