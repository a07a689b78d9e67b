"""``Launch``: one run's ranks, started in one of the ``MODES`` and reaped as one tree."""

from __future__ import annotations

import queue
import signal
import subprocess
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psutil

from harness.launch import lifetime, reap, store_host, torchrun, zygote
from harness.launch.spec import HOST, MODES, LaunchError, LaunchSpec, base_env, zygote_module
from harness.launch.store import (
    CLIENT_CONNECT_S,
    STORE_CALL_LIMIT_S,
    BoundedStore,
    free_port,
    host_store,
    tcp_store_class,
)


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
        self._host: store_host.HostedStore | None = None
        """This launch's store under the zygote, served by ``harness.launch.store_host``: closed after every rank is gone."""
        self.port: int | None = None
        self._procs: dict[int, psutil.Process] = {}
        self._targets: dict[int, psutil.Process] = {}
        """Rank -> the process signals and status go to, where it is not the one started (``adopt``)."""
        self._exited: set[int] = set()
        self._agents: list[subprocess.Popen] = []
        """torchrun agents, one per stand-in node."""
        self._closed = False
        self.marker = lifetime.launch_marker()  # in every rank's env: finds what ranks left behind

    @property
    def hosts_store(self) -> bool:
        """True when the harness serves the store (subprocess; zygote, through its store host): it outlives every rank."""
        return self.spec.mode in ("zygote", "subprocess")

    # ------------------------------------------------------------------ start

    def start(self) -> None:
        """Host the store, then start every rank. Raises LaunchError."""
        self.spec.log_dir.mkdir(parents=True, exist_ok=True)
        reap.register(self)
        env = base_env(self.spec)
        if self.spec.mode == "zygote":
            # The zygote forks the store's host too: a harness on this path never imports torch.
            module, argv = zygote_module(self.spec.command)
            try:
                self._host = store_host.open_store(zygote.spawn, HOST)
            except (zygote.ZygoteError, store_host.HostError) as exc:
                raise LaunchError(f"zygote could not serve the store: {exc}") from None
            self.store, self.port = self._host, self._host.port
            self._start_ranks(env, module, argv)
            return
        TCPStore = tcp_store_class()  # noqa: N806 - the class, under its name
        if self.spec.mode in torchrun.NODES:
            self._start_torchrun(TCPStore)
            return
        if self.spec.mode == "srun":
            self.port = free_port()
        else:
            self.store = host_store(TCPStore)
            self.port = self.store.port
        self._start_ranks(env)
        if self.spec.mode == "srun":
            # Rank 0 serves the store once it has imported torch: connect without blocking the supervisor.
            threading.Thread(target=self._connect_client, args=(TCPStore,), name="harness-store-client",
                             daemon=True).start()

    def _start_ranks(self, env: dict, module: str = "", argv: list[str] | None = None) -> None:
        for rank in range(self.spec.world_size):
            renv = {**env, **self.contract_env(rank), **self.spec.rank_env.get(rank, {})}
            log = self.log_paths[rank]
            log.write_bytes(b"")
            if self.spec.mode == "zygote":
                try:
                    pid = zygote.spawn(module=module, argv=argv or [], env=renv, cwd=str(self.spec.cwd),
                                       log=str(log), on_exit=self._exit_callback(rank))
                except zygote.ZygoteError as exc:
                    raise LaunchError(f"zygote could not start rank {rank}: {exc}") from None
            else:
                pid = self._popen(rank, renv, log)
            self._track(rank, pid)

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

    def _start_torchrun(self, tcp_store) -> None:
        self.port = free_port()
        self._agents = torchrun.start_agents(self.spec, port=self.port, marker=self.marker)
        torchrun.follow_ranks(self.spec.log_dir, self.spec.world_size, self._agents, on_pid=self._track,
                              on_exit=lambda rank, code: self.events.put(("exit", rank, code, time.monotonic())))
        if torchrun.NODES[self.spec.mode] == 1:  # the static rendezvous's store is the ranks' store
            self.store = tcp_store(HOST, self.port, is_master=False, timeout=timedelta(seconds=30))
        else:
            threading.Thread(target=self._connect_rank_store, args=(tcp_store,), name="harness-store-client",
                             daemon=True).start()

    def _connect_rank_store(self, tcp_store) -> None:
        """Find and connect to the store the ranks use under a c10d rendezvous (torchrun-2node).

        It is not the rendezvous endpoint's: the agent of the node holding rank 0 serves a store of its own
        and publishes its port in the rendezvous store (torch's dynamic rendezvous, ``RendezvousStoreInfo``).
        Until it is found, or if it never is, ``self.store`` stays None: no beats seen, deadline-only hangs.
        """
        try:
            rdzv = tcp_store(HOST, self.port, is_master=False, timeout=timedelta(seconds=CLIENT_CONNECT_S))
            port = int(rdzv.get(torchrun.rank_store_port_key(self.port)))
            store = tcp_store(HOST, port, is_master=False, timeout=timedelta(seconds=CLIENT_CONNECT_S))
        except Exception:  # noqa: BLE001 - no rendezvous (an agent failed to start): the exits tell the story
            return
        if not self._closed:
            self.store = BoundedStore(store, limit_s=STORE_CALL_LIMIT_S)

    def settle(self, timeout_s: float = 5.0) -> None:
        """After the last rank exit: give a torchrun agent time to exit on its own."""
        give_up_at = time.monotonic() + timeout_s
        for agent in self._agents:
            try:
                agent.wait(timeout=max(0.0, give_up_at - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass

    def store_lost(self) -> str | None:
        """Why the store the harness serves the ranks went while they ran (its host died), else None.

        Every rank then fails for the harness's reason, not the TP path's: the run is a HARNESS_ERROR."""
        return self._host.lost() if self._host is not None else None

    # ---------------------------------------------------------------- control

    def mark_exited(self, rank: int) -> None:
        """The supervisor learned ``rank`` exited: never signal its pid again."""
        self._exited.add(rank)

    def adopt(self, rank: int, pid: int) -> bool:
        """The rank says it is ``pid``, a descendant of the process started for it (a shell script that runs it
        without ``exec``): signals and status go to it from now on. False (nothing changes) when it is not one."""
        started = self._procs.get(rank)
        try:
            if started is None or pid not in {c.pid for c in started.children(recursive=True)}:
                return False
            self._targets[rank] = psutil.Process(pid)
        except psutil.Error:
            return False
        return True

    def signal_rank(self, rank: int, sig: signal.Signals) -> bool:
        """Send ``sig`` to a live rank; False if it is gone."""
        proc = self._targets.get(rank) or self._procs.get(rank)
        if proc is None or rank in self._exited:
            return False
        try:
            proc.send_signal(sig)
            return True
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def rank_status(self, rank: int) -> str | None:
        """psutil status of a live rank (``stopped``, ``sleeping``...), None if gone."""
        proc = self._targets.get(rank) or self._procs.get(rank)
        if proc is None or rank in self._exited:
            return None
        try:
            return proc.status()
        except psutil.NoSuchProcess:
            return None

    def tree(self) -> list[psutil.Process]:
        """Every live process of this launch: ranks, their descendants, their groups, what carries its marker."""
        roots = [p for r, p in self._procs.items() if r not in self._exited]
        roots += [psutil.Process(a.pid) for a in self._agents if a.poll() is None]
        groups = {p.pid for p in self._procs.values()} | {a.pid for a in self._agents}
        return reap.process_tree(roots, groups, self.marker)

    def kill_tree(self, sig: signal.Signals) -> list[psutil.Process]:
        """Send ``sig`` to the tree (``reap.signal_all``: SIGCONT before it, or SIGSTOP before a SIGKILL)."""
        procs = self.tree()
        reap.signal_all(procs, sig)
        return procs

    def close(self) -> None:
        """Kill anything left, drop the store, unregister."""
        if self._closed:
            return
        self._closed = True
        procs = self.kill_tree(signal.SIGKILL)
        reap.wait_gone(procs, timeout_s=5.0)
        for agent in self._agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        self.store = None
        if self._host is not None:
            self._host.close()
        reap.unregister(self)
