"""Semantic mutation testing: realistic bugs in guardrails, the crash-only contract and the verdict.

``mutants.toml`` holds the mutants as data beside the code; ``python -m mutate``
(``nox -s mutate``) applies each in a scratch copy and runs the tests and
scenarios that must kill it. See ``mutate/__main__.py``.
"""
