"""Start ranks: host the rendezvous store, give each rank its env and log file.

Five modes, same contract (docs/CONTRACT.md §1):

* ``zygote``     fork each rank from a process that has torch imported (fast);
                 works only for ``python -m MODULE`` rank commands. The
                 pytest-xdist workers of one run share one zygote. The
                 zygote forks the store's host too (``harness.launch.store_host``),
                 so the harness never imports torch.
* ``subprocess`` a plain ``Popen`` per rank.
* ``srun``       a plain ``Popen`` per rank with only torchrun's variables, as
                 Slurm's ``srun`` or an MPI launcher starts them: no launcher
                 store, rank 0 serves it, the harness connects as a client.
* ``torchrun``   one ``torchrun`` agent (static rendezvous) that hosts the store.
* ``torchrun-2node`` two ``torchrun`` agents on this host standing in for two
                 nodes (c10d rendezvous, ``--nnodes 2``, half the ranks each);
                 the agent of rank 0's node serves the ranks a store of its
                 own and publishes its port in the rendezvous store, where
                 the harness reads it.

Exactly one process serves the store in every mode; every other connection,
the harness's included, is a client.

Every rank runs in its own session (process group == its pid), so the tree can
be reaped. Every live launch is registered; ``atexit`` and ``reap_all`` kill
whatever is left, so a crashing or interrupted harness leaves no rank behind.

One module a role: ``spec`` (what to start), ``store`` (serving or reaching
the store), ``torchrun`` (the agents), ``reap`` (process trees, the registry
of live launches), ``core`` (``Launch``, which ties them together).
"""

from harness.launch.core import Launch
from harness.launch.reap import reap_all, wait_gone
from harness.launch.spec import HOST, MODES, LaunchError, LaunchSpec, base_env, zygote_module
from harness.launch.store import BoundedStore, free_port, host_store, read_keys

__all__ = ["HOST", "MODES", "BoundedStore", "Launch", "LaunchError", "LaunchSpec", "base_env", "free_port",
           "host_store", "read_keys", "reap_all", "wait_gone", "zygote_module"]
