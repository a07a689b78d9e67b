"""The field tables of docs/SCENARIOS.md, generated from the dataclasses' own field docstrings.

``python -m tools.scenario_fields --write`` rewrites the tables between their
markers; ``tests/test_scenarios_doc.py`` fails when a field or its docstring
changed and the doc did not.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sys
import textwrap
from pathlib import Path

from harness import Expect, Fault, Interrupt, Scenario
from harness.declare.blocked import Blocked

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "SCENARIOS.md"
BEGIN = "<!-- fields:begin (python -m tools.scenario_fields --write) -->"
END = "<!-- fields:end -->"
CLASSES = (Scenario, Fault, Expect, Interrupt, Blocked)


def fields(cls: type) -> list[tuple[str, str, str, str]]:
    """``(name, annotation, default, docstring)`` of each field, in declaration order."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = []
    for node, after in zip(body, [*body[1:], None], strict=True):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        doc = ""
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            doc = " ".join(inspect.cleandoc(after.value.value).split())
        default = "required" if node.value is None else ast.unparse(node.value)
        if default.startswith("field(default_factory="):
            default = {"dict": "{}", "list": "[]"}.get(default[len("field(default_factory="):-1], default)
        out.append((node.target.id, ast.unparse(node.annotation), default, doc))
    return out


def tables() -> str:
    """One Markdown table per class."""
    parts = []
    for cls in CLASSES:
        summary = inspect.cleandoc(cls.__doc__ or "").splitlines()[0]
        parts += [f"### `{cls.__name__}`: {summary}", "", "| field | type | default | meaning |", "|---|---|---|---|"]
        parts += [f"| `{n}` | `{_cell(a)}` | `{_cell(d)}` | {_cell(doc)} |" for n, a, d, doc in fields(cls)]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def _cell(text: str) -> str:
    """A table cell: GFM splits cells at every ``|``, code spans included, unless escaped."""
    return text.replace("|", "\\|")


def section(text: str) -> str:
    """What stands between the markers in ``text``."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.scenario_fields", description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite the tables in {DOC.relative_to(REPO)}")
    if not parser.parse_args(argv).write:
        sys.stdout.write(tables())
        return 0
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n\n{tables()}\n{END}{rest.split(END, 1)[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
