"""Speed numbers for tp-breakit, measured side by side in one run: ``python -m benchmarks``.

Sections (each a module, each writing one part of ``bench.json``):

* ``launch``     zygote vs plain-subprocess launch: launch start -> each rank's ``init`` event;
* ``ttc``        time-to-crash of every guarded scenario (expect CRASHED) over many runs;
* ``overhead``   per-chunk latency, ``TP_GUARDRAILS=all`` vs ``none``, bring-up and optimised mode;
* ``reference``  what bounds the others on this box: gloo collective and store round-trip latency;
* ``suite``      wall time of the full break-it suite, as ``nox -s breakit`` runs it.

``reports/bench/bench.json`` holds the numbers (``"schema": SCHEMA``), ``bench.md``
the same as tables with every target marked met or missed.
"""

SCHEMA = 1
"""Version of the ``bench.json`` layout; bump on an incompatible change."""

SECTIONS = ("launch", "ttc", "overhead", "reference", "suite")
"""Every section, in the order they run and are reported."""
