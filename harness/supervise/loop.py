"""The supervisor: one loop that watches a launch until every rank has exited.

Reader threads (rank waiters, the zygote reader) only enqueue exits; this
loop decides everything else by itself, once per tick: new log lines
(TP-FAULT / TP-EVENT init), store keys (progress, heartbeats, abort), the
harness-side interrupt, and deadlines. Deadlines are absolute
``time.monotonic()`` instants named ``*_at``.

When a deadline passes with ranks alive the run is HUNG: every live rank gets
SIGUSR1 (its faulthandler writes all stacks into its log), the loop waits for
the logs to grow, cuts each stack out, then SIGKILL for the whole process tree.

SIGKILL, not SIGTERM first: the verdict, stacks and traces are in hand by then and nothing a rank writes
afterwards counts, while a SIGTERM asks a TP path to act. tp's rank 0 answers it with a graceful SHUTDOWN
broadcast, which a worker desynced mid-envelope (FM-01 with preflight off) received as a wrongly sized
message: gloo aborted it (SIGABRT) during every reap. The harness's reaping must not make a rank crash.
"""

from __future__ import annotations

import contextlib
import json
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from harness.declare.scenario import Interrupt
from harness.launch import Launch, read_keys, reap
from harness.supervise import logs, trace
from harness.supervise.dumps import Dumps
from harness.supervise.observation import Observation, RankExit, Stall
from harness.supervise.stall import StallClock

RUNNING, DUMPING, KILLING = "running", "dumping", "killing"
PREFIX = "default_pg/"
"""torch's prefix of the default store (``init_process_group``): an engine writing its progress through that store
puts ``tp/progress/{rank}`` under it."""


class HarnessInterrupted(KeyboardInterrupt):
    """The harness got SIGTERM/SIGHUP; raised in the main thread so cleanup runs."""


@contextlib.contextmanager
def harness_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into ``HarnessInterrupted`` while ranks are live (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise HarnessInterrupted(f"harness received {signal.Signals(signum).name}; ranks were reaped")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Time limits for one run."""

    deadline_s: float
    """From the fault firing (or the first init) until every rank has exited."""
    run_timeout_s: float = 60.0
    """Bound on the whole run, from launch."""
    startup_s: float = 30.0
    """Every rank must print its init event this soon after launch, or the run is a HARNESS_ERROR."""
    faults_armed: bool = False
    """True when the deadline counts from TP-FAULT rather than the first init."""
    dump_timeout_s: float = 2.0
    """How long to wait for stack dumps after SIGUSR1."""
    tick_s: float = 0.02
    """Loop period when no exit arrives."""
    store_poll_s: float = 0.1
    """Store polling period (every tick while an interrupt is pending)."""
    frozen: frozenset[int] = frozenset()
    """Ranks expected to be frozen (SIGSTOP): reaped once they are all that is left."""
    stall_s: float | None = None
    """After the deadline's anchor, no progress for this long makes the loop probe the ranks' flight traces
    (SIGUSR1); HUNG once they prove it (``trace.stall_verdict``, ``stall_ends_run``). None: deadline only."""
    stall_ends_run: bool = True
    """HUNG is an allowed outcome: a stall the traces prove ends the run, unless a stuck rank's own timeout is
    due before the deadline. False (a crash or clean proof): the proof is recorded (``Observation.stall``) and
    the ranks act on until the deadline, so a guardrail with a timeout of its own gets its chance."""


def supervise(launch: Launch, *, limits: Limits, interrupt: Interrupt | None = None,
              on_progress: Callable[[str], None] | None = None) -> Observation:
    """Watch ``launch`` until every rank is gone; return what was seen."""
    return _Loop(launch, limits, interrupt, on_progress or (lambda _msg: None)).run()


class _Loop:
    def __init__(self, launch: Launch, limits: Limits, interrupt: Interrupt | None, say) -> None:
        self.launch = launch
        self.limits = limits
        self.interrupt = interrupt
        self.say = say
        start = time.monotonic()
        self.obs = Observation(world_size=launch.spec.world_size, pids=launch.pids,  # live: torchrun's come later
                               log_paths=dict(launch.log_paths), started_at=start)
        self.followers = {r: logs.LogFollower(p) for r, p in launch.log_paths.items()}
        self.phase = RUNNING
        self.run_timeout_at = start + limits.run_timeout_s
        self.startup_at = start + limits.startup_s
        self.started: set[int] = set()
        self.next_poll_at = start
        self.phase_until_at = 0.0
        self.stall = StallClock(stall_s=limits.stall_s, last_progress_at=start, next_probe_at=start)
        self.dumps = Dumps(self.obs, launch, self.followers, self.stall.flight_ranks)
        self.probe_at: float | None = None  # set while a stall probe's dumps are collected
        self.unwatched: set[int] = set()  # ranks whose init event lists guardrails without the watchdog
        self.exiting: set[int] = set()  # ranks that printed their exit event: never signalled again
        self.reaped: list = []  # the processes the reaping SIGKILLed
        self.prefixes: tuple[str, ...] = ("", PREFIX)  # where the ranks' progress keys are, until one is found
        self.line_seen: str | None = None  # the interrupt rank's first line matching ``Interrupt.after_line``
        self.line_re = re.compile(interrupt.after_line) if interrupt is not None and interrupt.after_line else None

    def run(self) -> Observation:
        obs = self.obs
        while len(obs.exits) < obs.world_size:
            self._take_exits(self.limits.tick_s)
            lost = None if obs.harness_error else self.launch.store_lost()
            if lost:  # the ranks' own reports now blame each other for what the harness lost
                obs.harness_error = f"{lost}: each rank's failure from here on is the harness's, not the TP path's"
                break
            now = time.monotonic()
            self._scan_logs()
            self._maybe_interrupt()  # a time or a log line may be its trigger, not only the store
            if now >= self.next_poll_at and self.phase == RUNNING:
                self._poll_store()
                pending = self.interrupt is not None and not obs.interrupt_sent
                self.next_poll_at = now + (self.limits.tick_s if pending else self.limits.store_poll_s)
            self._step(now)
            if obs.harness_error:
                break
        self._scan_logs()
        if self.launch.hosts_store and not obs.hung:
            self._poll_store()  # keys written just before the last exit (tp/abort) are worth reporting
        obs.ended_at = time.monotonic()
        if self.interrupt is not None and not obs.interrupt_sent and obs.interrupt_note is None:
            seen = obs.progress.get(self.interrupt.rank, "nothing")
            obs.interrupt_note = f"{self.interrupt.describe()} was never sent (last progress: {seen})"
        self._kill_leftovers()
        return obs

    # ------------------------------------------------------------ inputs

    def _take_exits(self, timeout: float) -> None:
        try:
            event = self.launch.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            kind, rank, code, mono = event
            if kind == "lost":
                self.obs.harness_error = (f"lost track of rank {rank} (pid {self.obs.pids.get(rank)}): "
                                          "the zygote that forked it exited")
                return
            if kind != "exit":
                raise RuntimeError(f"supervisor got an unknown event {event!r}")
            self.launch.mark_exited(rank)
            reaped = self.phase != RUNNING and self.probe_at is None
            code = -signal.SIGKILL if code is None and reaped else code  # a status lost with its torchrun shell
            self.obs.exits[rank] = RankExit(rank=rank, returncode=code, mono=mono, reaped=reaped)
            self.stall.last_progress_at = time.monotonic()
            self.say(f"rank {rank} exited ({code})")
            try:
                event = self.launch.events.get_nowait()
            except queue.Empty:
                return

    def _scan_logs(self) -> None:
        for rank, follower in self.followers.items():
            new = follower.read_new()
            if new:
                self.stall.last_progress_at = time.monotonic()
            for text in new:
                if self.line_re is not None and rank == self.interrupt.rank and self.line_seen is None \
                        and self.line_re.search(text):
                    self.line_seen = text
                line = logs.parse_line(text)
                if line is None:
                    continue
                if line.kind == "TP-FAULT":
                    self.obs.fault_lines.append(line)
                    self.say(line.raw)
                    self.next_poll_at = 0.0  # take in the progress written before the fault now, not a poll later
                elif line.event == "init":
                    self.started.add(rank)
                    if line.mono is not None:
                        self.obs.init_mono = min(line.mono, self.obs.init_mono or line.mono)
                    if isinstance(pid := line.fields.get("pid"), int) and pid != self.obs.pids.get(rank, pid):
                        self.obs.wrapped[rank], _ = pid, self.launch.adopt(rank, pid)  # gone already: nothing to signal
                    if line.fields.get("flight") == trace.SCHEMA:
                        self.stall.flight_ranks.add(rank)
                    guardrails = line.fields.get("guardrails")
                    if isinstance(guardrails, list) and "watchdog" not in guardrails:
                        self.unwatched.add(rank)
                elif line.event == "exit":  # on its way out: a late SIGUSR1 may meet Python's default handler
                    self.stall.flight_ranks.discard(rank)
                    self.exiting.add(rank)

    def _poll_store(self) -> None:
        store = self.launch.store
        if store is None:
            return
        obs = self.obs
        try:
            # An engine writing through init_process_group's store has its keys under torch's default prefix.
            watched = {f"{prefix}tp/{kind}/{r}": (r, slot) for prefix in self.prefixes
                       for kind, slot in (("progress", obs.progress), ("hb", obs.heartbeats))
                       for r in range(obs.world_size)}
            values = read_keys(store, [*watched, *([] if obs.abort is not None else ["tp/abort"])])
            found = {PREFIX if key.startswith(PREFIX) else "" for key in values if key in watched}
            if found and len(self.prefixes) > 1:  # the ranks write under one of them: read only that from now on
                self.prefixes = tuple(found)
            for key, (rank, slot) in watched.items():
                if key in values:
                    raw = values[key].decode(errors="replace")
                    value = int(raw) if slot is obs.heartbeats and raw.isdigit() else raw
                    if slot.get(rank) != value:
                        if slot is obs.progress:
                            self.say(f"rank {rank} progress {value}")
                            self.stall.last_progress_at = obs.progress_seen_at[rank] = time.monotonic()
                        else:
                            self.stall.beat_moved_at = obs.beat_seen_at[rank] = time.monotonic()
                    slot[rank] = value
            if "tp/abort" in values:
                raw = values["tp/abort"].decode(errors="replace")
                try:
                    obs.abort = json.loads(raw)
                except ValueError:
                    obs.abort = {"raw": raw}
                self.say(f"tp/abort {raw}")
        except Exception as exc:  # noqa: BLE001 - a dying store must not stop supervision
            self.say(f"store unreachable, polling stopped: {exc}")
            self.launch.store = None
        self._maybe_interrupt()

    def _maybe_interrupt(self) -> None:
        spec, obs = self.interrupt, self.obs
        if spec is None or obs.interrupt_sent or self.phase != RUNNING or spec.rank in obs.exits:
            return
        chunk = obs.progress.get(spec.rank, "").split(" ")[0]
        if spec.after_s is not None:
            due = obs.init_mono is not None and time.monotonic() >= obs.init_mono + spec.after_s
            when = f"{time.monotonic() - (obs.init_mono or 0.0):.2f} s after init"
        elif spec.after_line is not None:
            due, when = self.line_seen is not None, f"after its line {self.line_seen!r:.120}"
        else:
            due = chunk.lstrip("-").isdigit() and int(chunk) >= spec.after_chunk
            when = f"at chunk {chunk}"
        if due:
            pid = obs.pids.get(spec.rank)
            if self.launch.signal_rank(spec.rank, signal.Signals[spec.signal]):
                obs.interrupt_sent, obs.interrupt_at = True, time.monotonic()
                obs.signals_sent.setdefault(spec.rank, []).append((spec.signal, obs.interrupt_at))
                obs.interrupt_note = f"sent {spec.signal} to rank {spec.rank} (pid {pid}) {when}"
                self.say(obs.interrupt_note)

    # ------------------------------------------------------------ decisions

    def _live(self) -> list[int]:
        return [r for r in range(self.obs.world_size) if r not in self.obs.exits]

    def _step(self, now: float) -> None:
        if self.phase == RUNNING and self._only_frozen_left():
            live = self._live()
            self.obs.frozen_reaped = live
            self.say(f"only frozen rank(s) {live} left, each stopped by its own fault: reaping them")
            self.reaped += self.launch.kill_tree(signal.SIGKILL)
            self.phase, self.phase_until_at = KILLING, now + 5.0
            return
        if self.phase == RUNNING and now >= self.startup_at and self._check_started():
            return
        if self.phase == RUNNING:
            anchor, name = self.obs.anchor()
            counts = anchor is not None and (name in ("TP-FAULT", "interrupt") or not self.limits.faults_armed)
            deadline_at = anchor + self.limits.deadline_s if counts else float("inf")
            if now >= min(deadline_at, self.run_timeout_at):
                self._start_dump(now, f"deadline {self.limits.deadline_s:g} s after {name}" if now >= deadline_at
                                 else f"run timeout {self.limits.run_timeout_s:g} s")
            elif counts and self.stall.due(now, self._live(), self._stopped, beats_visible=self.launch.store is not None,
                                           unwatched=self._unwatched()):
                self.probe_at = now
                self.say(f"no progress for {self.limits.stall_s:g} s: asking for flight traces (SIGUSR1)")
                self._signal_dumps(now)
        elif self.phase == DUMPING:
            if self.dumps.done(now) or now >= self.phase_until_at:
                self.dumps.collect(self.limits.dump_timeout_s)
                if self.probe_at is not None and not self._probe_conclusive(now):
                    return
                self.obs.verdict_at = now
                self.obs.reap_offsets = {r: f.size() for r, f in self.followers.items()}
                self.say("reaping: SIGKILL to the process tree")
                self.reaped += self.launch.kill_tree(signal.SIGKILL)
                self.phase, self.phase_until_at = KILLING, now + 5.0
        elif self.phase == KILLING and now >= self.phase_until_at:
            survivors = ", ".join(f"rank {r} (pid {self.obs.pids.get(r)})" for r in self._live())
            self.obs.harness_error = f"{survivors} still alive 5 s after SIGKILL"

    def _check_started(self) -> bool:
        """True (and a HARNESS_ERROR) when a live rank printed no init event by the start-up deadline."""
        silent = [r for r in self._live() if r not in self.started]
        if silent:
            self.obs.harness_error = (
                "start-up deadline: " + ", ".join(f"rank {r} (pid {self.obs.pids.get(r)})" for r in silent)
                + f" printed no TP-EVENT init line within {self.limits.startup_s:g} s of launch (CONTRACT §2); "
                "the rank command is not starting (its last lines are below)")
        return bool(silent)

    def _only_frozen_left(self) -> bool:
        live = self._live()
        return (bool(self.limits.frozen) and bool(live) and set(live) <= self.limits.frozen
                and all(self.launch.rank_status(r) == "stopped" for r in live))

    def _start_dump(self, now: float, what: str) -> None:
        obs = self.obs
        live = self._live()
        obs.hung = True
        obs.hung_at = now
        obs.hang_reason = f"{what} passed with " + ", ".join(
            f"rank {r} (pid {obs.pids.get(r)})" for r in live) + " still running"
        self.say(obs.hang_reason + "; asking for stacks (SIGUSR1)")
        self._signal_dumps(now)

    def _signal_dumps(self, now: float) -> None:
        self.dumps.ask(self._live(), now, self.exiting)
        self.phase, self.phase_until_at = DUMPING, now + self.limits.dump_timeout_s

    def _stopped(self) -> list[int]:
        return [r for r in self._live() if self.launch.rank_status(r) == "stopped"]

    def _unwatched(self) -> bool:
        """Every live rank's init event lists its guardrails without the watchdog: nothing ends a hang for it."""
        return set(self._live()) <= self.unwatched

    def _parked(self) -> dict[int, str]:
        """Live ranks in the hang their own fault armed (a ``TP-FAULT ... action=hang`` line): it never returns.

        Only when every live rank says it runs without a watchdog (its init event's ``guardrails``): a
        watchdog may still end a parked rank (its progress deadline) whether or not the harness sees it beat.
        """
        parked: dict[int, str] = {}
        if not self._unwatched():
            return parked
        for line in self.obs.fault_lines:
            rank = line.fields.get("rank")
            if line.fields.get("action") == "hang" and str(rank).isdigit() and int(rank) not in self.obs.exits:
                parked[int(rank)] = f"parked in its own fault's hang at {line.fields.get('site')} (TP-FAULT action=hang)"
        return parked

    def _probe_conclusive(self, now: float) -> bool:
        """Judge a stall probe: HUNG when the fresh traces prove it, else back to running."""
        obs, probe_at = self.obs, self.probe_at
        self.probe_at = None
        stopped = set(self._stopped())
        why = self.stall.verdict(obs, probe_at=probe_at, live=self._live(), stopped=stopped, parked=self._parked())
        anchor, _ = obs.anchor()
        awaited = (self.stall.own_timeout_ahead(obs, now=now, probe_at=probe_at, live=self._live(), stopped=stopped,
                                                deadline_at=anchor + self.limits.deadline_s)
                   if why is not None and anchor is not None and self.limits.stall_ends_run else None)
        if why is None or not self.limits.stall_ends_run or awaited is not None:
            if why is not None and obs.stall is None:  # recorded, not acted on: the deadline bounds a crash proof
                obs.stall = Stall(at=probe_at, reason=self.stall.proof or why, stacks=dict(obs.stacks),
                                  stack_notes=dict(obs.stack_notes), traces=dict(obs.traces),
                                  awaited=awaited[1] if awaited else None, awaited_at=awaited[0] if awaited else None)
            if awaited is not None:
                self.stall.wait_for(awaited[0])
                self.say(f"stall proven ({why}); {awaited[1]} falls due before the deadline: the ranks act on")
            elif why is not None:
                self.stall.next_probe_at = float("inf")  # proven once: no more SIGUSR1s for this run
                self.say(f"stall proven ({why}); HUNG is not an allowed outcome: the ranks act on until the deadline")
            else:
                self.stall.back_off(now)
                self.say("stall probe inconclusive: the traces do not show every live rank stuck; running on")
            self.dumps.forget()
            self.phase = RUNNING
            return False
        if obs.stall is not None and obs.stall.awaited:
            why += f"; they outlived {obs.stall.awaited}"
        obs.hung, obs.hung_at, obs.hang_reason = True, probe_at, why
        self.say(why)
        return True

    def _kill_leftovers(self) -> None:
        if not self.obs.hung:
            self.launch.settle()
        reap.wait_gone(self.reaped, timeout_s=2.0)  # what the reaping SIGKILLed is dying of it: not left behind
        procs = self.launch.kill_tree(signal.SIGKILL)
        self.obs.leftovers = [f"pid {p.pid}" for p in procs]
