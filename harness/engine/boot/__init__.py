"""The zero-touch bootstrap, put first on an engine's ranks' ``PYTHONPATH`` (see ``sitecustomize``).

Its modules import only the standard library at import time: the ranks import them as top-level modules
(``_breakit_faults``...), the harness as ``harness.engine.boot._breakit_faults`` to check a fault spec.
"""
