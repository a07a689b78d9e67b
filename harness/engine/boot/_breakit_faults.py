"""Collective-level faults, armed in an unmodified engine's ranks by the zero-touch bootstrap.

Spec: the ``TP_FAILPOINTS`` grammar (docs/CONTRACT.md §4) over the sites ``collective.<op>`` (torch.distributed's
names: ``collective.all_reduce``, ``collective.broadcast``, ...) and ``collective.any``; triggers ``rank=R``,
``call=K`` (the K-th call of that op on that rank, from 1; on ``collective.any`` the K-th collective of any op)
and ``hit=N``; actions ``hang``, ``raise``, ``sleep(S)``, ``skip``, ``extra``, ``corrupt``, ``kill(SIG)``,
``exit(N)``.

Where: every c10d collective, whichever API issued it, reaches PyTorch's dispatcher as one ``c10d::*`` op
(``dist.all_reduce`` through ``ProcessGroup.allreduce``; the functional collectives DTensor uses, e.g.
``torch.ops._c10d_functional.all_reduce``, through the same C++ ``ProcessGroup`` methods). A Python kernel
registered on the ``BackendSelect`` key of each of those ops sees every collective exactly once, under
``inference_mode`` too (it excludes the autograd keys, never ``BackendSelect``), and redispatches to the
backend's kernel. The kernels are registered only when a fault is armed: disarmed, nothing is in the path.

This module imports nothing but the standard library at import time: the harness imports it to check a spec
before any rank starts, the ranks import it as a top-level module from the bootstrap's folder.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time

try:  # a rank: the bootstrap's folder is on its path, contract/ is not
    from _breakit_grammar import grammar
except ModuleNotFoundError as exc:  # the harness checking a spec: the same file, as a package module
    if exc.name != "_breakit_grammar":
        raise
    from contract import faults as grammar

OPS: dict[str, str] = {
    "allreduce_": "all_reduce", "allreduce_coalesced_": "all_reduce_coalesced", "broadcast_": "broadcast",
    "allgather_": "all_gather", "_allgather_base_": "all_gather_into_tensor",
    "allgather_coalesced_": "all_gather_coalesced",
    "allgather_into_tensor_coalesced_": "all_gather_into_tensor_coalesced",
    "reduce_scatter_": "reduce_scatter", "_reduce_scatter_base_": "reduce_scatter_tensor",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter_tensor_coalesced", "reduce_": "reduce",
    "gather_": "gather", "scatter_": "scatter", "alltoall_": "all_to_all", "alltoall_base_": "all_to_all_single",
    "barrier": "barrier", "monitored_barrier_": "monitored_barrier", "send": "send", "recv_": "recv",
    "recv_any_source_": "recv_any_source",
}
"""c10d dispatcher op -> torch.distributed's name for it (the site is ``collective.<name>``)."""
SITES = {f"collective.{name}": f"every {name} this rank issues, from any API" for name in OPS.values()}
SITES["collective.any"] = "every collective this rank issues, whatever its op"
ACTIONS = ("hang", "raise", "sleep", "skip", "extra", "corrupt", "kill", "exit")
TRIGGERS = {"rank": 0, "call": 1, "hit": 1}
"""Each trigger and its least value: ``call`` counts an op's calls on a rank from 1."""
FaultSpecError = grammar.FaultSpecError
MAX_SLEEP_S = grammar.MAX_SLEEP_S


class InjectedFault(RuntimeError):
    """What the ``raise`` action raises inside the collective."""


Armed = grammar.Entry
"""One armed fault: ``site``, a typed ``action``, ``triggers``, ``matches`` (the grammar's ``Entry``)."""


def parse(spec: str, where: str = "TP_FAILPOINTS") -> list[Armed]:
    """Parse a ``;``-separated spec with the contract's grammar over the collective sites; every error names
    ``where``, the bad part and the valid choices."""
    return grammar.parse(spec, where=where, triggers=TRIGGERS, sites=SITES, actions=ACTIONS, check_arg=_check_arg,
                         example="collective.all_reduce=hang@rank=1,call=3")


def _check_arg(action: grammar.Action, where: str) -> None:
    """``corrupt`` adds a number here (the grammar checks what every reader agrees on)."""
    if action.name == "corrupt" and action.arg is not None:
        try:
            ok = math.isfinite(float(action.arg))
        except ValueError:
            ok = False
        if not ok:
            raise FaultSpecError(f"corrupt takes an optional finite number to add, got {action} at {where}")


class Injector:
    """Counts each op's calls on this rank and fires the armed entries whose triggers match."""

    def __init__(self, entries: list[Armed], rank: int, on_fire) -> None:
        self.rank = rank
        self.entries = [e for e in entries if e.triggers.get("rank", rank) == rank]
        self.counts: dict[str, int] = {}
        self.on_fire = on_fire
        """Called with (site, action, call) before an action acts: the TP-FAULT line."""
        self.issued: list[tuple[str, int, int | None]] = []
        """(op, its call number, its process group's size) of every collective handed to the backend, in order:
        the Flight Recorder's entries, one each, named by the call they are (a skipped call leaves a gap, an
        extra one a repeat); the size tells a group of every rank from a smaller one."""
        self._lock = threading.Lock()

    def fired(self, name: str) -> list[tuple[Armed, int]]:
        """Count one call of op ``name``; the entries that fire on it, with the call number they matched."""
        with self._lock:
            n = self.counts[name] = self.counts.get(name, 0) + 1
            total = self.counts["*"] = self.counts.get("*", 0) + 1
            out = []
            for entry in self.entries:
                site_op = entry.site.partition(".")[2]
                if site_op not in (name, "any"):
                    continue
                call = total if site_op == "any" else n
                if entry.triggers.get("call", call) != call:
                    continue
                entry.matches += 1
                if entry.triggers.get("hit", entry.matches) == entry.matches:
                    out.append((entry, call))
            return out

    def kernel(self, torch, op_name: str):
        """The BackendSelect kernel of ``c10d::{op_name}``."""
        name = OPS[op_name]
        op = getattr(torch.ops.c10d, op_name).default
        backend_select = torch._C.DispatchKey.BackendSelect

        def run(keyset, *args, **kwargs):
            rest = keyset.remove(backend_select)
            fired = self.fired(name)
            call = (name, self.counts[name], _group_size(torch, op, args))
            if not fired:
                self.issued.append(call)
                return op.redispatch(rest, *args, **kwargs)
            for entry, nth in fired:
                self.on_fire(entry.site, entry.describe(), nth, name)
                if entry.action.name == "skip":
                    return _skipped(torch, op, args)
                if entry.action.name == "extra":
                    self.issued.append(call)
                    _wait(torch, op.redispatch(rest, *args, **kwargs))
                else:
                    _act(torch, op, entry, args)
            self.issued.append(call)
            return op.redispatch(rest, *args, **kwargs)

        return run

    def install(self, torch) -> object:
        """Register the kernels (keep the returned library alive: dropping it unregisters them)."""
        lib = torch.library.Library("c10d", "IMPL")
        for op_name in OPS:
            if hasattr(torch.ops.c10d, op_name):
                lib.impl(op_name, self.kernel(torch, op_name), "BackendSelect", with_keyset=True)
        return lib


def _act(torch, op, entry: Armed, args: tuple) -> None:
    action, arg = entry.action.name, entry.action.arg
    if action == "raise":
        raise InjectedFault(f"breakit: injected fault {entry.site}={entry.describe()}")
    if action == "exit":
        sys.stdout.flush()
        os._exit(int(arg))
    if action == "kill":
        os.kill(os.getpid(), getattr(signal, arg))
    elif action == "hang":
        threading.Event().wait()
    elif action == "sleep":
        time.sleep(float(arg))  # the injected straggler: a deliberate delay, not synchronisation
    elif action == "corrupt":
        tensor = _input_tensor(torch, op, args)
        if tensor is not None and tensor.numel():
            flat = tensor.view(-1)
            flat[0] += (float(arg) if arg else 1e-3) if tensor.is_floating_point() else int(float(arg or 1))


def _group_size(torch, op, args: tuple) -> int | None:
    """How many ranks the op's process group has (None when it names none). The dispatcher hands the group
    over as a TorchScript object: ``ProcessGroup.unbox`` gives the Python one back."""
    for spec, value in zip(op._schema.arguments, args, strict=False):
        if spec.name == "process_group":
            try:
                return int(torch._C._distributed_c10d.ProcessGroup.unbox(value).size())
            except Exception:  # noqa: BLE001 - a torch without unbox, a group torn down: unknown, not fatal
                return None
    return None


def _input_tensor(torch, op, args: tuple):
    """The first tensor this rank sends: the op's first tensor argument not named ``output*``."""
    for spec, value in zip(op._schema.arguments, args, strict=False):
        if spec.name.startswith("output"):
            continue
        while isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, torch.Tensor):
            return value
    return None


def _skipped(torch, op, args: tuple):
    """The op's results as if it ran: its output argument unchanged and a completed Work."""
    fut = torch.futures.Future()
    fut.set_result(None)
    work = torch._C._distributed_c10d._create_work_from_future(fut).boxed()
    outs = []
    for ret in op._schema.returns:
        outs.append(work if "Work" in str(ret.type) else args[0])
    return outs[0] if len(outs) == 1 else tuple(outs)


def _wait(torch, result) -> None:
    """Wait for the extra copy of a collective to finish before issuing the real one."""
    items = result if isinstance(result, tuple) else (result,)
    for item in items:
        if isinstance(item, torch.ScriptObject):
            torch._C._distributed_c10d.Work.unbox(item).wait()
