"""Speed numbers for tp-breakit, measured side by side in one run: ``python -m benchmarks``.

Sections (each a module, each writing one part of ``bench.json``):

* ``launch``     zygote vs plain-subprocess launch: launch start -> each rank's ``init`` event;
* ``ttc``        time-to-crash of every guarded scenario (expect CRASHED) over many runs;
* ``overhead``   per-chunk latency, ``TP_GUARDRAILS=all`` vs ``none``, bring-up and optimised mode;
* ``reference``  what bounds the others on this box: gloo collective and store round-trip latency;
* ``suite``      wall time of the full break-it suite, as ``nox -s breakit`` runs it;
* ``flight``     the flight trace's cost per chunk, op by op;
* ``hang``       fault -> HUNG verdict of every hang proof (stall verdicts);
* ``false_alarm`` healthy runs on an oversubscribed box: false PEER_LOST of the adaptive peer timeout;
* ``engine_cost`` zero-touch bootstrap's cost per collective (none / disarmed / armed) and per fixture-engine run;
* ``engine_hang`` zero-touch fault -> HUNG verdict on a fixture engine (``run_engine``).

``reports/bench/bench.json`` holds the numbers (``"schema": SCHEMA``), ``bench.md``
the same as tables with every target marked met or missed.
"""

SCHEMA = 1
"""Version of the ``bench.json`` layout; bump on an incompatible change."""

SECTIONS = ("launch", "ttc", "overhead", "reference", "flight", "hang", "false_alarm", "engine_cost", "engine_hang",
            "suite")
"""Every section, in the order they run and are reported."""
