"""Evidence for a verdict: when non-zero exits prove a crash (docs/CONTRACT.md §3).

A break-it harness must never call a broken rank command a proof. A crash
counts only when, with faults armed, a fault fired (a ``TP-FAULT`` line) and
every rank that exited non-zero on its own did so inside the contract.
"""

from __future__ import annotations

import hashlib
import re
import signal
from typing import TYPE_CHECKING

from contract.faults import Action
from harness.supervise import logs

if TYPE_CHECKING:
    from harness.declare.fault import Fault
    from harness.declare.scenario import Scenario
    from harness.judge.result import RankResult
    from harness.supervise.observation import Observation


def unproven_crash(scenario: Scenario, obs: Observation, ranks: list[RankResult], texts: dict[int, str],
                   codes: dict[str, int] | None, *, engine: bool = False) -> str:
    """Why the exits do not prove a crash (empty when they do).

    A crash is evidence only when, with faults armed, a fault fired (a
    TP-FAULT line), and every rank that exited non-zero on its own did so
    inside the contract (CONTRACT §3): a TP-FATAL line whose code exits with
    that status, or the exit or signal its own fault (or the scenario's
    interrupt) caused. Anything else (exit 1, a signal nobody sent, a command
    that never ran) is the rank command failing, not the guardrail working.

    An unmodified ``engine`` (``run --engine``) promised no contract: once the fault fired, its own death by a
    signal the harness did not send (gloo's SIGABRT on a desync's oversized message) or any exit status of its
    own (a watchdog's ``os._exit(3)``, a handler's ``sys.exit(1)`` after logging) is how it crashed.
    """
    problems = []
    fired = obs.fault_lines or any(ln.kind == "TP-FAULT" for t in texts.values() for ln in logs.contract_lines(t))
    if scenario.faults and not fired:
        problems.append(f"faults were armed ({scenario.failpoints()[:200]}) but no rank printed a TP-FAULT line, "
                        "so the fault never fired")
    for r in ranks:
        if r.returncode in (0, None) or r.reaped:
            continue
        if engine and fired:  # the harness's own signals are judged before this
            continue
        off = off_contract(r, texts.get(r.rank, ""), codes, scenario)
        if off:
            last = next((ln for ln in reversed(r.log_tail) if ln.strip() and not ln.startswith(("TP-EVENT ", "TP-TRACE "))),
                        "(empty log)")  # the rank's own last words, not an event line the bootstrap added
            problems.append(f"rank {r.rank} {r.exit} {off}; its last line: {last[:300]}")
    if not problems:
        return ""
    return ("the exits are outside the contract, so this is no proof of a crash: " + "; ".join(problems)
            + " (CONTRACT §3: a TP-FATAL line and its code's exit status, or the signal the fault itself sent)")


def unfired(scenario: Scenario, obs: Observation, texts: dict[int, str]) -> list[Fault]:
    """The armed faults no rank printed a ``TP-FAULT`` line for (same site, and rank where one is named)."""
    lines = [*obs.fault_lines, *(ln for t in texts.values() for ln in logs.contract_lines(t) if ln.kind == "TP-FAULT")]

    def seen(f: Fault) -> bool:
        return any(ln.fields.get("site") == f.site and (f.rank is None or str(ln.fields.get("rank")) == str(f.rank))
                   for ln in lines)

    return [f for f in scenario.faults if not seen(f)]


def never_fired(scenario: Scenario, missing: list[Fault], obs: Observation | None = None) -> str:
    """The verdict's first sentence when no armed fault fired, or the scenario's interrupt was never sent (empty
    otherwise): nothing then is evidence of what they do."""
    parts = []
    if scenario.faults and len(missing) == len(scenario.faults):
        parts.append(f"the fault never fired: no rank printed a TP-FAULT line for {scenario.failpoints()[:200]} (a "
                     "site this TP path does not have or never passes, or a trigger never met), so the run says "
                     "nothing about it")
    if scenario.interrupt is not None and obs is not None and not obs.interrupt_sent:
        parts.append(f"the interrupt never fired: {obs.interrupt_note or scenario.interrupt.describe()}")
    return "; ".join(parts)


def killed_by_harness(r: RankResult, obs: Observation, scenario: Scenario) -> str:
    """How the harness's own signal ended rank ``r`` ("" when it did not): a stack request (SIGUSR1) it sent
    before reaping. The scenario's interrupt is not counted here: it is the run's fault, as an armed one is."""
    if r.returncode is None or r.returncode >= 0 or r.reaped:
        return ""
    interrupt = scenario.interrupt
    for name, mono in obs.signals_sent.get(r.rank, []):
        if interrupt is not None and interrupt.rank == r.rank and name == interrupt.signal:
            continue
        if -signal.Signals[name] == r.returncode:
            at = obs.anchor()[0]
            when = f" {mono - at:.1f} s after {obs.anchor()[1]}" if at is not None else ""
            return f"killed by the {name} the harness sent it{when} (a stack request)"
    return ""


def off_contract(r: RankResult, text: str, codes: dict[str, int] | None, scenario: Scenario) -> str:
    """Why rank ``r``'s non-zero exit is outside the contract ("" when it is inside)."""
    if r.code:
        if codes is None or codes.get(r.code) == r.returncode:
            return ""
        if r.code not in codes:
            return f"with TP-FATAL code={r.code[:60]}, which the rank command's --list-codes does not know"
        return f"with TP-FATAL code={r.code}, whose exit status is {codes[r.code]}"
    actions = []
    for line in logs.contract_lines(text):
        if line.kind == "TP-FAULT":
            # The line names the action; the spec armed for this rank there supplies its argument if the line
            # leaves it out. Nothing else exempts the rank whose fault fired: it must still end as its action says.
            actions.append(Action.parse(str(line.fields.get("action", ""))))
            actions += [f.act for f in scenario.faults if f.site == line.fields.get("site") and f.rank in (None, r.rank)]
    if any(a is not None and a.returncode is not None and a.returncode == r.returncode for a in actions):
        return ""
    interrupt = scenario.interrupt
    if interrupt is not None and interrupt.rank == r.rank and r.returncode == -signal.Signals[interrupt.signal]:
        return ""
    return "without a TP-FATAL line and not by its own fault's exit or signal"


def output_from_log(regex: str, text: str) -> dict | None:
    """Rank 0's output as the bootstrap would give it (``_breakit_rank._at_exit``: the last match of ``regex``,
    its first group if it has one, digested alike), read from its log: for a rank the bootstrap did not watch
    (``BREAKIT_ENGINE_BOOT=0``, or output a Python wrapper's child printed). None when nothing matches."""
    pattern, match = re.compile(regex), None
    for line in text.splitlines():
        if line.startswith(("TP-EVENT ", "TP-TRACE ", "TP-FAULT ", "TP-FATAL ")):
            continue
        m = pattern.search(line)
        if m:
            match = m.group(1) if m.groups() else m.group(0)
    if match is None:
        return None
    return {"output_digest": hashlib.sha256(match.encode()).hexdigest()[:16], "output": match[:200],
            "source": "--output-regex on rank 0's log"}


def own_lines(lines: list[str]) -> list[str]:
    """The lines a rank printed itself: not blank, and not an event, trace or fault line the harness's contract
    (or an engine's bootstrap) added."""
    return [ln for ln in lines if ln.strip() and not ln.startswith(("TP-EVENT ", "TP-TRACE ", "TP-FAULT "))]


def unmatched_output(regex: str, text: str, *, shown: int = 5) -> str:
    """Why an engine run whose ranks all exited 0 has no output: ``--output-regex`` matched nothing rank 0 printed
    (``text``, its log). The last lines the engine itself printed say what to match instead."""
    own = own_lines(text.splitlines())
    last = " | ".join(ln[:200] for ln in own[-shown:]) or "rank 0 printed nothing"
    return (f"every rank exited 0 but output regex {regex!r} matched nothing in rank 0's stdout (last lines: {last}), "
            "so divergence cannot be judged: fix --output-regex to match the line holding the engine's answer")
