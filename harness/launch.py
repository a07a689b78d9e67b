"""Start ranks: host the rendezvous store, give each rank its env and log file.

Five modes, same contract (docs/CONTRACT.md §1):

* ``zygote``     fork each rank from a process that has torch imported (fast);
                 works only for ``python -m MODULE`` rank commands.
* ``subprocess`` a plain ``Popen`` per rank.
* ``srun``       a plain ``Popen`` per rank with only torchrun's variables, as
                 Slurm's ``srun`` or an MPI launcher starts them: no launcher
                 store, rank 0 serves it, the harness connects as a client.
* ``torchrun``   one ``torchrun`` agent (static rendezvous) that hosts the store.
* ``torchrun-2node`` two ``torchrun`` agents on this host standing in for two
                 nodes (c10d rendezvous, ``--nnodes 2``, half the ranks each);
                 the agent that wins the rendezvous endpoint hosts the store.

Exactly one process serves the store in every mode; every other connection,
the harness's included, is a client.

Every rank runs in its own session (process group == its pid), so the tree can
be reaped. Every live launch is registered; ``atexit`` and ``reap_all`` kill
whatever is left, so a crashing or interrupted harness leaves no rank behind.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import queue
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import psutil

from harness import lifetime, zygote

MODES = ("zygote", "subprocess", "srun", "torchrun", "torchrun-2node")
_TORCHRUN_NODES = {"torchrun": 1, "torchrun-2node": 2}
HOST = "127.0.0.1"
CLIENT_CONNECT_S = 60.0
"""How long the harness keeps trying to reach a store a rank serves (srun mode)."""
STORE_CALL_LIMIT_S = 1.0
"""How long one call to a rank-served store may take before the harness stops asking it."""
_INHERITED_DROP = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
)
_TORCHRUN_WRAPPER = (
    '"$@" >"$HARNESS_LOG_DIR/rank$RANK.log" 2>&1 & p=$!; echo $p >"$HARNESS_LOG_DIR/rank$RANK.pid"; '
    'wait $p; s=$?; echo $s >"$HARNESS_LOG_DIR/rank$RANK.exit"; exit $s'
)


class LaunchError(RuntimeError):
    """Ranks could not be started."""


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """How to start one run's ranks."""

    command: tuple[str, ...]
    """Full rank command, harness-appended args included."""
    world_size: int
    """Number of ranks."""
    log_dir: Path
    """Directory for ``rank{R}.log``."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Env for every rank, on top of the harness's own (contract vars are added per rank)."""
    rank_env: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    """Extra env for single ranks, applied last."""
    mode: str = "zygote"
    """One of ``MODES``."""
    cwd: Path = field(default_factory=Path.cwd)
    """Working directory of the ranks."""


def zygote_module(command: tuple[str, ...]) -> tuple[str, list[str]]:
    """``(module, argv)`` of a ``python -m MODULE ...`` command, else LaunchError."""
    if len(command) >= 3 and Path(command[0]).name.startswith("python") and command[1] == "-m":
        return command[2], list(command[3:])
    raise LaunchError(
        f"launch mode 'zygote' needs a 'python -m MODULE' rank command; got {' '.join(command)!r}; "
        "use --launch subprocess for other commands"
    )


def base_env(spec: LaunchSpec) -> dict[str, str]:
    """The harness's env minus anything that would leak into the contract."""
    env = {
        k: v for k, v in os.environ.items()
        if k not in _INHERITED_DROP and not k.startswith(("TORCHELASTIC_", "TP_"))
    }
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(spec.env)
    return env


class Launch:
    """One run's ranks: started by ``start()``, reaped by ``kill_tree()``.

    Rank exits arrive on ``events`` as ``("exit", rank, returncode, mono)``;
    returncode is None when the status could not be learned. ``("lost", rank,
    None, mono)`` means the zygote died and the rank's fate is unknown.
    """

    def __init__(self, spec: LaunchSpec) -> None:
        if spec.mode not in MODES:
            raise LaunchError(f"unknown launch mode {spec.mode!r}; valid: {', '.join(MODES)}")
        spec = replace(spec, log_dir=spec.log_dir.resolve(), cwd=spec.cwd.resolve())
        self.spec = spec
        self.events: queue.Queue = queue.Queue()
        self.pids: dict[int, int] = {}
        self.log_paths = {r: spec.log_dir / f"rank{r}.log" for r in range(spec.world_size)}
        self.store = None
        self.port: int | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._exited: set[int] = set()
        self._agents: list[subprocess.Popen] = []
        """torchrun agents, one per stand-in node."""
        self._closed = False
        self.marker = lifetime.launch_marker()  # in every rank's env: finds what ranks left behind

    @property
    def hosts_store(self) -> bool:
        """True when this process serves the store (zygote and subprocess); it then outlives every rank."""
        return self.spec.mode in ("zygote", "subprocess")

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Host the store, then start every rank. Raises LaunchError."""
        from torch.distributed import TCPStore

        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        with _LIVE_LOCK:
            _LIVE.add(self)
        if self.spec.mode in _TORCHRUN_NODES:
            self._start_torchrun(TCPStore, nnodes=_TORCHRUN_NODES[self.spec.mode])
            return
        if self.spec.mode == "zygote":
            module, argv = zygote_module(self.spec.command)
            forker = zygote.shared()
        if self.spec.mode == "srun":
            self.port = free_port()
        else:
            self.store = host_store(TCPStore)
            self.port = self.store.port
        env = base_env(self.spec)
        for rank in range(self.spec.world_size):
            renv = {**env, **self.contract_env(rank), **self.spec.rank_env.get(rank, {})}
            log = self.log_paths[rank]
            log.write_bytes(b"")
            if self.spec.mode == "zygote":
                try:
                    pid = forker.spawn(module=module, argv=argv, env=renv, cwd=str(self.spec.cwd),
                                       log=str(log), on_exit=self._exit_callback(rank))
                except zygote.ZygoteError as exc:
                    raise LaunchError(f"zygote could not start rank {rank}: {exc}") from None
            else:
                pid = self._popen(rank, renv, log)
            self._track(rank, pid)
        if self.spec.mode == "srun":
            # Rank 0 serves the store once it has imported torch: connect without blocking the supervisor.
            threading.Thread(target=self._connect_client, args=(TCPStore,), name="harness-store-client",
                             daemon=True).start()

    def _connect_client(self, tcp_store) -> None:
        try:
            store = tcp_store(HOST, self.port, is_master=False, timeout=timedelta(seconds=CLIENT_CONNECT_S))
        except Exception:  # noqa: BLE001 - rank 0 died before serving: its exit tells the story
            return
        if not self._closed:
            self.store = BoundedStore(store, limit_s=STORE_CALL_LIMIT_S)

    def contract_env(self, rank: int) -> dict[str, str]:
        """CONTRACT §1 variables for ``rank``; under ``srun`` no launcher store, so rank 0 serves it."""
        env = {"RANK": str(rank), "WORLD_SIZE": str(self.spec.world_size), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": HOST, "MASTER_PORT": str(self.port), lifetime.LAUNCH_ENV: self.marker}
        if self.spec.mode != "srun":
            env["TORCHELASTIC_USE_AGENT_STORE"] = "True"
        return env

    def _popen(self, rank: int, env: dict, log: Path) -> int:
        with log.open("ab") as fh:
            try:
                proc = subprocess.Popen(
                    list(self.spec.command), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                    env=env, cwd=self.spec.cwd, start_new_session=True, preexec_fn=lifetime.child_preexec(),
                )
            except OSError as exc:
                raise LaunchError(f"cannot start rank {rank} with {' '.join(self.spec.command)!r}: {exc}") from None

        def wait() -> None:
            code = proc.wait()
            self.events.put(("exit", rank, code, time.monotonic()))

        threading.Thread(target=wait, name=f"harness-rank{rank}-wait", daemon=True).start()
        return proc.pid

    def _exit_callback(self, rank: int):
        def on_exit(pid: int, code: int | None, mono: float | None) -> None:
            if mono is None:  # the zygote died: this rank may still be running, as an orphan
                self.events.put(("lost", rank, None, time.monotonic()))
            else:
                self.events.put(("exit", rank, code, mono))

        return on_exit

    def _track(self, rank: int, pid: int) -> None:
        self.pids[rank] = pid
        try:
            self._procs[rank] = psutil.Process(pid)
        except psutil.NoSuchProcess:
            pass

    def _start_torchrun(self, tcp_store, *, nnodes: int) -> None:
        torchrun = shutil.which("torchrun")
        mode = self.spec.mode
        if torchrun is None:
            raise LaunchError(f"launch mode {mode!r} needs the torchrun command on PATH")
        if self.spec.rank_env:
            raise LaunchError(f"launch mode {mode!r} cannot give single ranks extra env; use zygote or subprocess")
        if self.spec.world_size % nnodes:
            raise LaunchError(f"launch mode {mode!r} splits the ranks over {nnodes} agents; "
                              f"world size {self.spec.world_size} is not a multiple of {nnodes}")
        self.port = free_port()
        env = {**base_env(self.spec), "HARNESS_LOG_DIR": str(self.spec.log_dir), lifetime.LAUNCH_ENV: self.marker}
        per_node = self.spec.world_size // nnodes
        if nnodes == 1:
            rdzv = ["--rdzv-backend=static", f"--master-addr={HOST}", f"--master-port={self.port}"]
        else:  # what a multi-node job uses: dynamic rendezvous at one endpoint, the store shared with the ranks
            rdzv = ["--rdzv-backend=c10d", f"--rdzv-endpoint={HOST}:{self.port}", f"--rdzv-id=harness-{self.port}",
                    f"--local-addr={HOST}"]
        for node in range(nnodes):
            cmd = [torchrun, f"--nnodes={nnodes}", f"--nproc-per-node={per_node}", *rdzv, f"--node-rank={node}",
                   "--max-restarts=0", "--no-python", "sh", "-c", _TORCHRUN_WRAPPER, "harness-rank",
                   *self.spec.command]
            log = self.spec.log_dir / ("torchrun.log" if nnodes == 1 else f"torchrun-node{node}.log")
            with log.open("ab") as fh:
                self._agents.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh,
                                                     stderr=subprocess.STDOUT, env=env, cwd=self.spec.cwd,
                                                     start_new_session=True, preexec_fn=lifetime.child_preexec()))
        for rank in range(self.spec.world_size):
            threading.Thread(target=self._torchrun_wait, args=(rank,), daemon=True).start()
        self.store = tcp_store(HOST, self.port, is_master=False, timeout=timedelta(seconds=30))

    def _torchrun_wait(self, rank: int) -> None:
        """Wait for a torchrun rank: its pid file, its exit, then its exit file."""
        pidfile = self.spec.log_dir / f"rank{rank}.pid"
        exitfile = self.spec.log_dir / f"rank{rank}.exit"
        while not pidfile.exists() and any(a.poll() is None for a in self._agents):
            time.sleep(0.02)
        code = None
        if pidfile.exists():
            pid = int(pidfile.read_text().strip() or 0)
            self._track(rank, pid)
            try:
                psutil.Process(pid).wait()
            except psutil.NoSuchProcess:
                pass
            mono = time.monotonic()
            give_up_at = mono + 2.0
            text = ""
            while not text.endswith("\n") and time.monotonic() < give_up_at:  # the wrapper writes it next
                text = exitfile.read_text() if exitfile.exists() else ""
                time.sleep(0.01)
            if text.strip().isdigit():
                status = int(text)
                code = -(status - 128) if status > 128 else status
        self.events.put(("exit", rank, code, time.monotonic()))

    def settle(self, timeout_s: float = 5.0) -> None:
        """After the last rank exit: give a torchrun agent time to exit on its own."""
        give_up_at = time.monotonic() + timeout_s
        for agent in self._agents:
            try:
                agent.wait(timeout=max(0.0, give_up_at - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    # ---------------------------------------------------------------- control

    def mark_exited(self, rank: int) -> None:
        """The supervisor learned ``rank`` exited: never signal its pid again."""
        self._exited.add(rank)

    def signal_rank(self, rank: int, sig: signal.Signals) -> bool:
        """Send ``sig`` to a live rank; False if it is gone."""
        proc = self._procs.get(rank)
        if proc is None or rank in self._exited:
            return False
        try:
            proc.send_signal(sig)
            return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def rank_status(self, rank: int) -> str | None:
        """psutil status of a live rank (``stopped``, ``sleeping``...), None if gone."""
        proc = self._procs.get(rank)
        if proc is None or rank in self._exited:
            return None
        try:
            return proc.status()
        except psutil.NoSuchProcess:
            return None

    def tree(self) -> list[psutil.Process]:
        """Every live process of this launch: ranks, their descendants, their groups."""
        found: dict[int, psutil.Process] = {}
        roots = [p for r, p in self._procs.items() if r not in self._exited]
        roots += [psutil.Process(a.pid) for a in self._agents if a.poll() is None]
        for proc in roots:
            try:
                if proc.is_running():
                    found[proc.pid] = proc
                    found.update((c.pid, c) for c in proc.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        groups = {p.pid for p in self._procs.values()}
        groups.update(a.pid for a in self._agents)
        for proc in psutil.process_iter():
            try:
                if proc.pid not in found and os.getpgid(proc.pid) in groups and proc.pid != os.getpid():
                    found[proc.pid] = proc
            except (OSError, psutil.NoSuchProcess):
                continue
        for pid in lifetime.marked(lifetime.LAUNCH_ENV, self.marker):  # left their session and their parent
            try:
                found.setdefault(pid, psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        return [p for p in found.values() if _alive(p)]

    def kill_tree(self, sig: signal.Signals) -> list[psutil.Process]:
        """Send SIGCONT (a stopped process cannot act on SIGTERM) then ``sig`` to the tree."""
        procs = self.tree()
        for s in (signal.SIGCONT, sig):
            for proc in procs:
                try:
                    proc.send_signal(s)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        return procs

    def close(self) -> None:
        """Kill anything left, drop the store, unregister."""
        if self._closed:
            return
        self._closed = True
        procs = self.kill_tree(signal.SIGKILL)
        wait_gone(procs, timeout_s=5.0)
        for agent in self._agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        self.store = None
        with _LIVE_LOCK:
            _LIVE.discard(self)


class BoundedStore:
    """A client of a store that a rank serves, whose calls give up after ``limit_s``.

    c10d's client blocks for as long as a *stopped* server holds the connection
    (``set_timeout`` bounds neither ``check`` nor ``get``: measured with a
    SIGSTOPped server), and the supervisor must never freeze with a frozen rank
    0. Calls run one at a time on a helper thread; once one has not answered,
    every later call fails at once (the store is as good as gone).
    """

    def __init__(self, store, *, limit_s: float) -> None:
        self._store, self._limit_s = store, limit_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="harness-store")
        self._silent = False

    def __getattr__(self, name: str):
        method = getattr(self._store, name)

        def call(*args, **kwargs):
            if self._silent:
                raise TimeoutError(f"the store stopped answering (a call took over {self._limit_s} s)")
            future = self._pool.submit(method, *args, **kwargs)
            try:
                return future.result(timeout=self._limit_s)
            except concurrent.futures.TimeoutError:
                self._silent = True
                self._pool.shutdown(wait=False)
                raise TimeoutError(f"store.{name} did not answer within {self._limit_s} s: "
                                   "the rank serving the store may be frozen") from None

        return call


def host_store(tcp_store):
    """The rendezvous store, served from an IPv4-only socket on ``HOST``.

    Left to itself the store listens dual-stack, so every rank's connection
    arrives as ``::ffff:127.0.0.1``; c10d names each accepted peer with
    ``getnameinfo``, and /etc/hosts has no entry for that mapped form, so each
    accept costs a reverse-DNS query, and a dropped one stalls that rank's
    store connect for the resolver's 5 s timeout. An IPv4 peer is answered
    from /etc/hosts. (The ranks' own lookup of the server, client side, is
    c10d's and stays.) The libuv store takes over a listening socket from
    torch 2.8 on; with older versions it listens as before.
    """
    if not _store_takes_listen_fd():
        return tcp_store(HOST, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        port = listener.getsockname()[1]
    except OSError:
        listener.close()
        raise
    # The store owns the socket from here on (it closes it), hence detach().
    return tcp_store(HOST, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30),
                     master_listen_fd=listener.detach())


def free_port() -> int:
    """A port free right now on ``HOST``, for a store another process will serve (torchrun picks its own the same way)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _store_takes_listen_fd() -> bool:
    """True when TCPStore's default (libuv) server accepts ``master_listen_fd`` (torch >= 2.8)."""
    import torch

    version = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return version is not None and (int(version[1]), int(version[2])) >= (2, 8)


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process has exited (zombies count as gone); return the survivors.

    Waits on pidfds, which become readable when a process exits, whoever its parent is.
    """
    fds: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            fds[os.pidfd_open(proc.pid)] = proc
        except OSError:
            continue
    try:
        gone_at = time.monotonic() + timeout_s
        pending = set(fds)
        while pending:
            readable, _, _ = select.select(list(pending), [], [], max(0.0, gone_at - time.monotonic()))
            if not readable:
                break
            pending.difference_update(readable)
        return [fds[fd] for fd in pending]
    finally:
        for fd in fds:
            os.close(fd)


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


_LIVE: set[Launch] = set()
_LIVE_LOCK = threading.Lock()


def reap_all() -> None:
    """Kill every process of every live launch (atexit, harness crash, interrupt)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for launch in live:
        try:
            launch.close()
        except Exception as exc:  # noqa: BLE001 - reaping must go on for the others
            print(f"harness: could not reap a launch: {exc}", file=sys.stderr)


atexit.register(reap_all)
