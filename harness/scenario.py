"""Declarations: what to break (``Fault``), how (``Interrupt``), what must happen
(``Expect``), all bundled in a ``Scenario``; plus the catalog loader.

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

from harness.blocked import DESYNC, Blocked  # noqa: F401 - scenario modules import them from here
from harness.result import Outcome

ACTIONS = {
    # name: (argument required?, argument allowed?)
    "raise": (False, True),
    "exit": (True, True),
    "kill": (True, True),
    "hang": (False, False),
    "sleep": (True, True),
    "corrupt": (False, True),
    "flip": (False, False),
    "set": (True, True),
}
TRIGGERS = ("rank", "chunk", "call", "hit")
RESERVED_ENV = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
    "TORCHELASTIC_USE_AGENT_STORE", "TP_FAILPOINTS", "TP_GUARDRAILS",
)
MAX_SITE_LEN = 200
"""Longest failpoint name the harness passes on (a longer one is a mistake, not a site)."""
MAX_SLEEP_S = 86400.0
"""Longest ``sleep(S)``: a day; beyond it the rank's timer overflows."""
_SITE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z0-9_]+)+$")
_ENTRY = re.compile(r"^(?P<site>[^=@;\s]+)=(?P<name>[a-z_]+)(?:\((?P<arg>[^()]*)\))?(?:@(?P<triggers>.+))?$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$")
_FM = re.compile(r"^(FM-\d{2}|control|adhoc)$")
_GUARDRAIL_NAME = r"[a-z][a-z0-9_]*"
_PROVES = re.compile(rf"^{_GUARDRAIL_NAME}(\+{_GUARDRAIL_NAME})*$")
_GUARDRAILS = re.compile(rf"^(all|none)(,[+-]{_GUARDRAIL_NAME})*$")


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One failpoint to arm in the ranks (``TP_FAILPOINTS`` entry, CONTRACT §4)."""

    site: str
    """Dotted failpoint name written in the TP path, e.g. ``envelope.after_header``."""
    action: str
    """``raise``, ``exit(40)``, ``kill(SIGKILL)``, ``hang``, ``sleep(0.5)``, ``corrupt[(ARG)]``, ``flip``, ``set(V)``.

    See CONTRACT §4; the TP path decides what each action means at each site.
    """
    rank: int | None = None
    """Only on this rank (None = every rank)."""
    chunk: int | None = None
    """Only in this chunk."""
    call: int | None = None
    """Only for this call_id."""
    hit: int | None = None
    """Only the N-th matching hit, 1-based (None = every matching hit)."""

    def __post_init__(self) -> None:
        where = f"Fault(site={_show(self.site)})"
        if len(self.site) > MAX_SITE_LEN:
            raise ValueError(f"{where}: site is {len(self.site)} characters; a failpoint name has at most "
                             f"{MAX_SITE_LEN}")
        if not _SITE.match(self.site):
            raise ValueError(f"{where}: site must be a dotted name like 'envelope.after_header'")
        m = re.fullmatch(r"([a-z_]+)(?:\(([^()]*)\))?", self.action)
        if not m or m.group(1) not in ACTIONS:
            raise ValueError(f"{where}: unknown action {self.action!r}; valid: {', '.join(_action_forms())}")
        name, arg = m.group(1), m.group(2)
        needs, allows = ACTIONS[name]
        if arg is None and needs:
            example = _action_forms()[list(ACTIONS).index(name)]
            raise ValueError(f"{where}: action {name!r} needs an argument, e.g. {example}")
        if arg is not None and not allows:
            raise ValueError(f"{where}: action {name!r} takes no argument (got {self.action!r})")
        if name == "exit" and not (re.fullmatch(r"\d{1,3}", arg or "") and int(arg or 0) <= 255):
            raise ValueError(f"{where}: exit needs an integer code 0..255, e.g. exit(40); got {_show(self.action)}")
        if name == "set" and not (arg or "").strip():
            raise ValueError(f"{where}: set needs a value, e.g. set(none) or set(float16); got {self.action!r}")
        if name == "kill" and (arg or "") not in _signal.Signals.__members__:
            raise ValueError(f"{where}: kill needs a signal name like SIGKILL or SIGSTOP; got {self.action!r}")
        if name == "sleep" and not (re.fullmatch(r"\d+(\.\d*)?|\.\d+", arg or "")
                                    and float(arg or 0) <= MAX_SLEEP_S):
            raise ValueError(f"{where}: sleep needs seconds 0..{MAX_SLEEP_S:g}, e.g. sleep(0.5); "
                             f"got {_show(self.action)}")
        for trig in TRIGGERS:
            value = getattr(self, trig)
            low = 1 if trig == "hit" else 0
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
                raise ValueError(f"{where}: {trig} must be an integer >= {low} or None; got {value!r}")

    def spec(self) -> str:
        """This fault as a ``TP_FAILPOINTS`` entry, e.g. ``envelope.after_header=raise@rank=0,chunk=2``."""
        triggers = [f"{t}={getattr(self, t)}" for t in TRIGGERS if getattr(self, t) is not None]
        return f"{self.site}={self.action}" + (f"@{','.join(triggers)}" if triggers else "")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse one ``SITE=ACTION[(ARG)][@TRIGGER,...]`` entry (inverse of ``spec()``)."""
        spec = spec.strip()
        m = _ENTRY.match(spec)
        if not m:
            raise ValueError(
                f"bad fault spec {_show(spec)}; expected SITE=ACTION[(ARG)][@TRIGGER,...], "
                "e.g. 'envelope.after_header=raise@rank=0,chunk=2'"
            )
        action = m["name"] + (f"({m['arg']})" if m["arg"] is not None else "")
        kwargs: dict[str, int] = {}
        for trig in (m["triggers"] or "").split(",") if m["triggers"] else ():
            key, eq, value = trig.partition("=")
            if key not in TRIGGERS or not eq or not re.fullmatch(r"\d+", value):
                raise ValueError(
                    f"bad trigger {_show(trig)} in fault spec {_show(spec)}; valid: rank=R, chunk=C, call=K, hit=N"
                )
            kwargs[key] = int(value)
        return cls(site=m["site"], action=action, **kwargs)


def _show(text: str, limit: int = 80) -> str:
    """``text`` quoted for an error message, cut to ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def parse_faults(spec: str) -> tuple[Fault, ...]:
    """Parse a whole ``;``-separated ``TP_FAILPOINTS`` value."""
    return tuple(Fault.parse(entry) for entry in spec.split(";") if entry.strip())


def frozen_by(faults: Iterable[Fault]) -> frozenset[int]:
    """Ranks a ``kill(SIGSTOP)`` fault freezes: they cannot exit, the harness reaps them (``Expect.frozen``)."""
    return frozenset(f.rank for f in faults if f.action == "kill(SIGSTOP)" and f.rank is not None)


def _action_forms() -> list[str]:
    return ["raise", "exit(CODE)", "kill(SIGNAME)", "hang", "sleep(SECONDS)", "corrupt[(ARG)]", "flip", "set(VALUE)"]


@dataclass(frozen=True, kw_only=True)
class Interrupt:
    """A harness-side action: signal one rank once it reports a chunk (graceful shutdown)."""

    rank: int = 0
    """Rank to signal."""
    signal: str = "SIGTERM"
    """Signal name."""
    after_chunk: int = 2
    """Send once ``tp/progress/{rank}`` reports this chunk (or a later one)."""

    def __post_init__(self) -> None:
        if self.signal not in _signal.Signals.__members__:
            raise ValueError(f"Interrupt: unknown signal {self.signal!r}; use a name like SIGTERM or SIGINT")
        if self.rank < 0 or self.after_chunk < 0:
            raise ValueError(f"Interrupt: rank and after_chunk must be >= 0; got {self.rank}, {self.after_chunk}")


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
             blocked: Mapping[int | str, Blocked] | str | None = None) -> Expect:
        """Ranks are stuck (the hazard a guardrail prevents); ``blocked`` says where they must be."""
        return cls(outcomes=frozenset({Outcome.HUNG}), signatures=signatures or {}, blocked=blocked)

    @classmethod
    def diverge(cls, signatures: Mapping[int | str, str] | None = None) -> Expect:
        """The run finishes but outputs differ (Franken-model)."""
        return cls(outcomes=frozenset({Outcome.DIVERGED}), signatures=signatures or {})

    @classmethod
    def hang_or_diverge(cls, signatures: Mapping[int | str, str] | None = None, *,
                        blocked: Mapping[int | str, Blocked] | str | None = None) -> Expect:
        """Either hazard proves the guardrail is what prevents the failure (``blocked`` applies to a hang)."""
        return cls(outcomes=frozenset({Outcome.HUNG, Outcome.DIVERGED}), signatures=signatures or {},
                   blocked=blocked)

    def blocked_for(self, rank: int) -> Blocked | None:
        """This rank's ``Blocked`` (its number, else ``others``, else ``all``); None when not per rank."""
        if not isinstance(self.blocked, dict):
            return None
        return self.blocked.get(rank, self.blocked.get("others", self.blocked.get("all")))

    def signatures_for(self, world_size: int) -> dict[int, list[re.Pattern]]:
        """Compiled regexes per rank at this world size."""
        named = {k for k in self.signatures if isinstance(k, int)}
        too_big = sorted(k for k in named if k >= world_size)
        if too_big:
            raise ValueError(f"signature for rank {too_big[0]} but the world size is {world_size}")
        out: dict[int, list[re.Pattern]] = {}
        for rank in range(world_size):
            keys = [rank] if rank in named else ["others"]
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
    fm: str
    """Failure mode ``FM-NN``, ``control`` or ``adhoc``."""
    title: str
    """One line for reports."""
    proves: str
    """Guardrail this scenario proves (``lockstep``; several joined by ``+``), or ``control``."""
    expect: Expect
    """Allowed outcomes and log signatures."""
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
    """Seconds from fault (or init) until every rank must have exited; None = configured."""
    run_timeout_s: float | None = None
    """Bound on the whole run; None = 60 s."""

    def __post_init__(self) -> None:
        where = f"Scenario(id={self.id!r})"
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise ValueError(f"{where}: id must look like 'FM-01' or 'FM-01/off'")
        if not _FM.match(self.fm):
            raise ValueError(f"{where}: fm must be 'FM-NN', 'control' or 'adhoc'; got {self.fm!r}")
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

    def __str__(self) -> str:
        return self.id

    def failpoints(self) -> str:
        """The ``TP_FAILPOINTS`` value."""
        return ";".join(f.spec() for f in self.faults)

    def guardrail_off(self, name: str) -> bool:
        """True when ``name`` is switched off by this scenario's guardrails spec."""
        return guardrail_off(self.guardrails, name)

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
        paths = default_catalog_paths(Path(__file__).resolve().parent.parent)
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
