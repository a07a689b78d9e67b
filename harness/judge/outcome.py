"""The verdict: what was expected versus what was observed.

The observed outcome is decided here from exit statuses, log lines and output
digests alone. The TP path's own opinion (say, a "digest ok" event) is never
trusted: divergence is judged by comparing outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.declare.verdicts import Outcome, Verdict
from harness.judge import evidence, explain, rootcause
from harness.judge.result import Baseline, RankResult, Result, exit_name
from harness.supervise import logs, trace

if TYPE_CHECKING:
    from harness.declare.scenario import Scenario
    from harness.supervise.observation import Observation

def judge(
    scenario: Scenario,
    obs: Observation,
    *,
    deadline_s: float,
    baseline: Callable[[], Baseline],
    meta: dict,
    codes: dict[str, int] | None = None,
) -> Result:
    """Compare what ``obs`` shows with ``scenario.expect``; build the Result.

    ``baseline`` is called only when rank 0 exited 0 with an output (to tell CLEAN from DIVERGED, or whether a
    crash served a wrong answer first). ``meta``: run settings (backend, launch, chunks, dir) for the result;
    backend ``engine``: an engine started as given, with its own guardrails. ``codes``: the rank command's fatal
    code -> exit status table (None: it gave none, so any TP-FATAL code goes with any non-zero exit).
    """
    texts = {r: logs.read_text(path) for r, path in obs.log_paths.items()}
    ranks = [_rank_result(r, obs, texts.get(r, "")) for r in range(obs.world_size)]
    # Evidence is what ranks wrote before the harness started reaping them.
    before = {r: rootcause.before_reap(text, obs, r) for r, text in texts.items()}
    killed = {r.rank: how for r in ranks if (how := evidence.killed_by_harness(r, obs, scenario))}
    root = rootcause.find(ranks, obs, before, harness_killed=killed, interrupt=scenario.interrupt)
    (anchor_mono, anchor), first_mono = obs.anchor(), root.pop("mono") if root is not None else None
    digests: dict = {"per_rank": {r.rank: r.output_digest for r in ranks if r.output_digest}}
    engine = meta.get("backend") == "engine"
    observed, why = _observe(scenario, obs, ranks, texts, baseline, digests, codes, killed, engine=engine,
                             output_regex=meta.get("output_regex"))
    if root is None and observed in (Outcome.HUNG, Outcome.DIVERGED):
        root = rootcause.hung_at_fault(before, ranks)
    ttc = _time_to_crash(obs, anchor_mono) if observed is Outcome.CRASHED else None
    first_s = _since(first_mono, anchor_mono) if ttc is not None else None
    divergence = _divergence(obs, ranks, texts) if observed in _TRACED else None
    if divergence is not None:
        why = (why + "; " if why else "") + f"first divergent collective: {divergence.line}"

    sig_errors = _check_signatures(scenario, obs, ranks, before, observed, divergence)
    missing = [(r.rank, s["regex"]) for r in ranks for s in r.signatures if not s["matched"]]
    unfired = evidence.unfired(scenario, obs, texts)
    first = evidence.never_fired(scenario, unfired, obs)
    passed = observed in scenario.expect.outcomes and not missing and not sig_errors and not first
    expected = sorted(scenario.expect.outcomes, key=list(Outcome).index)

    parts = _reason(expected=expected, observed=observed, why=why, ttc=ttc, first_s=first_s, anchor=anchor, obs=obs,
                    ranks=ranks, missing=missing, sig_errors=sig_errors, deadline_s=deadline_s, root=root,
                    first=first, unfired=[] if first else unfired, passed=passed)
    return Result(
        id=scenario.id, fm=scenario.fm, title=scenario.title, proves=scenario.proves,
        guardrails=None if engine else scenario.guardrails, faults=[f.spec() for f in scenario.faults],
        world_size=obs.world_size, chunks=scenario.chunks, deadline_s=deadline_s,
        expected=[o.value for o in expected], observed=observed.value, passed=passed,
        reason=explain.paragraph(parts), reason_parts=parts,
        time_to_crash_s=ttc, first_failure_s=first_s, anchor=anchor, root_cause=root, ranks=ranks,
        digests=digests, abort=obs.abort, interrupt=obs.interrupt_note,
        duration_s=round(obs.ended_at - obs.started_at, 3),
        backend=meta["backend"], launch=meta["launch"], dir=meta["dir"],
        divergence=divergence.to_json() if divergence is not None else None,
        leftovers=list(obs.leftovers), stall=_stall(obs, anchor_mono, anchor),
        hang_verdict_s=(round(obs.verdict_at - anchor_mono, 4)
                        if obs.hung and obs.verdict_at is not None and anchor_mono is not None else None),
    )


_TRACED = (Outcome.HUNG, Outcome.CRASHED, Outcome.DIVERGED)
FIRST_FAILURE_SHOWN_S = 0.5
"""The reason says when the first failure happened where the last rank's exit came this much later (a slow
teardown, a peer's longer timeout): the time to crash alone would hide how soon the failure was caught."""


def _stall(obs: Observation, anchor_mono: float | None, anchor: str) -> dict | None:
    """The stall a probe proved while HUNG was not allowed (the run went on), as ``Result.stall``."""
    if obs.stall is None:
        return None
    at_s = round(obs.stall.at - anchor_mono, 3) if anchor_mono is not None else None
    return {"at_s": at_s, "after": anchor, "reason": obs.stall.reason, "awaited": obs.stall.awaited,
            "stacks": {str(r): t for r, t in obs.stall.stacks.items()},
            "stack_notes": {str(r): t for r, t in obs.stall.stack_notes.items()}}


def _since(mono: float | None, anchor_mono: float | None) -> float | None:
    """``mono`` counted from the anchor, when both are known."""
    if mono is None or anchor_mono is None or mono == float("inf"):
        return None
    return round(max(0.0, mono - anchor_mono), 4)


def _time_to_crash(obs: Observation, anchor_mono: float | None) -> float | None:
    """The last rank's exit minus the anchor; None unless every rank exited and nothing hung."""
    # Expected-frozen ranks were reaped by the harness: the crash is over when the last other rank exits.
    last_exit = max((e.mono for r, e in obs.exits.items() if e.mono is not None and r not in obs.frozen_reaped),
                    default=None)
    if obs.hung or anchor_mono is None or last_exit is None or len(obs.exits) != obs.world_size:
        return None
    return round(max(0.0, last_exit - anchor_mono), 4)


SEEN_SLACK_S = 0.25
"""What the harness saw at a poll (a store key, an exit) happened up to this much earlier."""
_PROGRESS_EVENTS = ("chunk", "result", "handshake")


def _signs_of_life(obs: Observation, texts: dict[int, str]) -> tuple[dict[int, float], dict[int, float]]:
    """Per rank, when it last progressed (a chunk, a fault, a progress key) and last showed any life at all
    (also any stamped line, a heartbeat, its exit): what makes an older flight trace stale (``trace.stale``)."""
    progress: dict[int, float] = {}
    alive: dict[int, float] = {}
    for rank, text in texts.items():
        for line in logs.contract_lines(text):
            if line.mono is None:
                continue
            alive[rank] = max(alive.get(rank, 0.0), line.mono)
            if line.kind == "TP-FAULT" or line.event in _PROGRESS_EVENTS:
                progress[rank] = max(progress.get(rank, 0.0), line.mono)
    for rank, at in obs.progress_seen_at.items():
        progress[rank] = max(progress.get(rank, 0.0), at - SEEN_SLACK_S)
    seen = [*obs.beat_seen_at.items(), *((r, e.mono) for r, e in obs.exits.items() if e.mono is not None)]
    for rank, at in [*seen, *progress.items()]:
        alive[rank] = max(alive.get(rank, 0.0), at - (SEEN_SLACK_S if (rank, at) in seen else 0.0))
    return progress, alive


def _divergence(obs: Observation, ranks: list[RankResult], texts: dict[int, str]) -> trace.Divergence | None:
    notes = {r.rank: "stopped by SIGSTOP" if r.frozen or "stopped" in (r.stack_note or "") else r.exit for r in ranks}
    log_dir = next(iter(obs.log_paths.values())).parent if obs.log_paths else None
    progress, alive = _signs_of_life(obs, texts)
    return trace.for_run(traces=obs.traces, log_dir=log_dir, world_size=obs.world_size, texts=texts, notes=notes,
                         progress_at=progress, alive_at=alive)


SHELL_SIGNALLED = range(129, 193)
"""A shell reports a child that died of signal N as exit 128 + N."""


def _rank_result(rank: int, obs: Observation, text: str) -> RankResult:
    ex = obs.exits.get(rank)
    returncode = ex.returncode if ex else None
    if rank in obs.wrapped and returncode in SHELL_SIGNALLED:
        returncode = 128 - returncode  # the rank under its wrapper died of that signal: judged as the rank's
    fatal = next((ln for ln in logs.contract_lines(text) if ln.kind == "TP-FATAL"), None)
    result_ev = [ln for ln in logs.contract_lines(text) if ln.event == "result"]
    return RankResult(
        rank=rank, pid=obs.pids.get(rank), exit=exit_name(returncode) if ex else "still running" if rank in obs.pids else "never started",
        returncode=returncode, reaped=bool(ex and ex.reaped), frozen=rank in obs.frozen_reaped,
        code=fatal.fields.get("code") if fatal else None,
        fatal=fatal.raw if fatal else None,
        output_digest=result_ev[-1].fields.get("output_digest") if result_ev else None,
        stack=obs.stacks.get(rank), stack_note=obs.stack_notes.get(rank),
        log=str(obs.log_paths.get(rank, "")), log_tail=logs.tail(text),
    )


def _observe(scenario, obs, ranks, texts, baseline, digests, codes=None, killed=None,
             engine=False, output_regex=None) -> tuple[Outcome, str]:
    """The observed outcome and, for the reason, why it was classed so."""
    if obs.harness_error:
        return Outcome.HARNESS_ERROR, obs.harness_error
    if obs.hung:
        return Outcome.HUNG, obs.hang_reason
    # An engine's exit 2 after its fault fired is how it crashed (``evidence.unproven_crash``), not a failed start.
    rejected = [r for r in ranks if r.returncode == 2 and not (engine and obs.fault_lines)]
    if rejected:
        r = rejected[0]
        last = (evidence.own_lines(r.log_tail) or r.log_tail or ["(empty log)"])[-1]
        if engine:  # an engine promised no CONTRACT §3: exit 2 is Python's (a file it cannot open, a usage error)
            return Outcome.HARNESS_ERROR, f"the engine command failed in rank {r.rank} (exit 2): {last}"
        return Outcome.HARNESS_ERROR, f"the TP path rejected its configuration (rank {r.rank} exit 2, CONTRACT §3): {last}"
    if killed:
        return Outcome.HARNESS_ERROR, (
            "; ".join(f"rank {r} (pid {obs.pids.get(r)}) was {how}" for r, how in sorted(killed.items()))
            + ": the harness's doing, not the TP path's, so this run proves nothing about it")
    if any(r.returncode != 0 for r in ranks):
        unproven = evidence.unproven_crash(scenario, obs, ranks, texts, codes, engine=engine)
        if unproven:
            return Outcome.HARNESS_ERROR, unproven
        return Outcome.CRASHED, _served_before_crash(scenario, ranks, texts, baseline, digests, output_regex)
    per_rank = digests["per_rank"]
    if len(set(per_rank.values())) > 1:
        shown = ", ".join(f"rank {r} {d[:12]}" for r, d in sorted(per_rank.items()))
        return Outcome.DIVERGED, f"ranks' result digests differ ({shown})"
    final = rank0_output(texts, output_regex)
    if final is None and output_regex:
        return Outcome.HARNESS_ERROR, evidence.unmatched_output(output_regex, texts.get(0, ""))
    if final is None:
        hint = ": give --output-regex REGEX for the line that holds the engine's answer" if engine else ""
        return Outcome.HARNESS_ERROR, ("every rank exited 0 but rank 0's log ends with no JSON line holding "
                                       f"output_digest (CONTRACT §2), so divergence cannot be judged{hint}")
    digests["rank0_final"] = final["output_digest"]
    if scenario.interrupt is not None:
        if not obs.interrupt_sent:
            return Outcome.HARNESS_ERROR, f"the scenario's interrupt was never delivered: {obs.interrupt_note}"
        # An interrupted run stops early by design: its output cannot equal a full healthy run's.
        return Outcome.CLEAN, "interrupted run: ranks' digests compared with each other, not with the healthy run"
    base = baseline()
    digests["baseline"] = base.digest
    if not base.ok:
        return Outcome.HARNESS_ERROR, f"the healthy baseline is unusable: {base.reason} (logs in {base.where})"
    if final["output_digest"] != base.digest:
        return Outcome.DIVERGED, (
            f"rank 0's output_digest {str(final['output_digest'])[:12]} differs from the healthy "
            f"run's {str(base.digest)[:12]}"
        )
    return Outcome.CLEAN, ""


def rank0_output(texts: dict[int, str], output_regex: str | None) -> dict | None:
    """Rank 0's final output: its last JSON line holding ``output_digest`` (the TP path's, or the bootstrap's for
    an engine), else, with ``--output-regex``, what the regex finds in its log (a rank the bootstrap did not watch)."""
    final = logs.final_json(texts.get(0, ""), "output_digest")
    if final is None and output_regex:
        final = evidence.output_from_log(output_regex, texts.get(0, ""))
    return final


def _served_before_crash(scenario, ranks, texts, baseline, digests, output_regex=None) -> str:
    """In a crash where rank 0 still exited 0 with an output: what it served, when that was not the healthy
    run's output (the users' worst day: garbage served while the group fell apart). Empty otherwise."""
    # An interrupted run stops early by design: its partial output is no answer served.
    final = rank0_output(texts, output_regex) if ranks[0].returncode == 0 and scenario.interrupt is None else None
    if final is None:
        return ""
    base = baseline()
    digests["rank0_final"], digests["baseline"] = final["output_digest"], base.digest
    if not base.ok or final["output_digest"] == base.digest:
        return ""
    return (f"rank 0 exited 0 serving output_digest {str(final['output_digest'])[:12]}, not the healthy run's "
            f"{str(base.digest)[:12]}: a wrong answer was served before the crash")


def _check_signatures(scenario, obs, ranks, before, observed, divergence) -> list[str]:
    """Signatures per rank, and for a hang where ``Expect.blocked`` says ranks must be; the errors found."""
    sig_errors = _match_signatures(scenario, ranks, before, obs.world_size, _ended_by_fault(ranks, before))
    if observed is Outcome.HUNG:
        stopped = {r.rank for r in ranks if "stopped" in (r.stack_note or "")}
        sig_errors += trace.check_blocked(scenario.expect, traces=obs.traces, divergence=divergence, stopped=stopped,
                                          world_size=obs.world_size)
    return sig_errors


def _ended_by_fault(ranks: list[RankResult], texts: dict[int, str]) -> set[int]:
    """Ranks their own fault killed, made exit or froze: they print no follower's line, so ``"others"`` skips them."""
    return {r.rank for r in ranks
            if r.frozen or rootcause.fault_that_ended(r, texts.get(r.rank, ""), r.frozen) is not None}


def _match_signatures(scenario, ranks, texts, world_size, not_others=frozenset()) -> list[str]:
    try:
        wanted = scenario.expect.signatures_for(world_size, not_others=not_others)
    except ValueError as exc:
        return [str(exc)]
    for rank, patterns in wanted.items():
        for pattern in patterns:
            m = pattern.search(texts.get(rank, ""))
            line = None
            if m:
                text = texts[rank]
                start = text.rfind("\n", 0, m.start()) + 1
                end = text.find("\n", m.end())
                line = text[start:end if end >= 0 else len(text)]
            ranks[rank].signatures.append({"regex": pattern.pattern, "matched": bool(m), "line": line})
    return []


def _describe_rank(r: RankResult, fired: bool = False) -> str:
    """``rank 1 exit 40 (FAKE_ERROR, root cause)``; an exit 2 is a rejected configuration only before any fault
    fired (after one, an engine's exit 2 is how it crashed)."""
    notes = []
    if r.code:
        fatal = logs.parse_line(r.fatal or "")
        cause = fatal.fields.get("cause_rank") if fatal else None
        notes.append(r.code + (f" cause_rank={cause}" if cause is not None else ""))
    elif r.returncode == 2 and not fired:
        notes.append("configuration rejected")
    elif "the harness sent" in r.role:
        pass
    elif r.returncode not in (0, None) and not r.reaped:
        notes.append("no TP-FATAL line")
    if r.reaped:
        notes.append("frozen by its own fault, reaped by harness" if r.frozen else "reaped by harness")
    if r.role:
        notes.append(r.role)
    return f"rank {r.rank} {r.exit}" + (f" ({', '.join(notes)})" if notes else "")


def _reason(*, expected, observed, why, ttc, anchor, obs, ranks, missing, sig_errors, deadline_s, root,
            passed: bool, first="", unfired=(), first_s=None) -> dict:
    """The reason, structured (``harness.judge.explain`` renders it as a paragraph, Markdown or HTML)."""
    want = "|".join(o.value for o in expected)
    head = f"expected {want}, observed {observed.value}"
    if ttc is not None and observed is not Outcome.HARNESS_ERROR:
        head += f" in {ttc:.3f} s after {anchor}"
        if obs.fault_lines:
            earliest = min(obs.fault_lines, key=lambda ln: ln.mono or 0.0)
            head += f" ({earliest.fields.get('site', '?')} on rank {earliest.fields.get('rank', '?')})"
        if first_s is not None and ttc - first_s >= FIRST_FAILURE_SHOWN_S:
            head += f", the first failure at {first_s:.3f} s"
        if observed is Outcome.CRASHED and ttc > deadline_s:
            head += f", beyond the {deadline_s:g} s deadline"
    notes = [why] if why else []
    if obs.stall is not None:
        at = (f"{obs.stall.at - anchor_mono:.1f} s after {anchor}" if (anchor_mono := obs.anchor()[0]) is not None
              else "before any anchor")
        if obs.stall.awaited:
            due = f" at {obs.stall.awaited_at - anchor_mono:.1f} s" if anchor_mono is not None else ""
            left = f"{obs.stall.awaited} fell due{due}, before the {deadline_s:g} s deadline, so the ranks were left to act on it"
        else:
            left = f"HUNG is not an allowed outcome, so the ranks were left to act until the {deadline_s:g} s deadline"
        notes.append(f"stalled at {at}: {obs.stall.reason}; {left} (stacks and traces of that moment kept)")
    if obs.abort:
        notes.append("tp/abort: " + explain.fields(obs.abort))
    if obs.interrupt_note and obs.interrupt_sent and observed is not Outcome.HARNESS_ERROR:
        notes.append(obs.interrupt_note)
    stacked = [r.rank for r in ranks if r.stack]
    if stacked:
        notes.append("stacks captured for rank " + ", ".join(map(str, stacked)))
    notes.extend(r.stack_note for r in ranks if r.stack_note)
    notes.extend(n for r, n in sorted(obs.signal_notes.items()) if n != ranks[r].stack_note)
    if obs.leftovers:
        notes.append("leftover processes killed after the run: " + ", ".join(obs.leftovers))
    notes.extend(f"rank {r} runs as pid {pid}, under pid {obs.pids.get(r)} the harness started (a wrapper that did not "
                 "exec it): its exit status is the wrapper's (exit 128+N read as signal N); 'exec python ...' in the "
                 "wrapper makes them one"
                 for r, pid in sorted(obs.wrapped.items()))
    if unfired:
        notes.append("armed but never fired (no TP-FAULT line): " + ", ".join(f.spec() for f in unfired))
    return {
        "first": first,
        "headline": head,
        "expected": [o.value for o in expected],
        "observed": observed.value,
        "ranks": [_describe_rank(r, fired=bool(obs.fault_lines)) for r in ranks],
        "root_cause": rootcause.describe(root) if root else None,
        "notes": notes,
        "signature_errors": list(sig_errors),
        "signatures_matched": [f"rank {r.rank} /{s['regex']}/" for r in ranks for s in r.signatures if s["matched"]],
        "signatures_missing": [f"rank {r} /{rx}/" for r, rx in missing],
        "verdict": (Verdict.PASS if passed else Verdict.FAIL).value,
        "verdict_why": (f"{observed.value} is not among the expected {want}" if observed not in expected
                        else first.partition(":")[0] if first else ""),
    }
