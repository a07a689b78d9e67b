"""``python -m harness explore``: seeded random fault schedules, one invariant, shrinking and replay.

The generator draws schedules (sites x actions x triggers x world sizes x
1..3 faults) from what the TP path declares (``--list-failpoints``), with a
``random.Random(seed)`` per schedule index: the same seed gives the same
schedules, and schedule ``i`` can be rebuilt alone. Each schedule runs through
``harness.pipeline.runner.run_scenario`` with every guardrail on and is checked by
``harness.explore.invariant.check``. A violation is shrunk greedily (fewer faults, a
smaller world size, an earlier chunk, a lower hit) to the smallest schedule
that still violates the same way, then printed as a one-line reproducer.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.declare.fault import Fault, frozen_by
from harness.declare.scenario import Expect, Scenario
from harness.declare.verdicts import Outcome
from harness.explore import invariant
from harness.judge.result import Result
from harness.pipeline import options
from harness.report.rows import shorten

CHUNKS = 4
"""Chunks per explored run: enough for two hard cuts (reset every 4 is the TP default), short enough for many runs."""
PROGRESS_TIMEOUT_S = 1.0
"""``TP_PROGRESS_TIMEOUT_S`` of explored runs: a rank stuck in Python is found in seconds, not a minute."""
HANDSHAKE_TIMEOUT_S = 3.0
"""``TP_HANDSHAKE_TIMEOUT_S`` of explored runs: a rank lost before or during the handshake is noticed only by this
timeout (no watchdog runs yet), and the TP default of 10 s is beyond the harness's 8 s deadline."""
STARTUP_TIMEOUT_S = 6.0
"""``TP_STARTUP_TIMEOUT_S`` of explored runs: a rank faulted before it reaches the store (``store.connect``) learns
of nothing, and must end by this, within the harness's 8 s deadline, after the handshake timeout has named it."""
SLEEPS = (0.2, 1.5)
"""Straggler delays tried for ``sleep``: under half the progress timeout (rule short-sleep), and over it."""


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """One explored run: the faults to arm and the world size."""

    world_size: int
    """Ranks."""
    faults: tuple[Fault, ...]
    """Failpoints armed together."""
    chunks: int = CHUNKS
    """Chunks the run drives."""
    env: tuple[tuple[str, str], ...] = ()
    """Extra rank environment (``--env``), besides the knobs explore tunes."""
    knobs: tuple[tuple[str, str], ...] = ()
    """The timeouts explore shortens (``tuned``): only those the TP path declares in ``--list-env``."""

    def rank_env(self) -> dict[str, str]:
        """The environment every rank gets."""
        return {**dict(self.knobs), **dict(self.env)}

    def expect(self) -> Expect:
        """What the runner supervises for: CLEAN or CRASHED, ranks frozen by SIGSTOP reaped when alone."""
        allowed, _ = invariant.allowed_outcomes(self.faults, progress_timeout_s=PROGRESS_TIMEOUT_S)
        if allowed == {"CLEAN"}:
            return Expect.clean()
        return Expect.crash(frozen=frozen_by(self.faults))

    def scenario(self, sid: str) -> Scenario:
        """This schedule as an ad-hoc scenario with every guardrail on."""
        return Scenario(id=sid, fm="adhoc", title="explore: " + "; ".join(f.spec() for f in self.faults),
                        proves="adhoc", faults=self.faults, expect=self.expect(), chunks=self.chunks,
                        world_size=self.world_size, env=self.rank_env())

    def reproducer(self, *, launch: str = "zygote", config=None) -> str:
        """The one-line ``python -m harness run`` command that runs this schedule alone, as it ran: the rank
        command (from its directory), launch mode, backend, device, deadline, stall window and env of ``config``
        (a ``RunConfig``) wherever they differ from the defaults."""
        expect = "clean" if self.expect().outcomes == {Outcome.CLEAN} else "crash"
        words = ["python", "-m", "harness", "run"]
        for f in self.faults:
            words += ["--fault", f.spec()]
        words += ["--expect", expect, "--world-size", str(self.world_size), "--chunks", str(self.chunks)]
        for k, v in self.rank_env().items():
            words += ["--env", f"{k}={v}"]
        launch = config.launch if config is not None else launch
        if launch != "zygote":
            words += ["--launch", launch]
        if config is None:
            return shlex.join(words)
        for name, value in (("backend", config.backend), ("device", config.device), ("deadline", config.deadline_s),
                            ("stall", config.stall_s)):
            if value is not None and value != options.default(name):
                words += [options.OPTIONS[name].cli_flag, f"{value:g}" if isinstance(value, float) else str(value)]
        if tuple(config.tp_command) == options.default("tp_command"):
            return shlex.join(words)
        command = ["python" if w == sys.executable else w for w in config.tp_command]
        return f"cd {shlex.quote(str(config.cwd))} && " + shlex.join([*words, "--tp-command", shlex.join(command)])

    def to_json(self) -> dict:
        """The schedule as recorded in reports."""
        return {"world_size": self.world_size, "chunks": self.chunks, "faults": [f.spec() for f in self.faults],
                "env": dict(self.env)}


def declared_sites(tp_command: tuple[str, ...], env: dict[str, str]) -> list[dict]:
    """Ask the TP path what can be broken (``--list-failpoints``); raises RuntimeError saying why not."""
    command = [*tp_command, "--list-failpoints"]
    try:
        proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"cannot run {shlex.join(command)!r}: {exc}") from None
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{shlex.join(command)!r} exited {proc.returncode}: {last[0]}")
    sites = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    usable = [s for s in sites if s.get("actions")]
    if not usable:
        raise RuntimeError(f"{shlex.join(command)!r} declares no actions for any site (CONTRACT §1 "
                           "'--list-failpoints'): nothing to explore")
    return usable


TUNED = {"TP_PROGRESS_TIMEOUT_S": PROGRESS_TIMEOUT_S, "TP_HANDSHAKE_TIMEOUT_S": HANDSHAKE_TIMEOUT_S,
         "TP_STARTUP_TIMEOUT_S": STARTUP_TIMEOUT_S}
"""The timeouts explore shortens so a run ends within its deadline, where the TP path declares them."""


def tuned(tp_command: tuple[str, ...], env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """``TUNED`` knobs the TP path declares in ``--list-env`` (CONTRACT §1); none when it declares nothing."""
    try:
        proc = subprocess.run([*tp_command, "--list-env"], check=False, capture_output=True, text=True, timeout=120,
                              env=env)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    declared = set()
    for line in proc.stdout.splitlines() if proc.returncode == 0 else ():
        try:
            declared.add(json.loads(line).get("env"))
        except (ValueError, AttributeError):
            continue
    return tuple((k, f"{v:g}") for k, v in TUNED.items() if k in declared)


def pairs(sites: list[dict]) -> list[tuple[dict, dict]]:
    """Every (site, action) the TP path declares."""
    return [(s, a) for s in sites for a in s["actions"]]


def first_chunk(site: dict, action: dict) -> int:
    """The first chunk where ``site`` is passed and ``action`` does what it says (declared; absent: 0)."""
    return max(int(site.get("first_chunk") or 0), int(action.get("first_chunk") or 0))


def deck_pair(seed: int, index: int, sites: list[dict]) -> tuple[dict, dict]:
    """The (site, action) schedule ``index`` starts with.

    Site-major: each pass of ``len(sites)`` schedules takes every site once (in a seeded order), with that
    site's next action, so the first pass covers every site and ``max(actions)`` passes cover every pair.
    """
    order = random.Random(f"{seed}:deck").sample(range(len(sites)), len(sites))
    site = sites[order[index % len(sites)]]
    actions = site["actions"]
    start = random.Random(f"{seed}:deck:{site['site']}").randrange(len(actions))
    return site, actions[(start + index // len(sites)) % len(actions)]


def generate(seed: int, index: int, sites: list[dict], *, world_sizes: tuple[int, ...],
             faults_per_run: tuple[int, int]) -> Schedule:
    """Schedule ``index`` of ``seed``: a pure function of its arguments (replayable alone).

    Its first fault is the deck's pair, placed where it surely fires; every other fault is armed at a later
    chunk, so it adds to the first instead of pre-empting it (a fault that would fire first decides the run).
    """
    rng = random.Random(f"{seed}:{index}")
    site, action = deck_pair(seed, index, sites)
    ws = rng.choice(world_sizes)
    n = rng.randint(*faults_per_run)
    chunks = max(CHUNKS, first_chunk(site, action) + 1)
    first = _fault(rng, site, action, ws, chunks=range(first_chunk(site, action), chunks), hits=(1, 1, None))
    after = (first.chunk + 1) if first.chunk is not None else 0
    later = [(s, a) for s, a in pairs(sites) if s.get("chunked", True)]
    faults = [first]
    for _ in range(n - 1):
        s, a = rng.choice(later)
        span = range(max(after, first_chunk(s, a)), chunks)
        if span:
            faults.append(_fault(rng, s, a, ws, chunks=span, hits=(1, 1, 1, None, 2)))
    return Schedule(world_size=ws, faults=tuple(faults), chunks=chunks)


def _fault(rng: random.Random, site: dict, action: dict, ws: int, *, chunks: range, hits: tuple) -> Fault:
    """``action`` at ``site`` on a rank that passes it, at one of ``chunks`` (a chunked site), with one of ``hits``."""
    args = action.get("args")
    arg = rng.choice(args) if isinstance(args, list) else rng.choice(SLEEPS) if args == "seconds" else None
    text = action["action"] + (f"({arg})" if arg is not None else "")
    ranks = {"driver": [0], "workers": list(range(1, ws))}.get(site.get("ranks"), list(range(ws)))
    chunk = rng.choice(chunks) if site.get("chunked", True) else None
    return Fault(site=site["site"], action=text, rank=rng.choice(ranks or [0]), chunk=chunk, hit=rng.choice(hits))


def shrink_candidates(s: Schedule) -> list[Schedule]:
    """Smaller schedules, most promising first: fewer faults, smaller world, earlier chunk, lower hit."""
    out = [replace(s, faults=s.faults[:i] + s.faults[i + 1:]) for i in range(len(s.faults))] if len(s.faults) > 1 else []
    if s.world_size > 2:
        out.append(replace(s, world_size=2, faults=tuple(_rerank(f, 2) for f in s.faults)))
    for i, f in enumerate(s.faults):
        smaller = []
        if f.chunk:
            smaller += [replace(f, chunk=c) for c in dict.fromkeys((0, f.chunk // 2, f.chunk - 1)) if c < f.chunk]
        if f.call:
            smaller += [replace(f, call=c) for c in dict.fromkeys((0, f.call // 2, f.call - 1)) if c < f.call]
        if f.hit and f.hit > 1:
            smaller += [replace(f, hit=h) for h in range(1, f.hit)]
        out += [replace(s, faults=s.faults[:i] + (g,) + s.faults[i + 1:]) for g in smaller]
    return out


def _rerank(f: Fault, ws: int) -> Fault:
    return f if f.rank is None or f.rank < ws else replace(f, rank=ws - 1)


def shrink(s: Schedule, violates: Callable[[Schedule], bool], *, max_runs: int = 24,
           candidates: Callable[[Schedule], list[Schedule]] = shrink_candidates) -> tuple[Schedule, int]:
    """Greedy: take the first smaller candidate that still violates, until none does or runs run out."""
    runs = 0
    improved = True
    while improved and runs < max_runs:
        improved = False
        for cand in candidates(s):
            if runs >= max_runs:
                break
            runs += 1
            if violates(cand):
                s, improved = cand, True
                break
    return s, runs


@dataclass(kw_only=True)
class Tally:
    """What an exploration saw so far (the report is built from it)."""

    runs: list[dict] = field(default_factory=list)
    """Per run: index, schedule, observed, time_to_crash_s, fired (site=action pairs seen firing), violations."""
    violations: list[dict] = field(default_factory=list)
    """Per violation: the original and the shrunk schedule, what broke, the reproducer."""
    started: float = field(default_factory=time.monotonic)
    """Monotonic start."""

    def add(self, index: int, schedule: Schedule, result: Result, broken: list[str]) -> None:
        """Record one run."""
        self.runs.append({"index": index, "schedule": schedule.to_json(), "observed": result.observed,
                          "time_to_crash_s": result.time_to_crash_s, "fired": sorted(fired(result)),
                          "violations": broken, "dir": result.dir})


def fired(result: Result) -> set[str]:
    """``site=action`` of every TP-FAULT line the ranks printed (the fault acted)."""
    from harness.supervise import logs

    out = set()
    for r in result.ranks:
        for line in logs.contract_lines(logs.read_text(Path(r.log))) if r.log else ():
            if line.kind == "TP-FAULT":
                action = str(line.fields.get("action", "")).partition("(")[0]
                out.add(f"{line.fields.get('site')}={action}")
    return out


def same_failure(a: Result, b: Result) -> bool:
    """Shrinking keeps a candidate only if it breaks the invariant the way the original did: same outcome."""
    return a.observed == b.observed


def jobs_for(requested: int | None, launch: str) -> int:
    """Schedules run at once: ``requested``, else one per core this process may use (at most 4).

    Only where the harness serves each run's store (zygote, subprocess) on a port of its own; elsewhere a rank
    or launcher serves it on a port picked before it binds it, which a concurrent run could take: 1.
    """
    concurrent = launch in ("zygote", "subprocess")
    if requested is None:
        return max(1, min(4, len(os.sched_getaffinity(0)))) if concurrent else 1
    if requested < 1 or (requested > 1 and not concurrent):
        raise ValueError(f"bad --jobs {requested}: expected >= 1, and 1 under --launch {launch} (a rank or launcher "
                         "serves the store on a port picked before it binds it, which a concurrent run could take)")
    return requested


def explore(*, seed: int, runs: int | None, budget_s: float | None, world_sizes: tuple[int, ...],
            faults_per_run: tuple[int, int], config, env: dict[str, str], tp_env: dict[str, str],
            only_sites: tuple[str, ...] = (), max_shrink: int = 24, jobs: int = 1,
            say: Callable[[str], None] = lambda _: None) -> dict:
    """Run schedules until ``runs`` or ``budget_s``, ``jobs`` at a time; shrink each violation (one run at a
    time); write explore.json/.md; return it. Schedules run are always a prefix 0..N-1 of the seed's."""
    from harness.explore import report as explore_report
    from harness.pipeline.runner import run_scenario

    sites = declared_sites(config.tp_command, tp_env)
    if only_sites:
        unknown = sorted(set(only_sites) - {s["site"] for s in sites})
        if unknown:
            raise ValueError(f"unknown site(s) {', '.join(unknown)}; declared: {', '.join(s['site'] for s in sites)}")
        sites = [s for s in sites if s["site"] in only_sites]
    extra = tuple(sorted(env.items()))
    knobs = tuned(config.tp_command, tp_env)
    tally = Tally()

    def run(schedule: Schedule, sid: str) -> tuple[Result, list[str]]:
        result = run_scenario(schedule.scenario(sid), config)
        return result, invariant.check(result, schedule.faults, progress_timeout_s=PROGRESS_TIMEOUT_S)

    def schedules():
        index = 0
        while (runs is None or index < runs) and (budget_s is None or time.monotonic() - tally.started < budget_s):
            yield index, replace(generate(seed, index, sites, world_sizes=world_sizes, faults_per_run=faults_per_run),
                                 env=extra, knobs=knobs)
            index += 1

    for index, schedule, (result, broken) in _concurrently(schedules(), run, jobs=jobs):
        tally.add(index, schedule, result, broken)
        if broken:
            tally.violations.append(_shrunk(index, schedule, result, broken, run, config, say, max_shrink))
        elapsed = time.monotonic() - tally.started
        say(f"explore: {len(tally.runs)} runs, {len(tally.violations)} violations, "
            f"{len(tally.runs) / elapsed:.2f} runs/s, {elapsed:.0f} s")
    tally.runs.sort(key=lambda r: r["index"])
    return explore_report.write(tally, sites=sites, run_dir=config.run_dir, meta={
        "seed": seed, "runs": runs, "budget_s": budget_s, "world_sizes": list(world_sizes),
        "faults_per_run": list(faults_per_run), "launch": config.launch, "backend": config.backend, "jobs": jobs,
        "progress_timeout_s": PROGRESS_TIMEOUT_S, "handshake_timeout_s": HANDSHAKE_TIMEOUT_S, "chunks": CHUNKS,
        "rules": invariant.RULES})


def _concurrently(items, run, *, jobs: int):
    """Yield ``(index, schedule, run(schedule, sid))`` as runs finish, at most ``jobs`` running at once.

    Each run has its own launch (its own store port, zygote children, report directory); the zygote and the
    baseline cache are shared and take their locks. The caller handles each result (shrinking included) before
    more runs start. An interrupt (SIGTERM/SIGHUP, Ctrl-C) reaps every rank so the running runs end at once.
    """
    from harness.launch import reap
    from harness.supervise.loop import harness_signals

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="harness-explore")
    running: dict = {}
    try:
        with harness_signals():
            while True:
                for index, schedule in itertools.islice(items, jobs - len(running)):
                    running[pool.submit(run, schedule, f"explore/{index:04d}")] = (index, schedule)
                if not running:
                    return
                done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: running[f][0]):
                    index, schedule = running.pop(future)
                    yield index, schedule, future.result()
    except BaseException:
        reap.reap_all()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _shrunk(index, schedule, result, broken, run, config, say, max_shrink) -> dict:
    say(f"explore: run {index} broke the invariant ({shorten(broken[0], 120)}); shrinking")
    n = 0

    def violates(cand: Schedule) -> bool:
        nonlocal n
        n += 1
        got, why = run(cand, f"shrink/{index:04d}-{n:02d}")
        return bool(why) and same_failure(got, result)

    small, tries = shrink(schedule, violates, max_runs=max_shrink)
    final, final_broken = run(small, f"shrink/{index:04d}-final")
    if not final_broken:  # flaky on a loaded box: report the original, which did break
        small, final, final_broken = schedule, result, broken
    record = {"index": index, "schedule": schedule.to_json(), "shrunk": small.to_json(), "shrink_runs": tries,
              "observed": final.observed, "violations": final_broken, "dir": final.dir,
              "reproducer": small.reproducer(config=config)}
    path = config.run_dir / "violations" / f"{index:04d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    say(f"explore: VIOLATION at run {index}, shrunk in {tries} runs; reproduce with:\n  {record['reproducer']}")
    return record
