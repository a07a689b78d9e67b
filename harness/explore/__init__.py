"""``python -m harness explore``: random fault schedules, the invariant they keep, and their report."""
