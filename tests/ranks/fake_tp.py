"""A tiny stand-in TP path for harness tests; honours docs/CONTRACT.md.

Each "chunk" is a barrier through the store (a hung peer therefore hangs the
others, like a collective would). Failpoint sites: ``fake.init`` (after init)
and ``fake.chunk`` (start of each chunk). Test knobs (env):

* ``FAKE_PIDFILE_DIR``  write ``rank{R}.pid`` there once started;
* ``FAKE_LINEAGE_DIR``  write ``{pid}.lineage`` there: the pids of its parent, grandparent, great-grandparent;
* ``FAKE_CHUNK_S``      seconds of "compute" per chunk;
* ``FAKE_SALT``         mixed into this rank's digest (divergence);
* ``FAKE_NO_FAULTHANDLER=1``  do not register faulthandler on SIGUSR1;
* ``FAKE_NO_CHECKS=1``  do not answer ``--check-*`` (a TP path the harness can check for syntax only);
* ``FAKE_GRACEFUL=1``   rank 0 turns SIGTERM into a clean shutdown of every rank;
* ``FAKE_CHILD=group|session``  start a ``sleep`` grandchild (in the rank's
  process group, or in a session of its own) and write ``rank{R}.child.pid``;
* ``FAKE_HANG_AT_START=1``  hang before the init event (no deadline anchor);
* ``FAKE_CLOSE_STDOUT=1``  close stdout and stderr at start (every contract line is lost);
* ``FAKE_FLOOD_LINE_MB=N`` / ``FAKE_FLOOD_LINES_MB=N``  after init, write one N MB line / N MB of
  1 KB lines to the log (a rank flooding its log).
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

# The stand-in shares the TP path's fault grammar (``tp.failpoints``) from this checkout, whatever the cwd.
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))

SITES = {"fake.init": "after init, before the first chunk", "fake.chunk": "start of every chunk"}
CODES = [{"code": "FAKE_ERROR", "exit": 40, "fm": "FM-00", "description": "a failpoint raised"},
         {"code": "PEER_ABORT", "exit": 51, "fm": "FM-00", "description": "another rank aborted"}]


def emit(kind: str, text: str) -> None:
    print(f"{kind} {text}", flush=True)


def event(name: str, **fields) -> None:
    emit("TP-EVENT", json.dumps({"event": name, "mono": time.monotonic(), "wall": time.time(), **fields}))


def parse_failpoints(spec: str, where: str = "TP_FAILPOINTS") -> list:
    """The TP path's own fault grammar (``tp.failpoints``) over this stand-in's two sites."""
    from tp import failpoints

    return failpoints.parse(spec, where=where, sites=SITES)


def check(args: argparse.Namespace) -> int:
    """``--check-*``: one JSON verdict line per value, exit 2 if any is refused (CONTRACT §1)."""
    from tp import guardrails
    from tp.__main__ import answer_checks

    def world_size(n: int) -> None:
        if n < 1:
            raise ValueError(f"world size {n} must be >= 1")

    checks = [("failpoints", v, parse_failpoints) for v in args.check_failpoints]
    checks += [("guardrails", v, guardrails.parse) for v in args.check_guardrails]
    checks += [("world_size", v, world_size) for v in args.check_world_size]
    checks += [(kind, v, lambda _v: None) for kind, values in (("backend", args.check_backend),
                                                               ("env", args.check_env)) for v in values]
    return answer_checks(checks)


class Rank:
    def __init__(self, chunks: int) -> None:
        self.rank = int(os.environ["RANK"])
        self.ws = int(os.environ["WORLD_SIZE"])
        self.chunks = chunks
        try:
            self.points = parse_failpoints(os.environ.get("TP_FAILPOINTS", ""))
        except ValueError as exc:
            print(f"fake_tp: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)
        from torch.distributed import TCPStore  # here: --list-* answers without importing torch

        self.store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                              timeout=timedelta(seconds=30))
        self.stop_requested = False
        self.done = 0

    def fatal(self, code: str, exit_code: int, chunk: int, **extra) -> None:
        fields = " ".join(f"{k}={v}" for k, v in extra.items())
        emit("TP-FATAL", f"fm=FM-00 code={code} rank={self.rank} {fields} call_id={chunk} chunk={chunk} "
                         f"mono={time.monotonic():.6f} detail=\"fake failure\"")
        if code != "PEER_ABORT":
            self.store.set("tp/abort", json.dumps({"code": code, "rank": self.rank, "chunk": chunk}))
        os._exit(exit_code)

    def failpoint(self, site: str, chunk: int) -> None:
        for fp in self.points:
            when = fp.triggers
            if fp.site != site or when.get("rank", self.rank) != self.rank or when.get("chunk", chunk) != chunk:
                continue
            emit("TP-FAULT", f"site={site} action={fp.action} rank={self.rank} chunk={chunk} "
                             f"call_id={chunk} mono={time.monotonic():.6f}")
            action, arg = fp.action, fp.arg
            if action == "raise":
                self.fatal("FAKE_ERROR", 40, chunk)
            elif action == "exit":
                os._exit(int(arg))
            elif action == "kill":
                os.kill(os.getpid(), signal.Signals[arg])
            elif action == "hang":
                threading.Event().wait()
            elif action == "sleep":
                time.sleep(float(arg))

    def barrier(self, chunk: int) -> None:
        self.store.add(f"fake/arrive/{chunk}", 1)
        while self.store.add(f"fake/arrive/{chunk}", 0) < self.ws:
            if self.store.check(["tp/abort"]):
                cause = json.loads(self.store.get("tp/abort"))["rank"]
                self.fatal("PEER_ABORT", 51, chunk, cause_rank=cause)
            time.sleep(0.002)

    def run(self) -> None:
        event("init", rank=self.rank, world_size=self.ws, master_port=int(os.environ["MASTER_PORT"]))
        flood()
        self.failpoint("fake.init", 0)
        chunk_s = float(os.environ.get("FAKE_CHUNK_S", "0"))
        for chunk in range(self.chunks):
            if self.rank == 0 and self.stop_requested:
                self.store.set("fake/shutdown", str(chunk))
            self.failpoint("fake.chunk", chunk)
            self.barrier(chunk)
            if self.store.check(["fake/shutdown"]):
                break
            time.sleep(chunk_s)
            self.done += 1
            self.store.add(f"tp/hb/{self.rank}", 1)
            self.store.set(f"tp/progress/{self.rank}", f"{chunk} {chunk}")
            event("chunk", chunk=chunk, calls=chunk + 1, latency_ms=chunk_s * 1000)
        salt = os.environ.get("FAKE_SALT", "")
        digest = hashlib.sha256(f"{self.done}:{salt}".encode()).hexdigest()
        event("result", rank=self.rank, output_digest=digest, chunks=self.done)
        event("exit", rank=self.rank, code=0)
        if self.rank == 0:
            print(json.dumps({"output_digest": digest, "chunks": self.done, "world_size": self.ws}), flush=True)


def flood() -> None:
    line_mb, lines_mb = (float(os.environ.get(k, "0")) for k in ("FAKE_FLOOD_LINE_MB", "FAKE_FLOOD_LINES_MB"))
    out = sys.stdout.buffer
    for _ in range(int(line_mb)):
        out.write(b"x" * (1 << 20))
    if line_mb:
        out.write(b"\n")
    block = (b"y" * 1023 + b"\n") * 1024
    for _ in range(int(lines_mb)):
        out.write(block)
    out.flush()


def _ancestors(n: int) -> list[int]:
    """This process's parent, grandparent... (``n`` of them, fewer at init)."""
    out, pid = [], os.getpid()
    while len(out) < n and pid > 1:
        with open(f"/proc/{pid}/stat") as fh:
            pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        out.append(pid)
    return out


def write_pid(name: str, pid: int) -> None:
    directory = os.environ.get("FAKE_PIDFILE_DIR")
    if directory:
        path = os.path.join(directory, name)
        with open(path + ".tmp", "w") as fh:
            fh.write(str(pid))
        os.replace(path + ".tmp", path)


def main() -> None:
    parser = argparse.ArgumentParser(prog="fake_tp")
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--list-failpoints", action="store_true")
    parser.add_argument("--list-codes", action="store_true")
    if os.environ.get("FAKE_NO_CHECKS") != "1":
        for flag, kind in (("--check-failpoints", str), ("--check-guardrails", str), ("--check-world-size", int),
                           ("--check-backend", str), ("--check-env", str)):
            parser.add_argument(flag, action="append", default=[], type=kind)
    args = parser.parse_args()
    if any(getattr(args, name, None) for name in ("check_failpoints", "check_guardrails", "check_world_size",
                                                    "check_backend", "check_env")):
        sys.exit(check(args))
    if args.list_failpoints:
        for site, description in SITES.items():
            print(json.dumps({"site": site, "description": description}))
        return
    if args.list_codes:
        for code in CODES:
            print(json.dumps(code))
        return
    if os.environ.get("FAKE_CLOSE_STDOUT") == "1":
        os.close(1)
        os.close(2)
    if os.environ.get("FAKE_NO_FAULTHANDLER") != "1":
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    if os.environ.get("FAKE_CHILD"):
        child = subprocess.Popen(["sleep", "600"], start_new_session=os.environ["FAKE_CHILD"] == "session")
        write_pid(f"rank{os.environ['RANK']}.child.pid", child.pid)
    write_pid(f"rank{os.environ['RANK']}.pid", os.getpid())
    if os.environ.get("FAKE_LINEAGE_DIR"):  # who forked this rank, and who started that
        with open(os.path.join(os.environ["FAKE_LINEAGE_DIR"], f"{os.getpid()}.lineage"), "w") as fh:
            fh.write(" ".join(str(p) for p in _ancestors(3)))
    if os.environ.get("FAKE_HANG_AT_START") == "1":
        threading.Event().wait()
    rank = Rank(args.chunks)
    if rank.rank == 0 and os.environ.get("FAKE_GRACEFUL") == "1":
        signal.signal(signal.SIGTERM, lambda *_: setattr(rank, "stop_requested", True))
    rank.run()


if __name__ == "__main__":
    main()
