"""Which rank failed first, and which log lines count as evidence.

The root cause is where the failure began: the one rank whose strongest injected fault fired before the first
failure (``injected_before``; the first failure is kept as ``noticed_by``), else the earliest failure; the rest
are collateral (torchelastic's ``ChildFailedError``); a ``TP-FATAL`` line that repeats the code of the rank it
names as its ``cause_rank`` follows that rank, whenever it was printed. A failure is a ``TP-FATAL`` line at its ``mono``, or a
death that wrote none: a rank its own fault killed (``kill(SIGKILL)``,
``exit(3)``) or froze (``kill(SIGSTOP)``) failed when its ``TP-FAULT`` line was
written, which is before any peer could notice; any other non-zero exit at the
moment the harness saw it. So a worker SIGKILLed by the fault is the root
cause, and rank 0's ``PEER_LOST`` about it is collateral.

Once the harness starts reaping a hung run (SIGTERM to the process tree), what
ranks write is the reaping's doing: those lines never count as signatures and
never name a root cause. The supervisor records each log's size at that
moment (``Observation.reap_offsets``); lines stamped later than it are dropped
too, for logs whose size was not recorded.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from contract.faults import Action
from harness.supervise import logs

if TYPE_CHECKING:
    from harness.judge.result import RankResult
    from harness.supervise.observation import Observation



def reap_cutoff(obs: Observation) -> float | None:
    """``time.monotonic()`` when reaping began (SIGTERM to the tree), or when the hang was declared."""
    if not obs.hung:
        return None
    return obs.verdict_at if obs.verdict_at is not None else obs.hung_at


def before_reap(text: str, obs: Observation, rank: int) -> str:
    """The part of ``rank``'s log ``text`` written before the harness started reaping."""
    offset = obs.reap_offsets.get(rank)
    if offset is not None:
        path = obs.log_paths.get(rank)
        text = _head(path, offset) if path is not None else text
    cutoff = reap_cutoff(obs)
    if cutoff is None:
        return text
    kept = []
    for line in text.splitlines():
        parsed = logs.parse_line(line)
        if parsed is not None and parsed.mono is not None and parsed.mono >= cutoff:
            break  # everything from here on was written while the harness reaped
        kept.append(line)
    return "\n".join(kept)


def _head(path: Path, nbytes: int) -> str:
    """The first ``nbytes`` of the log, bounded like ``logs.read_text``."""
    try:
        with path.open("rb") as fh:
            data = fh.read(min(nbytes, logs.READ_CAP_BYTES))
    except FileNotFoundError:
        return ""
    return "\n".join(raw.decode("utf-8", "replace")[: logs.MAX_LINE_BYTES] for raw in data.split(b"\n"))


def fault_that_ended(r: RankResult, text: str, frozen: bool) -> logs.LogLine | None:
    """The ``TP-FAULT`` line of ``r``'s own fault that ended it the way its action does (kill, exit, SIGSTOP)."""
    for fault in (ln for ln in logs.contract_lines(text) if ln.kind == "TP-FAULT"):
        act = Action.parse(str(fault.fields.get("action", "")))
        if act is None or act.returncode is None:
            continue
        if act.freezes and frozen:
            return fault
        if act.returncode == r.returncode and not r.reaped:
            return fault
    return None


def died_first_after_own_fault(r: RankResult, text: str, obs: Observation) -> logs.LogLine | None:
    """The ``TP-FAULT`` line of ``r``'s own fault when ``r`` then died, with no TP-FATAL, before any other rank
    ended badly: the failure began with its fault, however late the harness saw it die. (A peer that noticed
    first, e.g. an engine timeout, printed its TP-FATAL while this rank was still dying: it is collateral.)"""
    ex = obs.exits.get(r.rank)
    if ex is None or ex.mono is None:
        return None
    fault = next((ln for ln in logs.contract_lines(text) if ln.kind == "TP-FAULT" and ln.mono is not None
                  and str(ln.fields.get("rank")) == str(r.rank)), None)
    others = [e.mono for rank, e in obs.exits.items() if rank != r.rank and e.returncode != 0]
    if fault is None or any(m is None or m <= ex.mono for m in others):
        return None
    return fault


def _death_without_fatal(r: RankResult, text: str, obs: Observation, cutoff: float | None) -> list[tuple]:
    """The failure of ``r``, which died on its own with no TP-FATAL line (none when reaping had begun): at its own
    fault's line when it died first after that fault fired, else when the harness saw it die."""
    ex = obs.exits.get(r.rank)
    mono = ex.mono if ex is not None and ex.mono is not None else float("inf")
    if cutoff is not None and mono >= cutoff:
        return []
    own = died_first_after_own_fault(r, text, obs)
    if own is not None:
        return [(own.mono, r.rank, None, own.raw,
                 f"{r.exit} without a TP-FATAL line after its own fault fired, before any other rank ended")]
    return [(mono, r.rank, None, f"rank {r.rank} {r.exit} without a TP-FATAL line", f"{r.exit} without a TP-FATAL line")]


def find(ranks: list[RankResult], obs: Observation, texts: dict[int, str], *,
         harness_killed: dict[int, str] | None = None, interrupt=None) -> dict | None:
    """Where the failure began as ``{"rank", "code", "line", "how"}`` (and ``noticed_by``, the first failure,
    where an injected fault began it), with ``mono``, when the first failure happened; sets every failed rank's
    ``role``.

    ``texts`` are the logs as they stood before reaping (``before_reap``). ``harness_killed``: rank -> how a
    signal the harness sent it (a stack request) ended it; such a death is the harness's, never a failure of
    the rank. A rank ended by the scenario's ``interrupt`` failed when the harness sent it.
    """
    harness_killed = harness_killed or {}
    cutoff = reap_cutoff(obs)
    limit = obs.hung_at if obs.hung_at is not None else float("inf")
    failures = []  # (mono, rank, code, line, how)
    follows: dict[int, int] = {}  # rank -> the other rank its TP-FATAL line names as the cause
    for r in ranks:
        text = texts.get(r.rank, "")
        fatal = next((ln for ln in logs.contract_lines(text) if ln.kind == "TP-FATAL"), None)
        frozen = r.frozen or "stopped" in (r.stack_note or "")
        fault = None if fatal is not None or r.fatal else fault_that_ended(r, text, frozen)
        if r.rank in harness_killed and fatal is None:
            r.role = harness_killed[r.rank]
            continue
        if (fatal is None and fault is None and interrupt is not None and interrupt.rank == r.rank
                and obs.interrupt_at is not None and r.returncode == -signal.Signals[interrupt.signal]):
            failures.append((obs.interrupt_at, r.rank, None, f"the harness sent rank {r.rank} {interrupt.signal} "
                             f"(the scenario's interrupt): {obs.interrupt_note}",
                             f"ended by the scenario's interrupt ({interrupt.signal}, sent by the harness)"))
            continue
        if fatal is not None:
            mono = fatal.mono if fatal.mono is not None else float("inf")
            if mono < limit:
                failures.append((mono, r.rank, fatal.fields.get("code"), fatal.raw, "earliest TP-FATAL"))
                cause = str(fatal.fields.get("cause_rank", ""))
                if cause.isdigit() and int(cause) != r.rank:
                    follows[r.rank] = int(cause)
            else:
                r.role = "collateral"
        elif r.fatal:  # its TP-FATAL came after reaping began: the reaping's doing
            r.role = "collateral"
        elif fault is not None:
            how = "frozen by its own fault (SIGSTOP)" if frozen else f"ended by its own fault ({r.exit})"
            failures.append((fault.mono if fault.mono is not None else float("inf"), r.rank, None, fault.raw, how))
        elif r.returncode not in (0, None) and not r.reaped:
            failures += _death_without_fatal(r, text, obs, cutoff)
    return _began(failures, follows, ranks, texts) if failures else None


def _began(failures: list[tuple], follows: dict[int, int], ranks: list[RankResult], texts: dict[int, str]) -> dict:
    """The root cause among ``failures`` (``find``); sets the failed ranks' ``role``."""
    # A line repeating the code of the rank it names as its cause is that rank's follower, even when printed
    # first (ranks dying of rank 0's handshake verdict can print before rank 0 does). Not so a PEER_LOST
    # printed before the rank it names failed otherwise: that early claim is the first failure.
    fatal_codes = {f[1]: f[2] for f in failures if f[2] is not None}
    roots = [f for f in failures if f[1] not in follows or fatal_codes.get(follows[f[1]]) != f[2]] or failures
    root = min(roots, key=lambda f: (f[0], f[1]))
    injected = injected_before(texts, root[0]) if not root[4].startswith("ended by the scenario's interrupt") else None
    for _, rank, *_ in failures:
        ranks[rank].role = "collateral"
    mono, first, code, line, how = root
    # A rank its own fault ended (kill, exit, freeze, a death right after it) already names that fault.
    if injected is not None and (injected.rank != first or how == "earliest TP-FATAL"):
        ranks[injected.rank].role = "root cause"
        noticed = "its own" if injected.rank == first else f"rank {first}'s"
        return {"rank": injected.rank, "code": code if injected.rank == first else None, "line": injected.line.raw,
                "mono": mono, "how": f"its injected fault ({injected.line.fields.get('action', '?')}) fired "
                                     + (f"{mono - injected.mono:.3f} s " if mono != float("inf") else "")
                                     + f"before {noticed} {_failure(code)}, the first failure",
                "noticed_by": {"rank": first, "code": code, "line": line}}
    ranks[first].role = "root cause"
    return {"rank": first, "code": code, "line": line, "how": how, "mono": mono}


def _failure(code: str | None) -> str:
    return f"TP-FATAL {code}" if code else "death"


def hung_at_fault(texts: dict[int, str], ranks: list[RankResult]) -> dict | None:
    """A run that HUNG or DIVERGED with no rank failing: where it began, when faults fired on one rank only
    (``injected_before``); sets that rank's ``role``."""
    injected = injected_before(texts, float("inf"))
    if injected is None:
        return None
    ranks[injected.rank].role = "root cause"
    return {"rank": injected.rank, "code": None, "line": injected.line.raw,
            "how": f"its injected fault ({injected.line.fields.get('action', '?')}) fired; no rank failed"}


@dataclass(frozen=True)
class Injected:
    """The fault that began a failure: its rank, when it fired, its ``TP-FAULT`` line."""

    rank: int
    mono: float
    line: logs.LogLine


def injected_before(texts: dict[int, str], until: float) -> Injected | None:
    """The fault that began the failure, of those that fired before it (at ``until``): when faults of the
    strongest kind that fired (``_kind``) fired on exactly one rank, that rank's first. The detector of a desync
    is rarely its cause (a skipped collective on rank 1 is noticed by whichever rank's own timeout fires
    first), so that rank is the root cause, whoever noticed; a ``sleep(0)`` or an absorbed ``corrupt`` on
    another rank does not hide it. Faults of that kind on several ranks: the harness cannot tell which: None."""
    fired: dict[int, Injected] = {}
    for rank, text in texts.items():
        for line in logs.contract_lines(text):
            if line.kind != "TP-FAULT" or line.mono is None or line.mono > until:
                continue
            named = str(line.fields.get("rank", rank))
            who = int(named) if named.isdigit() else rank
            if who not in texts:  # a rank the run does not have: no line of it can be a cause here
                continue
            held = fired.get(who)
            if held is None or (_kind(line), line.mono) < (_kind(held.line), held.mono):
                fired[who] = Injected(rank=who, mono=line.mono, line=line)
    strongest = min((_kind(i.line) for i in fired.values()), default=None)
    ranks = [i for i in fired.values() if _kind(i.line) == strongest]
    return ranks[0] if len(ranks) == 1 else None


def _kind(line: logs.LogLine) -> int:
    """How directly a fault's action begins a failure: 2 changes a tensor's values only (``corrupt``, which a
    greedy decoder may absorb) or nothing (``sleep(0)``), 1 delays a rank (``sleep(S)``), 0 anything else: it
    stops a rank or changes what it does next (hang, skip, extra, raise, kill, exit; the TP path's ``flip`` and
    ``set``, which change a decision: FM-03's flipped recompute flag desyncs the group)."""
    act = Action.parse(str(line.fields.get("action", "")))
    if act is None:
        return 0
    if act.name == "corrupt" or (act.name == "sleep" and not act.seconds):
        return 2
    return 1 if act.name == "sleep" else 0


def describe(root: dict | None) -> str:
    """One line for reports: ``rank 1, ended by its own fault (SIGKILL): TP-FAULT site=... action=kill(SIGKILL)``."""
    if not root:
        return "none (no rank failed)"
    code = f" {root['code']}" if root.get("code") else ""
    how = f", {root['how']}" if root.get("how") else ""
    return f"rank {root['rank']}{code}{how}: {root['line']}"
