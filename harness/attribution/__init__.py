"""Attribution: does PyTorch's own Flight Recorder analyzer name the rank and collective the harness broke?

The harness knows the ground truth of every run it makes (the fault's rank, the collective where that rank
first left the healthy run's sequence); the TP path dumps PyTorch's Flight Recorder per rank
(``fr/fr_rank{R}``) when ``TORCH_FR_BUFFER_SIZE`` is set. ``python -m harness.attribution`` runs the
catalog's hang and desync proofs and a seeded set of explore schedules with the recorder on, feeds each
run's dumps to ``torch.distributed.flight_recorder`` (``fr``), scores its answer and the harness's own
first divergent collective against the truth (``truth``, ``score``) and writes
``reports/attribution/attribution.{json,md}`` and ``docs/ATTRIBUTION.md`` (``render``).
"""
