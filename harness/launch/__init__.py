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

import importlib

_EXPORTS = {"Launch": "core", "reap_all": "reap", "wait_gone": "reap", "HOST": "spec", "MODES": "spec",
            "LaunchError": "spec", "LaunchSpec": "spec", "base_env": "spec", "zygote_module": "spec",
            "BoundedStore": "store", "free_port": "store", "host_store": "store", "read_keys": "store"}
"""Each name this package hands on, and the module that defines it. Imported when first asked for (PEP 562):
``python -m harness.launch.lifetime`` (.ci/run's leftover check, run by a bare interpreter without psutil) and
the zygote's server load this package without the launch machinery they do not use."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'harness.launch' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"harness.launch.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
