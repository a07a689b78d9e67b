"""The rendezvous store: served by the harness, or reached as a client of the process that serves it."""

from __future__ import annotations

import concurrent.futures
import re
import socket
from datetime import timedelta

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
