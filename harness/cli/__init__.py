"""The command line, ``python -m harness``: an adapter over the pipeline."""
