"""tp-breakit's zero-touch bootstrap: Python imports this before the engine's first line.

The harness puts this folder first on ``PYTHONPATH`` of every rank it starts with ``--engine``. It acts only
in a process that the harness marked (``BREAKIT_ENGINE_BOOT=1``) and that is a rank (``RANK`` set), and only
in the first such process: a helper the engine starts inherits the env but is left alone. Whatever
``sitecustomize`` the environment had before is imported too, as if this one were not there.
"""

import importlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _chain() -> None:
    """Import the next ``sitecustomize`` on the path (a virtualenv's or a distribution's)."""
    ours = sys.modules.pop("sitecustomize", None)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    try:
        importlib.import_module("sitecustomize")
    except ImportError:
        pass
    finally:
        sys.path[:] = saved
        sys.modules["_breakit_chained_sitecustomize"] = sys.modules.get("sitecustomize")
        sys.modules["sitecustomize"] = ours


def _boot() -> None:
    if os.environ.get("BREAKIT_ENGINE_BOOT") != "1" or "RANK" not in os.environ:
        return
    if os.environ.get("BREAKIT_ENGINE_BOOT_PID", str(os.getpid())) != str(os.getpid()):
        return
    os.environ["BREAKIT_ENGINE_BOOT_PID"] = str(os.getpid())
    sys.path.insert(0, _HERE)
    try:
        import _breakit_rank
    finally:
        sys.path.remove(_HERE)
    _breakit_rank.start()


_chain()
_boot()
