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
    assert (observed.outcome, observed.faulted, observed.peer) == (row.outcome, row.faulted, row.peer)
