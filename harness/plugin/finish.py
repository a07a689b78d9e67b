"""The plugin at the end of a session: the report run finished by the pipeline, shown on pytest's terminal.

Registered by ``harness.plugin`` as the ``breakit-finish`` plugin. ``Session.finish`` writes summary.json/md,
the delta and ``latest`` (the command line calls the same); this module shows it, puts the overall verdict in
JUnit XML, keeps an INCOMPLETE run from going green, and keeps the failures on the terminal when the report
could not be written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _pytest import junitxml

from harness.pipeline.session import Finished, ReportLost
from harness.plugin import stash
from harness.report import files as report

_FINISHED = pytest.StashKey[Finished]()
_LOST = pytest.StashKey[list]()


class Tally:
    """What this process saw of scenario tests: how many finished, which failed (needs no disk).

    Registered as a plugin: on an xdist controller it sees every worker's reports.
    """

    def __init__(self) -> None:
        self.finished = 0
        self.failures: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if "breakit" not in report.keywords:
            return
        if report.failed:
            # xdist puts "[gw0] linux -- Python ..." first: the reason is the first other line.
            lines = [ln for ln in (report.longreprtext or "").splitlines() if ln.strip() and not ln.startswith("[gw")]
            self.failures.append(f"{report.nodeid} ({report.when}): {(lines or [''])[0][:300]}")
        if report.when == "teardown":
            self.finished += 1


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Controller only: finish the report run; only a complete run moves ``latest``.

    Runs before junitxml writes its file, so the overall verdict lands there as a property.
    """
    config = session.config
    run = config.stash.get(stash.SESSION, None)
    if hasattr(config, "workerinput") or run is None:
        return
    planned = report.read_planned(run.run_dir)
    if not planned and not run.has_results():
        return
    try:
        done = run.finish(planned=planned, interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)
    except ReportLost as exc:
        _report_lost(session, exc)
        return
    config.stash[_FINISHED] = done
    xml = config.stash.get(junitxml.xml_key, None)
    if xml is not None:
        xml.add_global_property("breakit_overall", done.summary.headline)
        if done.delta_lines:
            xml.add_global_property("breakit_baseline_delta", "; ".join(x.strip() for x in done.delta_lines))
    if done.incomplete and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _report_lost(session: pytest.Session, exc: ReportLost) -> None:
    """The report could not be written (disk full...): keep the failures on the terminal, fail the session."""
    tally = session.config.pluginmanager.get_plugin("breakit-tally") or Tally()
    lines = [f"tp-breakit: {exc.what}",
             f"tp-breakit: {tally.finished} scenario tests finished, {len(tally.failures)} failed:"]
    lines += [f"  FAILED {f}" for f in tally.failures] or ["  (none)"]
    if session.config.pluginmanager.get_plugin("terminalreporter") is not None:
        session.config.stash[_LOST] = lines  # shown by pytest_terminal_summary, after the progress line
    else:
        print("\n".join(lines), file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    tr = terminalreporter
    lost = config.stash.get(_LOST, None)
    if lost:
        tr.write_sep("=", "tp-breakit: report not written", red=True)
        for line in lost:
            tr.write_line(line, red=True)
    done = config.stash.get(_FINISHED, None)
    if done is None:
        return
    summary = done.summary
    verbosity = config.get_verbosity()
    if verbosity >= 0:
        tr.write_sep("=", "tp-breakit")
    doc = json.loads(summary.json_path.read_text())
    for line, red in report.terminal_lines(doc, verbosity):
        tr.write_line(line, red=red)
    rel = summary.md_path
    if rel.is_relative_to(Path.cwd()):
        rel = rel.relative_to(Path.cwd())
    if done.incomplete:
        tr.write_line(f"breakit {summary.headline}; report: {rel} (+ report.html); 'latest' not moved")
        return
    tr.write_line(f"breakit {doc['overall']}: {summary.total} scenarios, {summary.failed} failed; report: {rel} "
                  "(+ report.html)")
