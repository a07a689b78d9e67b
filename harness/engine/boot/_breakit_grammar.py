"""The contract's fault grammar (``contract/faults.py``), loaded by path into an engine's interpreter.

The ranks import the bootstrap's modules as top-level modules from this folder; ``contract`` is not on their
path (the engine's environment is its own), so the one grammar file is loaded from where tp-breakit is
installed, as ``_breakit_contract_faults``, beside nothing else of it. The harness's own process imports the
same file as ``contract.faults``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "_breakit_contract_faults"
_PATH = Path(__file__).resolve().parents[3] / "contract" / "faults.py"


def _load():
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"tp-breakit's fault grammar is missing at {_PATH}: reinstall tp-breakit")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


grammar = _load()
