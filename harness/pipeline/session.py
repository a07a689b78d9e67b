"""One report run, whichever door it came through: plan it, run its scenarios, finish it.

The command line (``harness/cli/``) and the pytest plugin (``harness/plugin/``) are adapters over this: each
turns what its user typed into resolved settings (``harness.pipeline.options``), hands them to a ``Session``,
and shows what it returns in its own words. Everything both doors must do the same way lives here once:

* **plan**: the report directory can be written, ``--baseline`` names a run, the rank command fits the launch
  mode, and the TP path is asked about every input (``harness.launch.probe``), all before any rank starts;
* **run**: one ``RunConfig`` per report run, built from the settings in one place;
* **finish**: summary.json/md, the delta against the last green run, ``latest`` moved only by a complete run,
  an INCOMPLETE run never green, and a report that could not be written said so instead of lost.

An input refused before any rank starts raises ``Refused`` with the one line to show, naming the flag of the
door it came through (``--deadline`` or ``--breakit-deadline``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.declare.scenario import Scenario
from harness.declare.verdicts import Verdict
from harness.launch import probe
from harness.pipeline import options
from harness.pipeline.runner import RunConfig
from harness.report import delta
from harness.report import files as report

DOORS = ("cli", "pytest")


class Refused(Exception):
    """An input refused before any rank starts; ``str()`` is the one line to show."""


class ReportLost(Exception):
    """The report could not be written (disk full, directory gone): the verdicts already shown are all there is."""

    def __init__(self, run_dir: Path, exc: OSError, *, flag: str = "--report-dir") -> None:
        self.what = f"could not write the report in {run_dir}: {type(exc).__name__}: {exc}"
        """What failed, in one line."""
        super().__init__(f"{self.what}; the run stopped there and the verdicts above are all it has: free space "
                         f"there or pick another {flag}")


@dataclass(frozen=True, kw_only=True)
class Finished:
    """What finishing a report run wrote and what it says."""

    summary: report.Summary
    """Where summary.json/md went, the overall verdict and its counts."""
    delta_lines: tuple[str, ...]
    """The delta against the baseline run, one line each (empty without a baseline)."""

    @property
    def incomplete(self) -> bool:
        return self.summary.overall == Verdict.INCOMPLETE


@dataclass(kw_only=True)
class Session:
    """One report run: its resolved settings, its run directory, what it compares with."""

    settings: dict
    """Every option of ``harness.pipeline.options`` resolved (marker and scenario values apply per scenario)."""
    run_dir: Path
    """``<report dir>/<YYYYmmdd-HHMMSS>-<pid>``: where this run's results go."""
    door: str = "cli"
    """``cli`` or ``pytest``: which flag names errors use."""
    baseline: Path | None = None
    """The run directory to compare with (None: the last green run of the same configuration)."""
    selection: str = ""
    """What the run was asked for: runs compare only with runs of the same selection."""
    notes: list[str] = field(default_factory=list)
    """What planning decided for the user without being asked (a launch mode that gave way)."""

    def __post_init__(self) -> None:
        if self.door not in DOORS:
            raise ValueError(f"Session.door must be one of {', '.join(DOORS)}; got {self.door!r}")

    def flag(self, name: str) -> str:
        """The flag a user of this door types for option ``name``."""
        opt = options.OPTIONS[name]
        return opt.cli_flag if self.door == "cli" else opt.pytest_flag

    # -- plan ------------------------------------------------------------------------------------------------

    def check_report_dir(self) -> None:
        """The report root can hold run directories: one line, before any rank or the zygote."""
        root = self.run_dir.parent
        try:
            report.check_writable(root)
        except OSError as exc:
            raise Refused(f"report dir {str(root)!r} ({self.flag('report_dir')}) is not writable: "
                          f"{exc.strerror or exc}; pick a directory you can write") from None

    def find_baseline(self, given: Path | str | None, flag: str) -> Path | None:
        """``given`` as a run directory (a report root means its ``latest``); kept as this run's baseline."""
        if given:
            try:
                self.baseline = report.find_run_dir(Path(given))
            except FileNotFoundError as exc:
                raise Refused(f"{flag}: {exc}") from None
        return self.baseline

    def fit_launch(self, *, chosen: bool) -> str:
        """The launch mode the rank command can start in: a default zygote gives way (a note), a chosen one
        that cannot is refused."""
        try:
            launch, note = probe.fit_launch(self.settings["tp_command"], self.settings["launch"], chosen=chosen)
        except probe.Refused as exc:
            raise Refused(f"{exc} ({self.flag('tp_command')} / {self.flag('launch')})") from None
        self.settings["launch"] = launch
        if note:
            self.notes.append(note)
        return launch

    def ask(self, planned: list[tuple[Scenario, int]], *, cwd: Path) -> probe.Pending:
        """Check every planned ``(scenario, world size)``, then ask the TP path about the rest in the
        background (its import of torch overlaps ours of the store)."""
        try:
            pending = probe.ask(self.settings["tp_command"], planned, backend=self.settings["backend"],
                                launch=self.settings["launch"], cwd=cwd)
        except probe.Refused as exc:
            raise Refused(str(exc)) from None
        probe.overlap_store_import(self.settings["launch"])
        return pending

    @staticmethod
    def answer(pending: probe.Pending) -> str | None:
        """The TP path's verdict on every input: ``Refused``, or None, or a note that it could not judge them."""
        try:
            got = pending.answer()
        except probe.Refused as exc:
            raise Refused(str(exc)) from None
        if got.answered:
            return None
        return f"fault specs, guardrails, world sizes, backend and env were checked for syntax only: {got.note}"

    # -- run -------------------------------------------------------------------------------------------------

    def run_config(self, **overrides) -> RunConfig:
        """The ``RunConfig`` of this report run: every scenario's settings, from one place."""
        s = self.settings
        fields = dict(run_dir=self.run_dir, world_size=s["world_size"], backend=s["backend"], device=s["device"],
                      deadline_s=s["deadline"], stall_s=s["stall"], launch=s["launch"], tp_command=s["tp_command"],
                      startup_deadline_s=s["startup_deadline"])
        return RunConfig(**{**fields, **overrides})

    # -- finish ----------------------------------------------------------------------------------------------

    def finish(self, *, planned: int | None, interrupted: bool) -> Finished:
        """summary.json/md and the delta; ``latest`` moves only when the run is complete. ``ReportLost`` when
        the disk refused."""
        try:
            summary = report.write_summary(self.run_dir, planned=planned, interrupted=interrupted,
                                           baseline=self.baseline, selection=self.selection)
            if summary.overall != Verdict.INCOMPLETE:
                report.update_latest(self.run_dir)
            d = json.loads(summary.json_path.read_text()).get("delta") or {}
        except OSError as exc:
            raise ReportLost(self.run_dir, exc, flag=self.flag("report_dir")) from exc
        return Finished(summary=summary, delta_lines=tuple(delta.lines(d)) if d else ())

    def has_results(self) -> bool:
        """True once any scenario of this run wrote its result."""
        return any(self.run_dir.glob("*/result.json"))
