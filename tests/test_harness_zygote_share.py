"""One zygote shared by the harness processes of a run (pytest-xdist workers): ``zygote.share_through``.

Each client gets the exits of its own ranks only; a client that goes takes its ranks with it and leaves the
others' alone; the zygote goes with its last client, socket and private directory included. Every wait is on
an event with a deadline (a pid file appearing, an exit reported, a process gone).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from harness.launch import wait_gone, zygote

REPO = Path(__file__).resolve().parent.parent
RANKS = REPO / "fixtures" / "ranks"


def _spawn(client: zygote.Zygote, tmp_path: Path, on_exit=lambda *a: None) -> int:
    env = {**os.environ, "ORPHAN_DIR": str(tmp_path), "ORPHAN_MODE": "block", "PYTHONPATH": str(RANKS)}
    pid = client.spawn(module="orphan_rank", argv=[], env=env, cwd=str(RANKS), log=str(tmp_path / f"r{time.monotonic_ns()}.log"),
                       on_exit=on_exit, timeout_s=30)
    give_up_at = time.monotonic() + 30
    while not (tmp_path / f"{pid}.pid").exists():  # the rank runs: past the fork, past die_with_parent
        assert time.monotonic() < give_up_at, f"rank {pid} never started"
        time.sleep(0.02)
    return pid


def test_two_clients_share_one_zygote_and_each_takes_only_its_own_ranks(tmp_path: Path) -> None:
    share = tmp_path / "run"
    owner = zygote._join_or_start(share, preload=())
    joiner = zygote._join_or_start(share, preload=())
    exits: dict[int, int | None] = {}
    exited = threading.Event()
    try:
        owner.start()
        assert owner.pid is not None and joiner.pid is None, "the second process did not join the first's zygote"
        address = (share / zygote.ADDRESS_FILE).read_text()
        private = Path(address).parent
        assert stat.S_IMODE(private.stat().st_mode) == 0o700, "anyone on the box could ask it to fork"
        mine = _spawn(owner, tmp_path)
        theirs = _spawn(joiner, tmp_path, on_exit=lambda pid, code, mono: (exits.__setitem__(pid, code), exited.set()))
        server, mine_proc = psutil.Process(owner.pid), psutil.Process(mine)
        assert {p.pid for p in server.children()} == {mine, theirs}, "both ranks are the one zygote's children"

        owner.close()  # the first worker finished its share of the tests
        assert wait_gone([mine_proc], timeout_s=10) == [], "the owner's rank outlived the owner"
        assert psutil.Process(theirs).is_running() and server.is_running(), "the joiner's rank went with the owner"

        os.kill(theirs, signal.SIGTERM)
        assert exited.wait(10), "the joiner never heard of its rank's exit"
        assert exits == {theirs: -signal.SIGTERM}

        joiner.close()  # the last client: the zygote goes, and its socket with it
        assert wait_gone([server], timeout_s=10) == [], "the zygote outlived its last client"
        assert not private.exists(), "the zygote left its socket directory behind"
    finally:
        for client in (owner, joiner):
            client.close()


def test_a_joiner_after_the_zygote_is_gone_starts_its_own(tmp_path: Path) -> None:
    share = tmp_path / "run"
    first = zygote._join_or_start(share, preload=())
    first.start()
    server = psutil.Process(first.pid)
    first.close()
    assert wait_gone([server], timeout_s=10) == []
    second = zygote._join_or_start(share, preload=())
    try:
        second.start()
        assert second.pid is not None and second.pid != server.pid
        _spawn(second, tmp_path)
    finally:
        second.close()


WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from harness.launch import zygote
    zygote.share_through(Path(sys.argv[1]))
    z = zygote.shared()
    env = {**os.environ, "ORPHAN_DIR": sys.argv[2], "ORPHAN_MODE": "block", "PYTHONPATH": sys.argv[3]}
    pid = z.spawn(module="orphan_rank", argv=[], env=env, cwd=sys.argv[3], log=os.path.join(sys.argv[2], "w.log"),
                  on_exit=lambda *a: None)
    print(pid, z.pid, flush=True)
    sys.stdin.read()  # until the test closes it, or kills this process
""")


@pytest.mark.parametrize("who", ["joiner", "owner"])
def test_a_killed_worker_takes_its_ranks_and_no_one_elses(tmp_path: Path, who: str) -> None:
    """A worker SIGKILLed (xdist's crash, an OOM kill) runs no cleanup: the zygote still ends its ranks; the
    owner's death (the zygote is its child) leaves the other worker's ranks running and the zygote serving."""
    share = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(share), str(tmp_path), str(RANKS)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    server = None
    try:
        answers = [p.stdout.readline().split() for p in procs]
        ranks = [psutil.Process(int(a[0])) for a in answers]
        owners = [a[1] for a in answers]
        assert owners.count("None") == 1, f"not one zygote for both workers: {answers}"
        server = psutil.Process(int(next(o for o in owners if o != "None")))
        killed = owners.index("None") if who == "joiner" else 1 - owners.index("None")
        procs[killed].kill()
        procs[killed].wait(timeout=10)
        assert wait_gone([ranks[killed]], timeout_s=10) == [], "a killed worker's rank lived on"
        assert ranks[1 - killed].status() != psutil.STATUS_ZOMBIE, "the other worker's rank was killed too"
        assert server.status() != psutil.STATUS_ZOMBIE, "the zygote went with one of its clients"
        late = zygote.Zygote.connect((share / zygote.ADDRESS_FILE).read_text())  # still serving: a third client
        exited = threading.Event()
        try:
            pid = _spawn(late, tmp_path, on_exit=lambda *a: exited.set())
            os.kill(pid, signal.SIGTERM)
            assert exited.wait(10), "the zygote no longer reports exits"
        finally:
            late.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.close()
                p.wait(timeout=30)
    assert wait_gone(ranks, timeout_s=10) == [], "a rank outlived every worker"
    assert server is not None and wait_gone([server], timeout_s=10) == [], "the zygote outlived every worker"
    # The owner's close() never ran when it was the one killed: the zygote removes the share dir on its way out.
    assert not share.exists(), f"left behind in the temp dir: {sorted(p.name for p in share.iterdir())}"


def test_a_joiner_that_waited_on_a_removed_lock_starts_over(tmp_path: Path) -> None:
    """A zygote on its way out removes the share dir under the lock; a joiner that waited for that lock holds
    an unlinked file and must not publish into a directory that is gone."""
    share = tmp_path / "run"
    share.mkdir()
    leaving = (share / "zygote.lock").open("a")
    fcntl.flock(leaving, fcntl.LOCK_EX)
    joined: list[zygote.Zygote] = []
    joiner = threading.Thread(target=lambda: joined.append(zygote._join_or_start(share, preload=())))
    joiner.start()
    give_up_at = time.monotonic() + 10
    while not any(" -> FLOCK" in f" {line}" for line in Path("/proc/locks").read_text().splitlines()):
        assert time.monotonic() < give_up_at, "the joiner never waited for the lock"
        time.sleep(0.01)
    (share / "zygote.lock").unlink()  # what the leaving zygote does, holding the lock
    share.rmdir()
    leaving.close()
    joiner.join(timeout=30)
    assert joined, "the joiner failed (see the thread's exception above)"
    try:
        joined[0].start()
        assert joined[0].share_dir == share and (share / zygote.ADDRESS_FILE).exists()
        _spawn(joined[0], tmp_path)
    finally:
        joined[0].close()


def test_a_client_with_a_bad_request_goes_alone(tmp_path: Path) -> None:
    """One client speaking nonsense is dropped (its ranks with it); the zygote and the others' ranks stay."""
    share = tmp_path / "run"
    owner = zygote._join_or_start(share, preload=())
    try:
        owner.start()
        mine = psutil.Process(_spawn(owner, tmp_path))
        bad = zygote.Zygote.connect((share / zygote.ADDRESS_FILE).read_text())
        theirs = psutil.Process(_spawn(bad, tmp_path))
        bad._wfile.write(b"{not json\n")
        bad._wfile.flush()
        assert wait_gone([theirs], timeout_s=10) == [], "the bad client's rank outlived it"
        assert bad._reader.join(10) is None and not bad._reader.is_alive(), "the bad client was not dropped"
        assert mine.status() != psutil.STATUS_ZOMBIE, "the bad request killed another client's rank"
        exited = threading.Event()
        pid = _spawn(owner, tmp_path, on_exit=lambda *a: exited.set())
        os.kill(pid, signal.SIGTERM)
        assert exited.wait(10), "the zygote stopped serving after a bad request"
        bad.close()
    finally:
        owner.close()


def test_a_leaving_zygote_keeps_out_of_a_newer_share_dir(tmp_path: Path) -> None:
    """The leaving zygote waits for the joiners' lock; if the directory was removed and made anew meanwhile
    (its starter's close() removes it without the lock), the lock it gets is stale and the directory not its own."""
    share = tmp_path / "run"
    share.mkdir()
    held = (share / "zygote.lock").open("a")
    fcntl.flock(held, fcntl.LOCK_EX)
    (share / zygote.ADDRESS_FILE).write_text("/old/sock")
    leaving = threading.Thread(target=zygote.leave_share_dir, args=(share, "/old/sock"))
    leaving.start()
    give_up_at = time.monotonic() + 10
    while not any(" -> FLOCK" in f" {line}" for line in Path("/proc/locks").read_text().splitlines()):
        assert time.monotonic() < give_up_at, "the leaving zygote never waited for the lock"
        time.sleep(0.01)
    shutil.rmtree(share)  # its starter's close()
    share.mkdir()  # a new worker's directory, mid-publish
    newer = (share / "zygote.lock").open("a")
    (share / "zygote.addr.tmp").write_text("/new/sock")
    held.close()
    leaving.join(timeout=10)
    assert not leaving.is_alive()
    assert (share / "zygote.addr.tmp").exists() and (share / "zygote.lock").exists(), "a newer zygote's files went"
    newer.close()
