"""Start-up faults of hand launches at world size 4, as srun starts ranks (rank 0 serves the store).

Each case ends every rank within seconds of its cause becoming knowable, or within the start-up deadline
(``TP_STARTUP_TIMEOUT_S``) when nothing could be known, with a ``TP-FATAL`` line naming the cause, and leaves
no rank alive. Times are measured on one clock: the ranks' ``mono`` stamps and this process's
``time.monotonic()`` are both CLOCK_MONOTONIC of this host.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORLD_SIZE = 4
CAUSE_BOUND_S = 8.0
"""Every rank out within this of a knowable cause: the issue's 5 s, with headroom for a loaded 2-core box."""
HEADROOM_S = 4.0
"""Beyond a deadline of the TP path, for a loaded box."""
LIMIT_S = 90.0
"""Crash-vs-hang bound of the whole launch (c10d's own connect gave up after 30-70 s)."""
CONTRACT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Ranks:
    """Plain ``python -m tp`` processes with torchrun's variables only, started one by one."""

    def __init__(self, tmp_path: Path, **env: str) -> None:
        self.tmp_path, self.port, self.env = tmp_path, _free_port(), env
        self.procs: dict[str, subprocess.Popen] = {}
        self.exited_at: dict[str, float] = {}

    def start(self, rank: int, tag: str | None = None) -> subprocess.Popen:
        tag = tag or str(rank)
        env = {k: v for k, v in os.environ.items() if k not in CONTRACT and not k.startswith(("TP_", "TORCHELASTIC_"))}
        env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE),
                   LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(self.port), **self.env)
        with (self.tmp_path / f"rank{tag}.log").open("wb") as fh:
            self.procs[tag] = subprocess.Popen([sys.executable, "-m", "tp", "--chunks", "2"], cwd=ROOT, env=env,
                                               stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        return self.procs[tag]

    def text(self, tag: str) -> str:
        return (self.tmp_path / f"rank{tag}.log").read_text(errors="replace")

    def fatal(self, tag: str) -> str:
        found = re.findall(r"^TP-FATAL .*$", self.text(tag), re.M)
        assert found, f"rank {tag} has no TP-FATAL line:\n{self.text(tag)[-2000:]}"
        return found[0]

    def init_mono(self, tag: str) -> float:
        for line in self.text(tag).splitlines():
            if line.startswith("TP-EVENT ") and '"event": "init"' in line:
                return json.loads(line[len("TP-EVENT "):])["mono"]
        raise AssertionError(f"rank {tag} logged no init event:\n{self.text(tag)[-2000:]}")

    def wait_for(self, predicate, what: str, within_s: float = LIMIT_S) -> None:
        """Poll ``predicate`` (a rank's log, the port) until true; fail naming ``what`` after ``within_s``."""
        give_up_at = time.monotonic() + within_s
        while not predicate():
            assert time.monotonic() < give_up_at, f"{what}: not within {within_s} s"
            time.sleep(0.02)

    def wait_exits(self, tags, within_s: float = LIMIT_S) -> dict[str, int]:
        """Wait for ``tags`` to exit, noting when each did; every rank still alive after ``within_s`` fails the test."""
        give_up_at = time.monotonic() + within_s
        pending = set(tags)
        while pending and time.monotonic() < give_up_at:
            for tag in list(pending):
                if self.procs[tag].poll() is not None:
                    self.exited_at[tag] = time.monotonic()
                    pending.discard(tag)
            time.sleep(0.02)
        assert not pending, f"ranks {sorted(pending)} still alive {within_s} s on: " + \
            " | ".join(self.text(t)[-600:] for t in sorted(pending))
        return {tag: self.procs[tag].returncode for tag in tags}

    def wait_for_fault(self, tags, site: str) -> None:
        """Wait until each of ``tags`` has logged its ``TP-FAULT`` line at ``site`` (it is in that fault now)."""
        for tag in tags:
            self.wait_for(lambda t=tag: f"TP-FAULT site={site} " in self.text(t), f"rank {tag}'s fault at {site}")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def ranks(tmp_path):
    made: list[Ranks] = []

    def make(**env: str) -> Ranks:
        made.append(Ranks(tmp_path, **env))
        return made[-1]

    yield make
    for launch in made:
        launch.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_rank0_lost_before_its_peers_connect_is_named_from_its_note_on_this_host(ranks):
    # Nobody reached the store before it went; rank 0's note of serving it (a file on this host) and its pid,
    # gone, say what the closed port cannot.
    launch = ranks()
    launch.start(0)
    note = Path(tempfile.gettempdir()) / f"tp-store-127.0.0.1-{launch.port}.pid"  # CONTRACT §4, "Start-up"
    launch.wait_for(note.exists, "rank 0's note that it serves the store")
    os.kill(launch.procs["0"].pid, signal.SIGKILL)
    for rank in (1, 2, 3):  # started after rank 0 is gone, within SAME_JOB_SLACK_S of its note as a launcher would
        launch.start(rank)
    codes = launch.wait_exits(["1", "2", "3"])
    for tag in ("1", "2", "3"):
        took_s = launch.exited_at[tag] - launch.init_mono(tag)
        assert took_s < CAUSE_BOUND_S, f"rank {tag} exited {took_s:.1f} s after its start"
        assert codes[tag] == 59, launch.text(tag)[-2000:]
        assert re.search(rf"cause_rank=0 .*rank 0 served the rendezvous store at 127\.0\.0\.1:{launch.port} from pid "
                         rf"{launch.procs['0'].pid} on this host and is gone", launch.fatal(tag))


def test_rank0_that_never_serves_ends_its_peers_at_the_startup_deadline(ranks):
    # Nothing is knowable: the start-up deadline is the bound.
    launch = ranks(TP_STARTUP_TIMEOUT_S="4")
    for rank in (1, 2, 3):
        launch.start(rank)
    codes = launch.wait_exits(["1", "2", "3"])
    for tag in ("1", "2", "3"):
        took_s = launch.exited_at[tag] - launch.init_mono(tag)
        assert took_s < 4 + HEADROOM_S, f"rank {tag} exited {took_s:.1f} s after its start (deadline 4 s)"
        assert codes[tag] == 60, launch.text(tag)[-2000:]
        assert f"no rendezvous store answered at 127.0.0.1:{launch.port} within 4 s" in launch.fatal(tag)


def test_rank0_lost_after_its_peers_reached_the_store_ends_them_at_once(ranks):
    # Each peer's second connection (its watchdog's) waits 5 s: rank 0 dies while they are between connections.
    launch = ranks(TP_FAILPOINTS="store.connect=sleep(5)@hit=2")
    for rank in range(WORLD_SIZE):
        launch.start(rank)
    launch.wait_for_fault(["1", "2", "3"], "store.connect")
    os.kill(launch.procs["0"].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    launch.wait_exits(["1", "2", "3"])
    for tag in ("1", "2", "3"):
        assert launch.exited_at[tag] - killed_at < 5 + CAUSE_BOUND_S, f"rank {tag}: {launch.text(tag)[-1500:]}"
        assert re.search(r"code=STORE_LOST rank=\d cause_rank=0 .*rank 0 serves the rendezvous store at "
                         rf"127\.0\.0\.1:{launch.port} .*\bgone\b", launch.fatal(tag))


def test_a_port_another_program_holds_ends_every_rank_naming_it(ranks):
    launch = ranks(TP_STARTUP_TIMEOUT_S="20")
    with socket.socket() as holder:  # listens, never accepts, never answers
        holder.bind(("127.0.0.1", launch.port))
        holder.listen(16)
        for rank in range(WORLD_SIZE):
            launch.start(rank)
        codes = launch.wait_exits([str(r) for r in range(WORLD_SIZE)])
    assert codes == {str(r): 60 for r in range(WORLD_SIZE)}, [launch.fatal(str(r)) for r in range(WORLD_SIZE)]
    assert re.search(rf"cannot listen on 127\.0\.0\.1:{launch.port}: the port is taken by pid {os.getpid()} ",
                     launch.fatal("0"))
    for tag in ("1", "2", "3"):
        took_s = launch.exited_at[tag] - launch.init_mono(tag)
        assert took_s < 20, f"rank {tag} exited {took_s:.1f} s after its start (deadline 20 s)"
        assert f"the server at 127.0.0.1:{launch.port} accepted a connection but did not answer as a c10d store" \
            in launch.fatal(tag)


def test_a_rank_claimed_twice_ends_every_rank_naming_both_pids(ranks):
    launch = ranks()
    for rank in (0, 1, 2):
        launch.start(rank)
    launch.start(2, tag="2b")
    tags = ["0", "1", "2", "2b"]
    launch.wait_exits(tags)
    claimants = [t for t in ("2", "2b") if "code=DUPLICATE_RANK" in launch.fatal(t)]
    assert len(claimants) == 1, [launch.fatal(t) for t in tags]
    line = launch.fatal(claimants[0])
    assert f"rank 2 is claimed twice: by pid {launch.procs['2' if claimants[0] == '2b' else '2b'].pid} on this host" \
           f" first, and by pid {launch.procs[claimants[0]].pid}" in line
    cause_at = float(re.search(r"mono=(\S+)", line).group(1))
    for tag in tags:
        assert launch.exited_at[tag] - cause_at < CAUSE_BOUND_S, f"rank {tag}: {launch.text(tag)[-1500:]}"
        if tag not in claimants:
            assert re.search(r"code=PEER_ABORT rank=\d cause_rank=2 .*died with DUPLICATE_RANK", launch.fatal(tag))


def test_a_peer_lost_after_it_claimed_its_rank_is_named_at_once(ranks):
    # Rank 2 claims its rank, then waits 5 s before its watchdog connects (no heartbeat yet): killed there, only
    # its pid can tell it is gone; the handshake timeout (20 s here) must not be what ends the others.
    launch = ranks(TP_FAILPOINTS="store.connect=sleep(5)@rank=2,hit=2", TP_HANDSHAKE_TIMEOUT_S="20")
    for rank in range(WORLD_SIZE):
        launch.start(rank)
    launch.wait_for_fault(["2"], "store.connect")
    os.kill(launch.procs["2"].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    launch.wait_exits(["0", "1", "3"])
    for tag in ("0", "1", "3"):
        assert launch.exited_at[tag] - killed_at < CAUSE_BOUND_S, f"rank {tag}: {launch.text(tag)[-1500:]}"
        assert re.search(r"code=(PEER_LOST|PEER_ABORT) .*rank 2 claimed its rank in the store and its process is gone",
                         launch.fatal(tag))


def test_a_rank_that_never_starts_ends_the_others_within_the_startup_deadline(ranks):
    # Rank 0 names the missing rank before the deadline, then keeps the store up for it (HOST_LINGER_S, 3 s).
    launch = ranks(TP_STARTUP_TIMEOUT_S="4")
    for rank in (0, 1, 2):
        launch.start(rank)
    launch.wait_exits(["0", "1", "2"])
    for tag in ("0", "1", "2"):
        took_s = launch.exited_at[tag] - launch.init_mono(tag)
        assert took_s < 4 + 3 + HEADROOM_S / 2, f"rank {tag} exited {took_s:.1f} s after its start (deadline 4 s)"
        assert re.search(r"code=HANDSHAKE_TIMEOUT .*rank\(s\) \[3\] did not publish", launch.fatal(tag))


def test_rank0_frozen_during_startup_ends_its_peers_at_once(ranks):
    # A stopped store host accepts connections and answers nothing: c10d's calls then block with no bound, in a
    # peer's connect, its claim or its watchdog's first beat; rank 0's note and its pid (stopped) say why.
    launch = ranks(TP_FAILPOINTS="handshake.publish=kill(SIGSTOP)@rank=0")
    for rank in range(WORLD_SIZE):
        launch.start(rank)
    launch.wait_for_fault(["0"], "handshake.publish")
    frozen_at = time.monotonic()
    launch.wait_exits(["1", "2", "3"])
    for tag in ("1", "2", "3"):
        assert launch.exited_at[tag] - frozen_at < CAUSE_BOUND_S, f"rank {tag}: {launch.text(tag)[-1500:]}"
        assert re.search(r"code=(STORE_LOST|PEER_LOST|PEER_ABORT) rank=\d cause_rank=0 ", launch.fatal(tag))


def test_a_clean_end_takes_rank0s_note_away(ranks):
    # The next job on this port must not read a finished job's note as its own rank 0's loss.
    launch = ranks()
    for rank in range(WORLD_SIZE):
        launch.start(rank)
    assert launch.wait_exits([str(r) for r in range(WORLD_SIZE)]) == {str(r): 0 for r in range(WORLD_SIZE)}
    assert not (Path(tempfile.gettempdir()) / f"tp-store-127.0.0.1-{launch.port}.pid").exists()
