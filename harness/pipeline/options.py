"""Run settings the user can choose, written once for the pytest plugin and the CLI.

Each option has one help text, one default and one parser. A bad value is
reported with where it came from: ``invalid deadline '5x' from
--breakit-deadline: must be a number of seconds > 0``.
"""

from __future__ import annotations

import glob
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BACKENDS = ("gloo", "nccl")
DEVICES = ("auto", "cpu", "cuda")
LAUNCH_MODES = ("zygote", "subprocess", "srun", "torchrun", "torchrun-2node")


class OptionError(ValueError):
    """A setting has a bad value; the message names the value and its source."""


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number of seconds > 0") from None
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError("must be a number of seconds > 0")
    return seconds


def _world_size(value: str) -> int:
    try:
        size = int(str(value).strip())
    except ValueError:
        raise ValueError("must be an integer >= 1") from None
    if size < 1:
        raise ValueError("must be an integer >= 1")
    return size


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"valid: {', '.join(choices)}")
        return value

    return parse


def _device(value: str) -> str:
    """A device in ``DEVICES`` that this machine can give: ``cuda`` needs a GPU the ranks can open."""
    value = _choice(DEVICES)(value)
    if value == "cuda":
        missing = no_gpu()
        if missing:
            raise ValueError(f"this machine has no GPU to put the ranks' tensors on ({missing}); use cpu or auto "
                             "here, or run on a machine with a GPU")
    return value


def no_gpu() -> str:
    """Why no rank started here could open a CUDA (or ROCm) device; "" when one could. Read from the device
    nodes and ``CUDA_VISIBLE_DEVICES``, not from torch: the harness does not import torch to parse options."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    if glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"):
        return ""
    return "no /dev/nvidia* or /dev/kfd device"


def _path(value: str) -> Path:
    if not str(value).strip():
        raise ValueError("must be a directory path")
    return Path(value)


def _command(value: str) -> tuple[str, ...]:
    """Split a rank command; a leading ``python``/``python3`` means this interpreter."""
    try:
        words = shlex.split(value) if isinstance(value, str) else list(value)
    except ValueError as exc:
        raise ValueError(f"cannot be split into words: {exc}") from None
    if not words:
        raise ValueError("must be a command line, e.g. 'python -m tp'")
    if words[0] in ("python", "python3"):
        words[0] = sys.executable
    return tuple(words)


@dataclass(frozen=True, kw_only=True)
class Option:
    """One user-facing setting."""

    name: str
    """Python name, e.g. ``world_size``; CLI ``--breakit-world-size``, ini ``breakit_world_size``."""
    label: str
    """Words used in error messages, e.g. ``world size``."""
    help: str
    """Help text (CLI, ini and pytest option alike)."""
    default: str
    """Default, as text."""
    parse: Callable[[str], Any]
    """Turns text into a value; raises ValueError saying what is valid."""
    metavar: str = "VALUE"
    """Placeholder shown in help, e.g. ``SECONDS``."""

    @property
    def pytest_flag(self) -> str:
        """The pytest command-line flag."""
        return "--breakit-" + self.name.replace("_", "-")

    @property
    def cli_flag(self) -> str:
        """The ``python -m harness run`` flag."""
        return "--" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        """The ini key."""
        return "breakit_" + self.name

    def validate(self, value: Any, where: str) -> Any:
        """Parse ``value``; on failure raise OptionError naming ``where`` it came from."""
        try:
            return self.parse(value)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"invalid {self.label} {str(value)!r} from {where}: {exc}") from None


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option(name="deadline", metavar="SECONDS", label="deadline", default="8", parse=_seconds,
               help="seconds from the fault firing (or the first init when no failpoint is armed) "
                    "until every rank must have exited; a rank still alive then means HUNG (default 8)"),
        Option(name="world_size", metavar="N", label="world size", default="2", parse=_world_size,
               help="number of ranks per scenario, unless the scenario fixes it (default 2)"),
        Option(name="backend", metavar="NAME", label="backend", default="gloo", parse=_choice(BACKENDS),
               help="torch.distributed backend the ranks use: gloo (CPU) or nccl (one GPU per rank) (default gloo)"),
        Option(name="device", metavar="NAME", label="device", default="auto", parse=_device,
               help="where the ranks' tensors live, passed as TP_DEVICE: cpu, cuda (gloo carries CUDA tensors, "
                    "so ranks may share one GPU), or auto to leave it to the TP path (cuda for nccl, cpu for "
                    "gloo) (default auto)"),
        Option(name="launch", metavar="MODE", label="launch mode", default="zygote", parse=_choice(LAUNCH_MODES),
               help="how ranks start: zygote (forked from a process with torch imported), "
                    "subprocess (plain processes), srun (plain processes with only torchrun's variables: "
                    "rank 0 serves the store, as under Slurm or MPI), torchrun (one agent) or torchrun-2node "
                    "(two agents standing in for two nodes, c10d rendezvous) (default zygote; subprocess with "
                    "--engine)"),
        Option(name="report_dir", metavar="DIR", label="report dir", default="reports", parse=_path,
               help="directory that receives one run directory per session and a 'latest' link; relative to "
                    "the pytest rootdir or, for the CLI, the current directory (default reports)"),
        Option(name="tp_command", metavar="COMMAND", label="tp command", default="python -m tp", parse=_command,
               help="command that starts one rank of the TP path under test; the harness appends "
                    "'--chunks N --backend B' (default 'python -m tp')"),
        Option(name="stall", metavar="SECONDS", label="stall window", default="1", parse=_seconds,
               help="HUNG as soon as no rank has progressed for this long after the fault and the ranks' "
                    "flight traces show every live rank waiting in a collective its peers will never complete; "
                    "the deadline stays the outer bound (default 1)"),
        Option(name="startup_deadline", metavar="SECONDS", label="start-up deadline", default="30", parse=_seconds,
               help="seconds from launch until every rank must have printed its TP-EVENT init line; a rank "
                    "still silent then ends the run as HARNESS_ERROR with what it printed (default 30)"),
    )
}


def default(name: str) -> Any:
    """The parsed default of option ``name``."""
    option = OPTIONS[name]
    return option.validate(option.default, "the default")


def from_args(args, names: tuple[str, ...]) -> dict:
    """Each option in ``names`` from the command line's ``args``: the flag's value checked with the flag named,
    else the default. ``OptionError`` names the flag and the bad value."""
    out = {}
    for name in names:
        opt, value = OPTIONS[name], getattr(args, name, None)
        out[name] = opt.validate(value, opt.cli_flag) if value is not None else default(name)
    return out
