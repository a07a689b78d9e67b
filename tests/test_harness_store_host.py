"""The ranks' stores under the zygote, served by a forked host: real zygote, real TCPStores, real clients."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
import torch.distributed as dist

from harness.launch import store_host, wait_gone, zygote

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def _zygote():
    private = zygote.Zygote(preload=("torch.distributed",))
    yield private
    private.close()


@pytest.fixture
def forker(_zygote: zygote.Zygote, monkeypatch: pytest.MonkeyPatch):
    """A private zygote and a fresh host for this test (the module keeps one of each per process)."""
    monkeypatch.setattr(store_host, "_HOST", None)
    try:
        yield _zygote
    finally:
        store_host.close_host()


def _client(port: int) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=10))


def test_a_launch_store_serves_ranks_and_the_harness_reads_what_they_wrote(forker) -> None:
    store = store_host.open_store(forker.spawn, "127.0.0.1")
    rank = _client(store.port)
    rank.set("tp/progress/0", "3 chunk")
    rank.set("tp/abort", b"\xff\x00binary")
    assert store.read(["tp/progress/0", "tp/abort", "tp/hb/0"]) == {
        "tp/progress/0": b"3 chunk", "tp/abort": b"\xff\x00binary"}
    assert store.check(["tp/progress/0"]) and not store.check(["tp/progress/0", "tp/hb/0"])
    assert store.get("tp/progress/0") == b"3 chunk"
    with pytest.raises(KeyError):
        store.get("tp/hb/0")
    assert store_host._HOST is not None and psutil.Process(store_host._HOST.pid).ppid() == forker.pid


def test_launches_get_stores_of_their_own_and_a_closed_one_stops_serving(forker) -> None:
    first = store_host.open_store(forker.spawn, "127.0.0.1")
    second = store_host.open_store(forker.spawn, "127.0.0.1")
    assert first.port != second.port and first._host is second._host, "one host, one store per launch"
    _client(first.port).set("k", "first")
    assert second.read(["k"]) == {}, "a key leaked from one launch's store into another's"
    second.close()
    with pytest.raises(RuntimeError, match="connect|Connection|refused|timed out"):
        dist.TCPStore("127.0.0.1", second.port, is_master=False, timeout=timedelta(seconds=1))
    third = store_host.open_store(forker.spawn, "127.0.0.1")
    _client(third.port).set("k", "third")
    with pytest.raises(store_host.HostError, match="bad request"):
        second.read(["k"])  # its id is never handed out again: no launch can read another's keys by it
    assert first.read(["k"]) == {"k": b"first"} and third.read(["k"]) == {"k": b"third"}


def test_a_host_that_went_is_replaced_and_its_stores_fail_loudly(forker) -> None:
    old = store_host.open_store(forker.spawn, "127.0.0.1")
    proc = psutil.Process(old._host.pid)
    proc.kill()
    assert wait_gone([proc], timeout_s=10) == []
    with pytest.raises(TimeoutError, match="store host .* (is gone|stopped answering)"):
        old.read(["k"])
    new = store_host.open_store(forker.spawn, "127.0.0.1")
    assert new._host.pid != proc.pid
    _client(new.port).set("k", "v")
    assert new.read(["k"]) == {"k": b"v"}


def test_the_host_goes_when_the_harness_closes_it(forker) -> None:
    store = store_host.open_store(forker.spawn, "127.0.0.1")
    proc = psutil.Process(store._host.pid)
    store_host.close_host()
    assert wait_gone([proc], timeout_s=10) == [], "the host outlived its harness's end"


def test_a_host_that_cannot_start_is_a_clear_error(forker) -> None:
    def spawn(**request) -> int:
        return forker.spawn(**{**request, "argv": ["no-such-listener"]})  # it connects nowhere and dies

    with pytest.raises(store_host.HostError, match=r"the store host \(pid \d+\) exited \(1\); it said: .*"
                                                   r"ConnectionRefusedError: \[Errno 111\] Connection refused$"):
        store_host.open_store(spawn, "127.0.0.1")


def test_a_harness_on_the_zygote_path_never_imports_torch(tmp_path: Path) -> None:
    # The point of the host: each pytest-xdist worker saves an import of torch and its teardown.
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from harness.launch import Launch, LaunchSpec
        spec = LaunchSpec(command=(sys.executable, "-m", "tp", "--chunks", "2"), world_size=2, mode="zygote",
                          log_dir=Path({str(tmp_path)!r}), cwd=Path({str(REPO)!r}))
        launch = Launch(spec)
        launch.start()
        exits = sorted(launch.events.get(timeout=60)[1:3] for _ in range(2))
        launch.close()
        print(exits, "torch" in sys.modules)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "[(0, 0), (1, 0)] False", out.stdout + out.stderr


def test_a_launch_closes_its_store_after_its_ranks(forker, tmp_path: Path, monkeypatch) -> None:
    from harness.launch import Launch, LaunchSpec

    monkeypatch.setattr(zygote, "_SHARED", forker)
    launch = Launch(LaunchSpec(command=(sys.executable, "-m", "tp", "--chunks", "1"), world_size=2, mode="zygote",
                               log_dir=tmp_path, cwd=REPO))
    launch.start()
    try:
        codes = sorted(launch.events.get(timeout=60)[1:3] for _ in range(2))
        assert codes == [(0, 0), (1, 0)]
        assert launch.store.read(["tp/done/0", "tp/done/1"]).keys() == {"tp/done/0", "tp/done/1"}
    finally:
        launch.close()
    with pytest.raises(RuntimeError):
        dist.TCPStore("127.0.0.1", launch.port, is_master=False, timeout=timedelta(seconds=1))
    assert psutil.Process(store_host._HOST.pid).is_running(), "the host itself stays for the next launch"


def test_one_bad_request_is_answered_and_the_host_keeps_serving(forker) -> None:
    store = store_host.open_store(forker.spawn, "127.0.0.1")
    _client(store.port).set("k", "v")
    with pytest.raises(store_host.HostError, match="TypeError"):
        store._host.call({"op": "read", "id": store._sid, "keys": 5})
    assert store.read(["k"]) == {"k": b"v"}


def test_a_call_that_times_out_fails_alone_and_its_late_answer_is_dropped(forker) -> None:
    # A host starved for a moment (here: stopped) must not take every concurrent launch's store with it.
    first = store_host.open_store(forker.spawn, "127.0.0.1")
    second = store_host.open_store(forker.spawn, "127.0.0.1")
    _client(first.port).set("k", "first")
    _client(second.port).set("k", "second")
    host = psutil.Process(first._host.pid)
    host.suspend()
    try:
        with pytest.raises(TimeoutError, match=r"did not answer within 0.3 s"):
            first._host.call({"op": "read", "id": first._sid, "keys": ["k"]}, limit_s=0.3)
    finally:
        host.resume()
    assert second.read(["k"]) == {"k": b"second"}, "the late answer to the first launch's read was taken for this one"
    assert first.read(["k"]) == {"k": b"first"} and not first._host.dead


def test_a_host_silent_through_an_open_is_replaced(forker, monkeypatch) -> None:
    # An open that times out may yet create a store in the host: the host is ended (its stores go with it)
    # and the launch gets a fresh one, instead of every later launch waiting on the same stuck host.
    first = store_host.open_store(forker.spawn, "127.0.0.1")
    stuck = psutil.Process(first._host.pid)
    monkeypatch.setattr(store_host, "START_S", 0.5)
    stuck.suspend()
    try:
        fresh = store_host.open_store(forker.spawn, "127.0.0.1")
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):  # killed when given up
            stuck.resume()
    assert fresh._host.pid != stuck.pid
    _client(fresh.port).set("k", "v")
    assert fresh.read(["k"]) == {"k": b"v"}
    assert wait_gone([stuck], timeout_s=10) == [], "the stuck host outlived being given up"


def test_a_host_stuck_for_good_is_killed_when_given_up(forker, monkeypatch) -> None:
    # Stopped and never resumed, it would never read the EOF that ends a host: it must not outlive being given up.
    first = store_host.open_store(forker.spawn, "127.0.0.1")
    stuck = psutil.Process(first._host.pid)
    monkeypatch.setattr(store_host, "START_S", 0.5)
    stuck.suspend()
    try:
        fresh = store_host.open_store(forker.spawn, "127.0.0.1")
        assert wait_gone([stuck], timeout_s=10) == [], "the stuck host outlived being given up"
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            stuck.resume()
    _client(fresh.port).set("k", "v")
    assert fresh.read(["k"]) == {"k": b"v"}
