"""docs/SCENARIOS.md cannot drift: its field tables are the dataclasses' docstrings, its fault-code
table is what the TP path does (every row rerun on real ranks) and covers every declared site and data action."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools import fault_codes, scenario_fields

TEXT = fault_codes.DOC.read_text()
ROWS = fault_codes.parse(TEXT)


def test_field_tables_are_the_dataclasses_docstrings() -> None:
    assert scenario_fields.section(TEXT) == scenario_fields.tables(), "run: python -m tools.scenario_fields --write"


def test_every_documented_field_has_a_docstring() -> None:
    missing = [f"{cls.__name__}.{name}" for cls in scenario_fields.CLASSES
               for name, _, _, doc in scenario_fields.fields(cls) if not doc]
    assert missing == []


def test_the_fault_code_table_covers_what_the_tp_path_declares() -> None:
    documented = [(r.site, r.rank, r.action) for r in ROWS]
    assert documented == [(r.site, r.rank, r.action) for r in fault_codes.planned()], (
        "run: python -m tools.fault_codes --write")


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.site}={r.action}")
def test_each_fault_code_row_is_what_the_tp_path_does(row: fault_codes.Row, tmp_path: Path) -> None:
    observed = fault_codes.observe(row, tmp_path)
    assert fault_codes.matches(observed, row), (observed, row)


def test_rows_match_up_to_who_publishes_the_abort_first() -> None:
    def row(outcome: str, faulted: str, peer: str) -> fault_codes.Row:
        return fault_codes.Row(site="s", rank=1, action="a", outcome=outcome, faulted=faulted, peer=peer)

    both = row("CRASHED", "DIGEST_MISMATCH", "DIGEST_MISMATCH")
    assert fault_codes.matches(row("CRASHED", "DIGEST_MISMATCH", "PEER_ABORT"), both)
    assert fault_codes.matches(row("CRASHED", "PEER_ABORT", "DIGEST_MISMATCH"), both)
    assert not fault_codes.matches(row("CRASHED", "PEER_ABORT", "PEER_ABORT"), both)
    assert not fault_codes.matches(row("HARNESS_ERROR", "DIGEST_MISMATCH", "DIGEST_MISMATCH"), both)
    follow = row("CRASHED", "FAULT_INJECTED", "PEER_ABORT")
    assert not fault_codes.matches(row("CRASHED", "PEER_ABORT", "FAULT_INJECTED"), follow)
    assert not fault_codes.matches(row("CRASHED", "FAULT_INJECTED", "PEER_LOST"), follow)
    clean = row("CLEAN", "exit 0", "exit 0")
    assert fault_codes.matches(clean, clean) and not fault_codes.matches(row("CLEAN", "exit 0", "exit 1"), clean)
