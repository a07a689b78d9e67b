"""The rendezvous store: served by the harness, or reached as a client of the process that serves it."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import sys

from harness.launch import store_host
from harness.launch.spec import HOST

CLIENT_CONNECT_S = 60.0
"""How long the harness keeps trying to reach a store a rank or a remote agent serves (srun, torchrun-2node)."""
STORE_CALL_LIMIT_S = 1.0
"""How long one call to a rank-served store may take before the harness stops asking it."""


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


CPP_LOG_ENV = "TORCH_CPP_LOG_LEVEL"
"""c10's C++ log level; read once, when torch loads."""


def tcp_store_class():
    """``torch.distributed.TCPStore``, torch loaded with c10's C++ log level at ERROR unless the user chose one.

    The harness's own store client sees the server go whenever the process serving it exits (rank 0 under
    srun, the agent under torchrun), and its next read fails, as the harness expects; c10d also logs that
    read as a warning with a C++ stack (``TCPStore.cpp ... recvValue failed``) on the harness's terminal.
    The variable is set only while torch loads: the ranks inherit the user's environment, and their logs
    keep c10d's warnings (evidence).
    """
    if "torch" not in sys.modules and CPP_LOG_ENV not in os.environ:
        os.environ[CPP_LOG_ENV] = "ERROR"
        try:
            import torch.distributed  # noqa: F401 - loaded here, with the log level set
        finally:
            del os.environ[CPP_LOG_ENV]
    from torch.distributed import TCPStore

    return TCPStore


def host_store(tcp_store):
    """The rendezvous store, served from this process (``harness.launch.store_host.host_store`` on ``HOST``)."""
    return store_host.host_store(tcp_store, HOST)


def free_port() -> int:
    """A port free right now on ``HOST``, for a store another process will serve (torchrun picks its own the same way)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def read_keys(store, keys: list[str]) -> dict[str, bytes]:
    """The value of each of ``keys`` that exists: one round trip to a forked store host, two a key elsewhere."""
    if isinstance(store, store_host.HostedStore):
        return store.read(keys)
    return {key: store.get(key) for key in keys if store.check([key])}
