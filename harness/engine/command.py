"""The one-line command that reruns a zero-touch run alone, from a new shell, as it ran.

``run --engine`` prints it after its verdict and ``explore --engine`` prints it for every violation: the engine
command, the faults, the expectation, the world size, the launch mode, the output regex, the deadline and the
rank env, from the directory the ranks ran in. Nothing in it depends on the shell that printed it (the
interpreter is named ``python``, as a user types it).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.pipeline import options

SCRIPT_RUNNERS = ("python", "python3", "bash", "sh")
"""Interpreters whose first plain argument is the script they run."""


def engine_command(text: str) -> tuple[str, ...]:
    """``--engine``'s words, checked as every door checks them (split, and its script there to start); raises
    ValueError naming the flag and why."""
    try:
        words = options.OPTIONS["tp_command"].parse(text)
        if (missing := missing_script(words, Path.cwd())) is not None:
            raise ValueError(missing)
    except ValueError as exc:
        raise ValueError(f"invalid engine command {text!r} from --engine: {exc}") from None
    return words


def missing_script(words: tuple[str, ...], cwd: Path) -> str | None:
    """Why the engine command cannot start in any rank: the script its interpreter is given does not exist from
    ``cwd`` (Python would exit 2, ``can't open file``, in every rank, and the run would say only "exit 2").
    None when it exists, or the command is not ``INTERPRETER SCRIPT ...``."""
    runner = Path(words[0]).name
    if len(words) < 2 or not (runner in SCRIPT_RUNNERS or words[0] == sys.executable) or words[1].startswith("-"):
        return None
    if runner in ("bash", "sh") and "/" not in words[1]:
        return None  # a shell looks a bare script name up on PATH too
    script = Path(words[1]).expanduser()
    if (cwd / script).exists():
        return None
    return f"its script {words[1]!r} does not exist (looked in {cwd}): every rank would fail to start"


PROG = ("python", "-m", "harness")
"""How a user starts the harness; ``sys.executable`` in a printed command would tie it to this venv's path."""


@dataclass(frozen=True, kw_only=True)
class Rerun:
    """Everything a zero-touch run was started with."""

    engine: tuple[str, ...]
    """The engine command, as given to ``--engine``."""
    faults: tuple[str, ...] = ()
    """``--fault`` specs (``collective.<op>=ACTION@TRIGGERS``)."""
    expect: str = "clean"
    """``--expect`` word (``crash``, ``hang``, ...)."""
    signatures: tuple[str, ...] = ()
    """``--signature`` items (``[RANK:]REGEX``)."""
    world_size: int = 2
    """Ranks."""
    launch: str = "subprocess"
    """``--launch`` mode."""
    output_regex: str | None = None
    """``--output-regex``, when the run had one."""
    deadline_s: float | None = None
    """The deadline the run had (measured or given); None: the rerun measures its own."""
    settings: Mapping[str, float] = field(default_factory=dict)
    """Other settings the user gave (``stall``, ``startup_deadline``): option name -> value."""
    env: Mapping[str, str] = field(default_factory=dict)
    """``--env`` of the run: the user's, never one the harness chose."""
    cwd: Path | None = None
    """Where the ranks ran; the line starts with ``cd`` there when given."""
    report_dir: Path | None = None
    """``--report-dir`` when the user gave one (absolute): a rerun reports where the run did."""

    def words(self) -> list[str]:
        """The ``run`` command's words (no ``cd``)."""
        engine = ["python" if w == sys.executable else w for w in self.engine]
        words = [*PROG, "run", "--engine", shlex.join(engine)]
        for spec in self.faults:
            words += ["--fault", spec]
        words += ["--expect", self.expect]
        for item in self.signatures:
            words += ["--signature", item]
        words += ["--world-size", str(self.world_size), "--launch", self.launch]
        if self.output_regex is not None:
            words += ["--output-regex", self.output_regex]
        if self.deadline_s is not None:
            words += ["--deadline", f"{self.deadline_s:g}"]
        for name, value in self.settings.items():
            words += [options.OPTIONS[name].cli_flag, f"{value:g}"]
        for name, value in self.env.items():
            words += ["--env", f"{name}={value}"]
        if self.report_dir is not None:
            words += ["--report-dir", str(self.report_dir)]
        return words

    def line(self) -> str:
        """The command a user pastes into a new shell."""
        text = shlex.join(self.words())
        return f"cd {shlex.quote(str(self.cwd))} && {text}" if self.cwd is not None else text

