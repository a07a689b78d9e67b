"""Log lines of the harness contract (docs/CONTRACT.md §2).

Every line is written to stdout and flushed at once: a rank may be killed
the next instant, and the line that explains why must already be on disk.
"""

from __future__ import annotations

import json
import sys
import time


def _write(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def event(name: str, **fields: object) -> None:
    """One ``TP-EVENT`` JSON line with monotonic and wall timestamps."""
    record = {"event": name, "mono": round(time.monotonic(), 6), "wall": round(time.time(), 6)}
    record.update(fields)
    _write("TP-EVENT " + json.dumps(record, sort_keys=True, default=str))


def fault(site: str, action: str, ctx: dict) -> None:
    """The ``TP-FAULT`` line, printed before the fault acts."""
    _write(
        f"TP-FAULT site={site} action={action} rank={ctx.get('rank')} "
        f"chunk={ctx.get('chunk')} call_id={ctx.get('call_id')} mono={time.monotonic():.6f}"
    )


def fatal_line(*, fm: str, code: str, rank: int, call_id: int, chunk: int,
               detail: str, cause_rank: int | None = None) -> str:
    cause = f" cause_rank={cause_rank}" if cause_rank is not None else ""
    detail = detail.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " | ")
    return (f"TP-FATAL fm={fm} code={code} rank={rank}{cause} call_id={call_id} "
            f"chunk={chunk} mono={time.monotonic():.6f} detail=\"{detail}\"")


def info(message: str) -> None:
    _write(f"TP-INFO {message}")
