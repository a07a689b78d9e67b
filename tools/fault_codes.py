"""Which fatal code each failpoint action produces at each site: the table in docs/SCENARIOS.md.

The TP path declares its sites and the actions that mean something at each
(``--list-failpoints``). For every site this runs ``raise`` and every declared
argument of its data actions (``corrupt``, ``set``, ``flip``) once, at world
size 2 with every guardrail on, on the rank the site runs on (the driver,
rank 0, or a worker, rank 1), and reads the judged result: the outcome, the
faulted rank's TP-FATAL code (or its own exit or signal) and its peer's.

``python -m tools.fault_codes --write`` rewrites the table between its
markers in docs/SCENARIOS.md; ``tests/test_scenarios_doc.py`` reruns every row
of the file and fails when the TP path no longer does what the table says.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import Expect, Fault, Scenario
from harness.declare.verdicts import Outcome
from harness.pipeline.runner import RunConfig, run_scenario

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "SCENARIOS.md"
BEGIN = "<!-- fault-codes:begin (python -m tools.fault_codes --write) -->"
END = "<!-- fault-codes:end -->"
HEADER = ("| site | on rank | action | outcome | faulted rank | its peer |", "|---|---|---|---|---|---|")
ANY_OUTCOME = Expect(outcomes=frozenset({Outcome.CLEAN, Outcome.CRASHED, Outcome.HUNG, Outcome.DIVERGED}))


@dataclass(frozen=True, kw_only=True)
class Row:
    """One line of the table: a fault and what it produced."""

    site: str
    """Failpoint site."""
    rank: int
    """Rank the fault is armed on (0 = the driver, 1 = a worker)."""
    action: str
    """Action with its argument, e.g. ``corrupt(callable)``."""
    outcome: str = ""
    """Observed outcome, e.g. ``CRASHED``."""
    faulted: str = ""
    """The faulted rank's TP-FATAL code, or its own exit (``exit 3``, ``SIGKILL``), or ``exit 0``."""
    peer: str = ""
    """The other rank's TP-FATAL code or exit."""

    def line(self) -> str:
        return (f"| `{self.site}` | {self.rank} | `{self.action}` | {self.outcome} | {_cell(self.faulted)} "
                f"| {_cell(self.peer)} |")

    def fault(self) -> Fault:
        declared = _declared()[self.site]
        chunk = 1 if declared.get("chunked", True) else None
        return Fault(site=self.site, action=self.action, rank=self.rank, chunk=chunk, hit=1)


def _cell(text: str) -> str:
    return f"`{text}`" if text.isupper() and "_" in text else text


def _declared() -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "tp", "--list-failpoints"], check=True, capture_output=True,
                         text=True, cwd=REPO, timeout=120).stdout
    return {doc["site"]: doc for doc in map(json.loads, out.splitlines()) if doc.get("site")}


def planned() -> list[Row]:
    """Every row the TP path's declarations call for: ``raise`` and each data action's arguments, per site."""
    rows = []
    for site, doc in _declared().items():
        rank = 0 if doc.get("ranks") == "driver" else 1
        rows.append(Row(site=site, rank=rank, action="raise"))
        for action in doc["actions"]:
            if action["action"] in ("corrupt", "set", "flip"):
                for arg in action.get("args") or [None]:
                    form = action["action"] + (f"({arg})" if arg is not None else "")
                    rows.append(Row(site=site, rank=rank, action=form))
    return rows


def observe(row: Row, run_dir: Path) -> Row:
    """Run ``row``'s fault once and fill in what happened."""
    scenario = Scenario(id="fault-codes", fm="adhoc", title=f"{row.site}={row.action}", proves="adhoc",
                        faults=(row.fault(),), expect=ANY_OUTCOME)
    result = run_scenario(scenario, RunConfig(run_dir=run_dir, world_size=2, cwd=REPO))
    ranks = {r.rank: r for r in result.ranks}
    return Row(site=row.site, rank=row.rank, action=row.action, outcome=result.observed,
               faulted=_end(ranks[row.rank]), peer=_end(ranks[1 - row.rank]))


def matches(observed: Row, documented: Row) -> bool:
    """The same outcome and codes, up to one race: who publishes the abort first.

    Where a fault is detected by the faulted rank and may be by its peer too (both sides of a digest
    exchange see the mismatch), either may read the other's abort before its own check ends and print
    ``PEER_ABORT`` instead: a row whose peer shows the faulted rank's code (or ``PEER_ABORT``) accepts both
    ends in {that code, PEER_ABORT} with the code on at least one side. Every other cell must match exactly.
    """
    if observed.outcome != documented.outcome:
        return False
    code, follow = documented.faulted, {documented.faulted, "PEER_ABORT"}
    if code == "PEER_ABORT" or documented.peer not in follow:
        return (observed.faulted, observed.peer) == (documented.faulted, documented.peer)
    ends = {observed.faulted, observed.peer}
    if documented.peer == "PEER_ABORT":  # the documented peer followed: it may also have caught the fault itself
        return observed.faulted == code and observed.peer in follow
    return ends <= follow and code in ends


def _end(rank) -> str:
    return rank.code or rank.exit


def parse(text: str) -> list[Row]:
    """The rows of the table in ``text`` (docs/SCENARIOS.md)."""
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = []
    for line in body.strip().splitlines()[2:]:
        site, rank, action, outcome, faulted, peer = (c.strip().strip("`") for c in line.strip("|").split("|"))
        rows.append(Row(site=site, rank=int(rank), action=action, outcome=outcome, faulted=faulted, peer=peer))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.fault_codes", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the table in {DOC.relative_to(REPO)}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fault-codes-") as tmp:
        rows = [observe(row, Path(tmp)) for row in planned()]
    table = "\n".join([*HEADER, *(r.line() for r in rows)])
    if not args.write:
        print(table)
        return 0
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}")
    print(f"wrote {len(rows)} rows to {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
