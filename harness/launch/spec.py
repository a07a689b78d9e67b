"""What to start: the launch modes, one run's ``LaunchSpec``, the env every rank inherits."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.launch.store_host import RES_OPTIONS

MODES = ("zygote", "subprocess", "srun", "torchrun", "torchrun-2node")
HOST = "127.0.0.1"
_INHERITED_DROP = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "ROLE_RANK", "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
)


class LaunchError(RuntimeError):
    """Ranks could not be started."""


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """How to start one run's ranks."""

    command: tuple[str, ...]
    """Full rank command, harness-appended args included."""
    world_size: int
    """Number of ranks."""
    log_dir: Path
    """Directory for ``rank{R}.log``."""
    env: Mapping[str, str] = field(default_factory=dict)
    """Env for every rank, on top of the harness's own (contract vars are added per rank)."""
    rank_env: Mapping[int, Mapping[str, str]] = field(default_factory=dict)
    """Extra env for single ranks, applied last."""
    mode: str = "zygote"
    """One of ``MODES``."""
    cwd: Path = field(default_factory=Path.cwd)
    """Working directory of the ranks."""


def zygote_module(command: tuple[str, ...]) -> tuple[str, list[str]]:
    """``(module, argv)`` of a ``python -m MODULE ...`` command run by this interpreter, else LaunchError.

    The zygote forks ranks from the harness's own interpreter: another interpreter's command (another
    virtualenv, a script, a wrapper) would silently run here with the wrong packages.
    """
    if len(command) >= 3 and command[1] == "-m" and _this_interpreter(command[0]):
        return command[2], list(command[3:])
    raise LaunchError(
        f"launch mode 'zygote' forks 'python -m MODULE' in this interpreter ({sys.executable}); "
        f"got {' '.join(command)!r}; use launch mode 'subprocess' for other commands"
    )


def _this_interpreter(word: str) -> bool:
    found = shutil.which(word)
    return found is not None and os.path.abspath(found) == os.path.abspath(sys.executable)


def base_env(spec: LaunchSpec) -> dict[str, str]:
    """The harness's env minus anything that would leak into the contract."""
    env = {
        k: v for k, v in os.environ.items()
        if k not in _INHERITED_DROP and not k.startswith(("TORCHELASTIC_", "TP_"))
    }
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.setdefault("RES_OPTIONS", RES_OPTIONS)
    env.update(spec.env)
    return env
