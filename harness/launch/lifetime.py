"""Process lifetime: every rank dies with its supervisor, and a marker finds a run's processes.

* ``die_with_parent`` runs in a freshly forked rank: ``PR_SET_PDEATHSIG``
  (SIGKILL) ties it to the thread that forked it (the zygote, or the harness
  for subprocess ranks). A parent that died between ``fork`` and ``prctl``
  would never send the signal, so the rank checks ``getppid`` afterwards and
  exits at once if its parent is already gone.
* ``become_subreaper`` makes the zygote inherit what its ranks leave behind
  (``PR_SET_CHILD_SUBREAPER``): a grandchild in a session of its own, whose
  rank exited, is reparented to the zygote, which kills and reaps it.
* ``RUN_ENV`` (``BREAKIT_RUN``) is set once per harness process (or taken
  from the environment, e.g. from ``.ci/run``) and inherited by every
  process it starts; ``LAUNCH_ENV`` (``BREAKIT_LAUNCH``) names one launch.
  ``marked`` finds the processes whose environment carries either, so
  neither a renamed process title nor a new session hides them.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

RUN_ENV = "BREAKIT_RUN"
"""Marker of one harness run (a CI job, a pytest session): inherited by every rank."""
LAUNCH_ENV = "BREAKIT_LAUNCH"
"""Marker of one launch (one scenario's ranks): ``{run}/{n}``."""
ORPHAN_EXIT = 1
"""Exit status of a rank whose supervisor died before it could tie its life to it."""

_PR_SET_PDEATHSIG = 1
_PR_GET_PDEATHSIG = 2
_PR_SET_CHILD_SUBREAPER = 36
_LAUNCHES = itertools.count(1)

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no prctl; lifetime then rests on the supervisor's cleanup
    _prctl = None


def run_marker() -> str:
    """This run's marker: inherited from the environment, else made now and put there for children."""
    marker = os.environ.get(RUN_ENV)
    if not marker:
        marker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        os.environ[RUN_ENV] = marker
    return marker


def launch_marker() -> str:
    """A fresh marker for one launch inside this run."""
    return f"{run_marker()}/{os.getpid()}.{next(_LAUNCHES)}"


def die_with_parent(expected_ppid: int) -> None:
    """In a forked child: SIGKILL when the parent goes; exit now if it already has. Never raises."""
    if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        os.write(2, f"harness: prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}\n".encode())
    if os.getppid() != expected_ppid:
        os.write(2, f"harness: the supervisor (pid {expected_ppid}) is gone; not starting\n".encode())
        os._exit(ORPHAN_EXIT)


def child_preexec():
    """``preexec_fn`` for ``Popen``: the child dies with this process (the calling thread, per Linux)."""
    parent = os.getpid()
    return lambda: die_with_parent(parent)


def parent_death_signal() -> int:
    """This process's parent-death signal (0 if none); for tests."""
    if _prctl is None:
        return 0
    out = ctypes.c_int(0)
    _prctl(_PR_GET_PDEATHSIG, ctypes.byref(out), 0, 0, 0)
    return out.value


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans; False where the kernel cannot."""
    return _prctl is not None and _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def marked(name: str, value: str, *, exclude: tuple[int, ...] = ()) -> list[int]:
    """Pids of live processes of this user whose environment has ``name=value`` (from /proc)."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or another user's
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def describe(pids: list[int]) -> str:
    """``pid cmdline`` lines for a leftover report."""
    lines = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            cmd = "(gone)"
        lines.append(f"{pid} {cmd[:200]}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """``python -m harness.launch.lifetime [MARKER]``: list this run's live processes; exit 1 if there are any."""
    marker = argv[0] if argv else os.environ.get(RUN_ENV, "")
    if not marker:
        print(f"usage: python -m harness.launch.lifetime MARKER (or set {RUN_ENV})", file=sys.stderr)
        return 2
    pids = marked(RUN_ENV, marker, exclude=(os.getppid(),))
    if pids:
        print(f"{len(pids)} process(es) of run {marker} still alive:\n{describe(pids)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
