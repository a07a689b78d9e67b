"""The launch floor: a rank that prints its ``init`` event and exits (``python -m benchmarks.noop_rank``).

Launched like a TP rank, it shows what a launch mode costs before any TP
code is imported: the difference to a real rank's time to ``init`` is the TP
path's own start-up (its imports and configuration).
"""

from __future__ import annotations

import json
import os
import time


def main() -> int:
    record = {"event": "init", "mono": round(time.monotonic(), 6), "wall": round(time.time(), 6),
              "rank": int(os.environ.get("RANK", "0")), "pid": os.getpid()}
    print("TP-EVENT " + json.dumps(record, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
