"""How often a rank dies of its own stack dump: SIGUSR1s against threads that keep calling Python.

    python -m tools.stack_race [--runs N] [--signals K] [--mode tp|handler]

Each run starts one process with three threads recursing in and out of deep Python stacks (crossing the
interpreter's data-stack chunks), installs the SIGUSR1 answer, and sends it K signals 2 ms apart. ``tp`` is the
TP path's own answer (``tp.flight.install``: the signal thread dumps stacks with the GIL held); ``handler`` is
``faulthandler.register(SIGUSR1, all_threads=True)``, the dump run inside the signal handler without the GIL.
Prints how many runs died of a signal, and exits 1 if any did.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
READY = "ready"

_CHILD = """
import faulthandler, os, signal, sys, threading
sys.setrecursionlimit(5000)
sys.stderr = open(os.devnull, "w")

def churn(depth):
    return churn(depth - 1) + 1 if depth else 0

def worker():
    while True:
        for depth in (50, 400, 900, 200):
            churn(depth)

for _ in range(3):
    threading.Thread(target=worker, daemon=True).start()
if sys.argv[1] == "handler":
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
else:
    from tp import flight
    flight.install(flight.Recorder(rank=0, world_size=1, ctx={"chunk": -1, "call_id": -1}))
print("ready", flush=True)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the trace lines of every answer: nobody reads the pipe now
threading.Event().wait()
"""


def one_run(mode: str, signals: int) -> int | None:
    """The signal a run died of (None: it outlived every SIGUSR1 and was then killed by us)."""
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, mode], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        if proc.stdout.readline().strip() != READY:
            raise RuntimeError(f"stack_race child ({mode}) exited {proc.wait(10)} before it was ready")
        gap = threading.Event()
        for _ in range(signals):
            if proc.poll() is not None:
                break
            os.kill(proc.pid, signal.SIGUSR1)
            gap.wait(0.002)  # pacing the signals, not synchronising: the child never answers them
        died = proc.poll()
        return -died if died is not None and died < 0 else None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()


def rate(mode: str, runs: int, signals: int) -> list[str]:
    """The signal names the runs died of, one per run that died."""
    deaths = (one_run(mode, signals) for _ in range(runs))
    return [signal.Signals(d).name for d in deaths if d is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack_race", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--signals", type=int, default=300)
    parser.add_argument("--mode", choices=("tp", "handler"), default="tp")
    args = parser.parse_args(argv)
    deaths = rate(args.mode, args.runs, args.signals)
    print(f"{args.mode}: {len(deaths)}/{args.runs} runs died of a signal of their own "
          f"({args.signals} SIGUSR1 each){': ' + ', '.join(deaths) if deaths else ''}")
    return 1 if deaths else 0


if __name__ == "__main__":
    sys.exit(main())
