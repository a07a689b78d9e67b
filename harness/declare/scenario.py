"""Declarations: what to break (``Fault``, from ``harness.declare.fault``), how
(``Interrupt``), what must happen (``Expect``), all bundled in a ``Scenario``;
plus the catalog loader.

Everything here is data, validated in ``__post_init__`` so a typo in a scenario
module fails at import with a message naming the field and the valid choices.
"""

from __future__ import annotations

import importlib.util
import re
import signal as _signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.declare.blocked import DESYNC, Blocked
from harness.declare.fault import Fault
from harness.declare.verdicts import Outcome

RESERVED_ENV = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_USE_AGENT_STORE", "TP_FAILPOINTS", "TP_GUARDRAILS",
)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$")
_FM = re.compile(r"^(FM-\d{2}|control|adhoc)$")
HANG_DEADLINE_S = 4.0
"""Deadline of a guardrail-off proof that must hang (``Expect.hang``).

A hang can only be observed by waiting: the stall verdict (``harness.supervise.trace.stall_verdict``) calls it
about a second after the fault when the flight traces prove it; this is the outer bound for a hang they
cannot prove (a rank idle outside any collective, a TP path without traces). 4 s is ~400x the guarded
time-to-crash on gloo (~0.01 s) and 2x the watchdog's peer timeout (2 s), so nothing that would still
have crashed by itself is mislabelled HUNG, while the suite stays fast."""
NOT_GUARDRAILS = ("control", "adhoc")
"""``proves`` values that name no guardrail."""
_GUARDRAIL_NAME = r"[a-z][a-z0-9_]*"
_PROVES = re.compile(rf"^{_GUARDRAIL_NAME}(\+{_GUARDRAIL_NAME})*$")
_GUARDRAILS = re.compile(rf"^(all|none)(,[+-]{_GUARDRAIL_NAME})*$")


def peers_follow(cause_rank: int) -> str:
    """Signature of a rank that exits because ``cause_rank`` failed first (CONTRACT §2: ``PEER_ABORT`` naming
    the cause), e.g. ``Expect.crash({0: r"code=META_UNSERIALIZABLE", "others": peers_follow(0)})``."""
    return rf"TP-FATAL .*code=PEER_ABORT rank=\d+ cause_rank={cause_rank}\b"


@dataclass(frozen=True, kw_only=True)
class Interrupt:
    """A harness-side action: signal one rank once a trigger is met (a chunk, a time, a log line).

    One of ``after_chunk``, ``after_s``, ``after_line``; none given: after chunk 2.
    """

    rank: int = 0
    """Rank to signal."""
    signal: str = "SIGTERM"
    """Signal name."""
    after_chunk: int | None = None
    """Send once ``tp/progress/{rank}`` reports this chunk or a later one (also read under torch's default-store
    prefix, ``default_pg/``, where an engine writing through ``init_process_group``'s store puts it)."""
    after_s: float | None = None
    """Send this many seconds after the first rank's init event (an engine that reports no progress)."""
    after_line: str | None = None
    """Send once the rank's log has a line matching this regex (searched in each new line)."""

    def __post_init__(self) -> None:
        if self.signal not in _signal.Signals.__members__:
            raise ValueError(f"Interrupt: unknown signal {self.signal!r}; use a name like SIGTERM or SIGINT")
        given = [n for n in ("after_chunk", "after_s", "after_line") if getattr(self, n) is not None]
        if len(given) > 1:
            raise ValueError(f"Interrupt: give one trigger of after_chunk, after_s, after_line; got {', '.join(given)}")
        if not given:
            object.__setattr__(self, "after_chunk", 2)
        if self.rank < 0 or (self.after_chunk or 0) < 0:
            raise ValueError(f"Interrupt: rank and after_chunk must be >= 0; got {self.rank}, {self.after_chunk}")
        if self.after_s is not None and not (isinstance(self.after_s, (int, float)) and 0 <= self.after_s < 1e6):
            raise ValueError(f"Interrupt: after_s must be a number of seconds >= 0; got {self.after_s!r}")
        if self.after_line is not None:
            try:
                re.compile(self.after_line)
            except (re.error, TypeError) as exc:
                raise ValueError(f"Interrupt: after_line is not a valid regex {self.after_line!r}: {exc}") from None

    def describe(self) -> str:
        """``SIGTERM to rank 0 after chunk 2`` (or ``1.5 s after init``, ``after a line matching /.../``)."""
        if self.after_s is not None:
            when = f"{self.after_s:g} s after init"
        elif self.after_line is not None:
            when = f"after a log line matching /{self.after_line}/"
        else:
            when = f"after chunk {self.after_chunk}"
        return f"{self.signal} to rank {self.rank} {when}"


@dataclass(frozen=True, kw_only=True)
class Expect:
    """What must happen: the allowed outcomes and log signatures per rank."""

    outcomes: frozenset[Outcome]
    """Allowed outcomes (one or more, e.g. {HUNG, DIVERGED})."""
    signatures: Mapping[int | str, str] = field(default_factory=dict)
    """Regex searched in a rank's log; key: rank number, ``"others"`` (ranks not named) or ``"all"``."""
    frozen: frozenset[int] = frozenset()
    """Ranks the fault freezes (SIGSTOP): they cannot exit, so once every other rank has exited the
    harness checks they are stopped and reaps them instead of calling the run HUNG."""
    blocked: Mapping[int | str, Blocked] | str | None = None
    """Where a HUNG run must leave its ranks: ``DESYNC``, or per rank (number, ``"others"``, ``"all"``) a
    ``Blocked``. Checked against the flight traces taken at the hang; a hang anywhere else fails."""
    deadline_s: float | None = None
    """Deadline this expectation needs (``hang`` defaults it to ``HANG_DEADLINE_S``); None: the configured one."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "frozen", frozenset(self.frozen))
        if any(not isinstance(r, int) or r < 0 for r in self.frozen):
            raise ValueError(f"Expect: frozen must hold rank numbers; got {sorted(self.frozen)!r}")
        outcomes = frozenset(self.outcomes)
        if not outcomes or not all(isinstance(o, Outcome) for o in outcomes) or Outcome.HARNESS_ERROR in outcomes:
            valid = ", ".join(o.name for o in Outcome if o is not Outcome.HARNESS_ERROR)
            raise ValueError(f"Expect: outcomes must be a non-empty set of {valid}; got {self.outcomes!r}")
        object.__setattr__(self, "outcomes", outcomes)
        for key, regex in self.signatures.items():
            if not (key in ("others", "all") or (isinstance(key, int) and not isinstance(key, bool) and key >= 0)):
                raise ValueError(f"Expect: signature key {key!r} must be a rank number, 'others' or 'all'")
            try:
                re.compile(regex, re.MULTILINE)
            except (re.error, TypeError) as exc:
                raise ValueError(f"Expect: signature for {key!r} is not a valid regex {regex!r}: {exc}") from None
        object.__setattr__(self, "signatures", dict(self.signatures))
        if isinstance(self.blocked, str) and self.blocked != DESYNC:
            raise ValueError(f"Expect: blocked must be DESYNC ({DESYNC!r}) or a mapping to Blocked; got {self.blocked!r}")
        if self.blocked is not None and not isinstance(self.blocked, str):
            for key, spec in self.blocked.items():
                if not (key in ("others", "all") or (isinstance(key, int) and not isinstance(key, bool) and key >= 0)):
                    raise ValueError(f"Expect: blocked key {key!r} must be a rank number, 'others' or 'all'")
                if not isinstance(spec, Blocked):
                    raise ValueError(f"Expect: blocked[{key!r}] must be a Blocked(op=..., site=...); got {spec!r}")
            object.__setattr__(self, "blocked", dict(self.blocked))
        if self.deadline_s is not None and (not isinstance(self.deadline_s, (int, float)) or self.deadline_s <= 0):
            raise ValueError(f"Expect: deadline_s must be a number of seconds > 0 or None; got {self.deadline_s!r}")
        if self.blocked is not None and Outcome.HUNG not in outcomes:
            raise ValueError("Expect: blocked says where a hang leaves ranks; it needs HUNG among the outcomes")

    @classmethod
    def crash(cls, signatures: Mapping[int | str, str] | None = None, *, frozen: Iterable[int] = ()) -> Expect:
        """Every rank exits, at least one non-zero, within the deadline (``frozen`` ranks are reaped)."""
        return cls(outcomes=frozenset({Outcome.CRASHED}), signatures=signatures or {}, frozen=frozenset(frozen))

    @classmethod
    def clean(cls, signatures: Mapping[int | str, str] | None = None) -> Expect:
        """Every rank exits 0 with outputs equal to the healthy run's."""
        return cls(outcomes=frozenset({Outcome.CLEAN}), signatures=signatures or {})

    @classmethod
    def hang(cls, signatures: Mapping[int | str, str] | None = None, *,
             blocked: Mapping[int | str, Blocked] | str | None = None,
             deadline_s: float | None = HANG_DEADLINE_S) -> Expect:
        """Ranks are stuck (the hazard a guardrail prevents); ``blocked`` says where they must be."""
        return cls(outcomes=frozenset({Outcome.HUNG}), signatures=signatures or {}, blocked=blocked,
                   deadline_s=deadline_s)

    @classmethod
    def diverge(cls, signatures: Mapping[int | str, str] | None = None) -> Expect:
        """The run finishes but outputs differ (Franken-model)."""
        return cls(outcomes=frozenset({Outcome.DIVERGED}), signatures=signatures or {})

    @classmethod
    def hang_or_diverge(cls, signatures: Mapping[int | str, str] | None = None, *,
                        blocked: Mapping[int | str, Blocked] | str | None = None,
                        deadline_s: float | None = HANG_DEADLINE_S) -> Expect:
        """Either hazard proves the guardrail is what prevents the failure (``blocked`` applies to a hang)."""
        return cls(outcomes=frozenset({Outcome.HUNG, Outcome.DIVERGED}), signatures=signatures or {},
                   blocked=blocked, deadline_s=deadline_s)

    def blocked_for(self, rank: int) -> Blocked | None:
        """This rank's ``Blocked`` (its number, else ``others``, else ``all``); None when not per rank."""
        if not isinstance(self.blocked, dict):
            return None
        return self.blocked.get(rank, self.blocked.get("others", self.blocked.get("all")))

    def signatures_for(self, world_size: int, *, not_others: Iterable[int] = ()) -> dict[int, list[re.Pattern]]:
        """Compiled regexes per rank at this world size; ``"others"`` leaves out the ranks in ``not_others``
        (those a fault killed, made exit or froze: they print no follower's line)."""
        named = {k for k in self.signatures if isinstance(k, int)}
        too_big = sorted(k for k in named if k >= world_size)
        if too_big:
            raise ValueError(f"signature for rank {too_big[0]} but the world size is {world_size}")
        skip = set(not_others)
        out: dict[int, list[re.Pattern]] = {}
        for rank in range(world_size):
            keys = [rank] if rank in named else [] if rank in skip else ["others"]
            keys.append("all")
            out[rank] = [re.compile(self.signatures[k], re.MULTILINE) for k in keys if k in self.signatures]
        return out

    def describe(self) -> str:
        """``CRASHED`` or ``HUNG|DIVERGED``."""
        return "|".join(o.value for o in Outcome if o in self.outcomes)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One run to break: faults to arm, guardrails, and what must happen."""

    id: str
    """Unique id: ``FM-01`` for the guarded proof, ``FM-01/off`` for the guardrail-off proof."""
    title: str
    """One line for reports."""
    proves: str
    """Guardrail this scenario proves (``lockstep``; several joined by ``+``), or ``control``."""
    expect: Expect
    """Allowed outcomes and log signatures."""
    fm: str = ""
    """Failure mode ``FM-NN``, ``control`` or ``adhoc``; empty: the id's first part (``FM-01/off`` -> ``FM-01``)."""
    guardrails: str = "all"
    """``TP_GUARDRAILS``: ``all``, ``none``, ``all,-preflight``, ``none,+watchdog``."""
    faults: tuple[Fault, ...] = ()
    """Failpoints to arm (``TP_FAILPOINTS``)."""
    rank_env: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    """Extra env for single ranks, e.g. ``{1: {"TP_PROTOCOL_VERSION_OVERRIDE": "2"}}``."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra env for every rank."""
    interrupt: Interrupt | None = None
    """Signal the harness sends to a rank mid-run (graceful-shutdown controls)."""
    world_size: int | None = None
    """Fixed world size; None runs at the configured one."""
    min_world_size: int = 1
    """Skip when the configured world size is smaller."""
    chunks: int = 6
    """Chunks per run (``--chunks``)."""
    deadline_s: float | None = None
    """Seconds from fault (or init) until every rank must have exited; None = the expectation's, else configured."""
    run_timeout_s: float | None = None
    """Bound on the whole run; None = 60 s."""

    def __post_init__(self) -> None:
        where = f"Scenario(id={self.id!r})"
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise ValueError(f"{where}: id must look like 'FM-01' or 'FM-01/off'")
        if not self.fm and _FM.match(self.id.split("/")[0]):
            object.__setattr__(self, "fm", self.id.split("/")[0])
        if not _FM.match(self.fm):
            raise ValueError(f"{where}: fm must be 'FM-NN', 'control' or 'adhoc' (given, or the id's first part); "
                             f"got {self.fm!r}")
        if not _PROVES.match(self.proves):
            raise ValueError(
                f"{where}: proves must be a guardrail name (e.g. 'lockstep') or 'control'; got {self.proves!r}"
            )
        if not _GUARDRAILS.match(self.guardrails):
            raise ValueError(
                f"{where}: guardrails {self.guardrails!r} is not valid; use 'all', 'none', 'all,-NAME' or 'none,+NAME'"
            )
        if not isinstance(self.expect, Expect):
            raise TypeError(f"{where}: expect must be an Expect, e.g. Expect.crash({{0: 'TP-FATAL'}})")
        faults = tuple(self.faults) if not isinstance(self.faults, Fault) else (self.faults,)
        if not all(isinstance(f, Fault) for f in faults):
            raise ValueError(f"{where}: faults must be Fault objects; got {self.faults!r}")
        object.__setattr__(self, "faults", faults)
        _check_env(where, "env", self.env)
        for rank, extra in self.rank_env.items():
            if not isinstance(rank, int) or rank < 0:
                raise ValueError(f"{where}: rank_env keys must be rank numbers; got {rank!r}")
            _check_env(where, f"rank_env[{rank}]", extra)
        for name in ("world_size", "min_world_size", "chunks"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{where}: {name} must be an integer >= 1; got {value!r}")
        for name in ("deadline_s", "run_timeout_s"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"{where}: {name} must be a number of seconds > 0; got {value!r}")
        if self.interrupt is not None and not isinstance(self.interrupt, Interrupt):
            raise ValueError(f"{where}: interrupt must be an Interrupt(...) or None")
        if self.deadline_s is None:
            object.__setattr__(self, "deadline_s", self.expect.deadline_s)

    def __str__(self) -> str:
        return self.id

    def failpoints(self) -> str:
        """The ``TP_FAILPOINTS`` value."""
        return ";".join(f.spec() for f in self.faults)

    def guardrail_off(self, name: str) -> bool:
        """True when ``name`` is switched off by this scenario's guardrails spec."""
        return guardrail_off(self.guardrails, name)

    def guardrails_proven(self) -> list[str]:
        """The guardrail names ``proves`` claims (none for ``control`` and ``adhoc``): the TP path's to check."""
        return [] if self.proves in NOT_GUARDRAILS else self.proves.split("+")

    def check_ranks(self, world_size: int) -> None:
        """Raise ValueError naming the field when a rank this scenario names is not below ``world_size``."""
        named = [(f"faults[{i}] {f.spec()!r}", f.rank) for i, f in enumerate(self.faults) if f.rank is not None]
        named += [(f"rank_env[{r}]", r) for r in self.rank_env]
        named += [(f"Expect signature for rank {r}", r) for r in self.expect.signatures if isinstance(r, int)]
        named += [(f"Expect frozen rank {r}", r) for r in self.expect.frozen]
        if isinstance(self.expect.blocked, dict):
            named += [(f"Expect blocked rank {r}", r) for r in self.expect.blocked if isinstance(r, int)]
        if self.interrupt is not None:
            named.append(("interrupt", self.interrupt.rank))
        for what, rank in named:
            if rank >= world_size:
                raise ValueError(f"scenario {self.id}: {what} names rank {rank}, but it runs at world size "
                                 f"{world_size} (ranks 0..{world_size - 1}); fix the rank or set world_size= / "
                                 "min_world_size=")

    def skip_reason(self, world_size: int) -> str | None:
        """Why this scenario cannot run at ``world_size`` (None when it can)."""
        if self.world_size is None and self.min_world_size > world_size:
            return f"{self.id} needs world size >= {self.min_world_size}; configured {world_size}"
        return None


def guardrail_off(spec: str, name: str) -> bool:
    """True when guardrail ``name`` is off under ``TP_GUARDRAILS=spec``."""
    base, *changes = spec.split(",")
    on = base == "all"
    for change in changes:
        if change[1:] == name:
            on = change[0] == "+"
    return not on


def _check_env(where: str, name: str, env: Mapping[str, str]) -> None:
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"{where}: {name} must map str to str; got {key!r}: {value!r}")
        if key in RESERVED_ENV:
            raise ValueError(
                f"{where}: {name} sets {key}, which the harness owns; use faults=/guardrails=/world_size="
            )


def default_catalog_paths(root: Path) -> list[Path]:
    """``scenarios/test_*.py`` under ``root``, sorted."""
    return sorted((root / "scenarios").glob("test_*.py"))


def load_catalog(paths: Iterable[Path] | None = None) -> list[Scenario]:
    """Import each scenario module by path and collect its module-level ``SCENARIOS``.

    ``paths`` defaults to ``scenarios/test_*.py`` of the repository holding ``harness/``.
    """
    if paths is None:
        paths = default_catalog_paths(Path(__file__).resolve().parents[2])
    seen: dict[str, Path] = {}
    catalog: list[Scenario] = []
    for path in map(Path, paths):
        name = "harness_catalog_" + re.sub(r"\W", "_", str(path.resolve()))
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import scenario module {path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except SystemExit as exc:  # an exit at import would end the caller silently with that status
            raise ValueError(f"{path} called sys.exit({exc.code!r}) while being imported; a scenario "
                             "module only declares SCENARIOS") from None
        for scenario in getattr(module, "SCENARIOS", []):
            if not isinstance(scenario, Scenario):
                raise TypeError(f"{path}: SCENARIOS holds {scenario!r}, which is not a Scenario")
            if scenario.id in seen:
                raise ValueError(f"duplicate scenario id {scenario.id!r} in {seen[scenario.id]} and {path}")
            seen[scenario.id] = path
            catalog.append(scenario)
    return catalog
