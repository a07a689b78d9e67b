"""Asking live ranks for their stacks and flight traces (SIGUSR1) and collecting the answers.

A rank answers in its log (faulthandler's stacks) and, when its init event says
it keeps a flight trace, in ``flight_rank{R}.json`` (CONTRACT §6). The harness
cuts the stacks out of each log from where it stood at the signal and keeps the
traces as the hang left them: reaping makes ranks dump again, later.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from harness.launch import Launch
from harness.supervise import logs, trace
from harness.supervise.observation import Observation

QUIET_S = 0.1
"""From a rank that writes no trace file, an answer is whole once its log stayed quiet this long."""
STACK_SIGNAL = signal.SIGUSR1


def catches(pid: int | None, sig: signal.Signals) -> bool | None:
    """Whether process ``pid`` has a handler installed for ``sig`` (``SigCgt`` in ``/proc/PID/status``).

    None when that cannot be read (the process is gone). A signal a process does not catch takes its default
    action, which for SIGUSR1 is to die: the harness sends it only where this says True.
    """
    if pid is None:
        return None
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    return None


class Dumps:
    """One round of SIGUSR1 answers (a stall probe or the deadline's stacks)."""

    def __init__(self, obs: Observation, launch: Launch, followers: dict, flight_ranks: set[int]) -> None:
        self.obs = obs
        self.launch = launch
        self.followers = followers
        self.flight_ranks = flight_ranks
        """Ranks whose init event says they write a flight trace (shared with the stall clock)."""
        self.pending: dict[int, dict] = {}

    def ask(self, live: list[int], now: float, exiting: set[int] = frozenset()) -> None:
        """SIGUSR1 to every live rank that can answer; any other gets a note saying why it was not asked.

        Never to a rank that printed its ``exit`` event (on its way out, its handlers may be gone any moment),
        a stopped or dying one, or one without a SIGUSR1 handler installed right now (``SigCgt``): the
        signal's default action would kill it, and the harness would have caused the death it then judges.
        """
        obs = self.obs
        for rank in live:
            pid = obs.wrapped.get(rank, obs.pids.get(rank))  # the rank itself, under a wrapper that did not exec
            status = self.launch.rank_status(rank)
            if status == "stopped":
                obs.stack_notes[rank] = (f"rank {rank} (pid {pid}) is stopped (SIGSTOP); "
                                         "a stopped process cannot dump its stack")
                continue
            if rank in exiting or status in (None, "zombie", "dead"):
                obs.stack_notes[rank] = (f"rank {rank} (pid {pid}) is on its way out (its exit event, or the "
                                         "process is ending): not asked for its stack")
                continue
            if not catches(pid, STACK_SIGNAL):
                obs.stack_notes[rank] = obs.signal_notes[rank] = (f"rank {rank} (pid {pid}) has no {STACK_SIGNAL.name} handler installed "
                                         f"(SigCgt in /proc/{pid}/status): not asked for its stack, which would have "
                                         f"killed it (CONTRACT §1: register faulthandler on {STACK_SIGNAL.name})")
                continue
            size = self.followers[rank].size()
            if self.launch.signal_rank(rank, STACK_SIGNAL):
                obs.signals_sent.setdefault(rank, []).append((STACK_SIGNAL.name, time.monotonic()))
                self.pending[rank] = {"offset": size, "size": size, "changed_at": None, "sent_at": now}

    def done(self, now: float) -> bool:
        """Every asked rank answered: its log grew (the stacks), then a fresh trace file appeared, or the log
        stayed quiet for ``QUIET_S`` (or the rank died).

        tp's faulthandler writes every stack from the signal handler itself, before its signal thread writes the
        trace (CONTRACT §6): a fresh trace means the stacks are whole, a tenth of a second sooner per hang proof.
        """
        done = True
        for rank, d in self.pending.items():
            if rank in self.obs.exits:
                continue
            size = self.followers[rank].size()
            if size != d["size"]:
                d["size"], d["changed_at"] = size, now
            if d["changed_at"] is None:
                done = False
            elif now - d["changed_at"] < QUIET_S and (d["changed_at"] == now or not self._fresh_trace(rank, d["sent_at"])):
                done = False  # still growing this tick, or no trace written for this signal yet
        return done

    def _fresh_trace(self, rank: int, since: float) -> bool:
        """``flight_rank{R}.json`` was written after ``since`` (a trace written as a log line is not looked for)."""
        if rank not in self.flight_ranks:
            return False
        doc = trace.load(self.obs.log_paths[rank].parent, rank)
        return (doc is not None and doc.get("reason") == "SIGUSR1"  # not a TP-FATAL or exit dump racing the signal
                and float(doc.get("mono") or 0.0) >= since - 1e-3)

    def collect(self, timeout_s: float) -> None:
        """Cut each answer's stacks out of its log; keep every rank's newest trace."""
        obs = self.obs
        for rank, d in self.pending.items():
            text = logs.read_bytes_from(obs.log_paths[rank], d["offset"])
            text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(trace.TRACE_PREFIX))
            start = min((i for i in (text.find("Thread 0x"), text.find("Current thread 0x")) if i >= 0),
                        default=0)
            pid = obs.pids.get(rank)
            if text.strip():
                obs.stacks[rank] = text[start:].rstrip()
            elif rank in obs.exits and obs.exits[rank].returncode == -STACK_SIGNAL:
                obs.stack_notes[rank] = (f"rank {rank} (pid {pid}) died of the {STACK_SIGNAL.name} the harness sent "
                                         "for its stack: its handler was installed when asked, and gone when the "
                                         "signal arrived (it was on its way out)")
            elif rank in obs.exits:
                obs.stack_notes[rank] = f"rank {rank} (pid {pid}) exited ({obs.exits[rank].returncode}) before its stack came"
            else:
                obs.stack_notes[rank] = f"rank {rank} (pid {pid}) wrote no stack within {timeout_s:g} s of SIGUSR1"
        for rank, path in obs.log_paths.items():
            text = "" if trace.flight_path(path.parent, rank).exists() else logs.read_text(path)
            doc = trace.load(path.parent, rank, text)
            if doc is not None:
                obs.traces[rank] = doc

    def forget(self) -> None:
        """An inconclusive probe: none of this round's answers count."""
        self.obs.stacks.clear()
        self.obs.stack_notes.clear()
        self.obs.traces.clear()
        self.pending.clear()


