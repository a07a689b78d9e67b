"""Ask the rank command about itself before any rank starts (docs/CONTRACT.md §1).

The TP path owns its grammar: which failpoint sites, actions and guardrails
exist, which world sizes its model splits over, which fatal code exits with
which status. The harness checks syntax itself and asks the rank command for
the rest (``--check-failpoints SPEC``, ``--check-guardrails SPEC``,
``--check-world-size N``, ``--list-codes``). A bring-your-own command that does
not answer is checked for syntax only, and the caller says so.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.launch import lifetime

if TYPE_CHECKING:
    from harness.declare.scenario import Scenario

PROBE_TIMEOUT_S = 120.0
"""Bound on one question to the rank command (it may import torch: seconds on a busy box)."""
REAP_S = 5.0
"""How long the processes a question left behind may take to go once SIGKILLed (one stuck in the kernel)."""
MAX_ANSWER_BYTES = 1 << 20
"""What is read of one answer: its verdicts are a line per value."""


_CANNOT_START = re.compile(r"No module named .*|can't open file .*|\S+: (command )?not found.*")
"""What a command that cannot start at all prints (as opposed to one that does not know ``--check-*``)."""


class Refused(ValueError):
    """The rank command refused an input; the message is its own one-line reason."""


@dataclass(frozen=True, kw_only=True)
class Answer:
    """What the rank command said about a batch of inputs."""

    answered: bool
    """False when the command does not understand ``--check-*`` (syntax-only checking)."""
    note: str = ""
    """Why it did not answer (for the 'checked for syntax only' note)."""


def check_command(command: tuple[str, ...], launch: str) -> None:
    """Raise Refused unless ``command`` can start a rank in ``launch`` mode (an executable that exists)."""
    if shutil.which(command[0]) is None:
        raise Refused(f"rank command {' '.join(command)[:200]!r}: {command[0]!r} is not an executable on PATH")
    if launch == "zygote":
        from harness.launch import LaunchError, zygote_module

        try:
            zygote_module(command)
        except LaunchError as exc:
            raise Refused(str(exc)) from None


def fit_launch(command: tuple[str, ...], launch: str, *, chosen: bool) -> tuple[str, str]:
    """``(mode, note)``: the launch mode that starts ``command``, then ``check_command`` on it.

    The zygote runs only ``python -m MODULE`` in this interpreter. When nobody chose it (it is the
    default) and the command is anything else, plain subprocesses start the ranks and ``note`` says so;
    a zygote the user chose is refused in one line instead, like any other bad input.
    """
    note = ""
    if launch == "zygote" and not chosen:
        try:
            check_command(command, launch)
        except Refused:
            launch = "subprocess"
            note = ("launch mode subprocess: the default, zygote, forks only 'python -m MODULE' in this "
                    f"interpreter, not {' '.join(command)[:200]!r}")
    check_command(command, launch)
    return launch, note


def _run(command: tuple[str, ...], args: list[str]) -> subprocess.CompletedProcess | str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
    try:
        proc = Asked([*command, *args], env=env)
    except OSError as exc:
        return f"{' '.join(command)!r} could not be asked: {type(exc).__name__}: {exc}"
    code, out, err = proc.result(time.monotonic() + PROBE_TIMEOUT_S)
    if code is None:
        return _late(command)
    return subprocess.CompletedProcess([*command, *args], code, out, err)


def _late(command: tuple[str, ...]) -> str:
    return (f"the rank command {' '.join(command)[:200]!r} did not answer --check-* within {PROBE_TIMEOUT_S:g} s; "
            "it was killed with every process it started. A TP path answers at once (docs/CONTRACT.md §1): "
            f"try '{' '.join(command)[:200]} --check-world-size 2' by hand")


class Asked:
    """One question to the rank command as a process of its own, answered within a deadline.

    Its output goes to files, never pipes: a descendant that keeps them open (a helper the command
    detached with ``setsid``) cannot hold the answer back, as a pipe's EOF would. Once it exits, or at
    the deadline, whatever it started is killed and reaped: its session, its descendants, and what
    carries its marker (``BREAKIT_LAUNCH``) having left both.
    """

    def __init__(self, argv: list[str], *, env: dict, cwd: Path | None = None) -> None:
        self.marker = lifetime.launch_marker()
        self._out = tempfile.TemporaryFile(prefix="harness-probe-")
        self._err = tempfile.TemporaryFile(prefix="harness-probe-")
        try:
            self.proc = subprocess.Popen(argv, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                         env={**env, lifetime.LAUNCH_ENV: self.marker}, cwd=cwd,
                                         start_new_session=True)
        except OSError:
            self._out.close()
            self._err.close()
            raise

    def result(self, give_up_at: float) -> tuple[int | None, str, str]:
        """``(exit status, stdout, stderr)``; status None when it had not exited at ``give_up_at`` (killed)."""
        try:
            code: int | None = self.proc.wait(timeout=max(0.0, give_up_at - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        reap_marked(self.proc.pid, self.marker)
        self.proc.wait()
        return code, *(_read_all(f) for f in (self._out, self._err))


def _read_all(fh) -> str:
    with fh:
        fh.seek(0)
        return fh.read(MAX_ANSWER_BYTES).decode(errors="replace")


def reap_marked(pid: int | None, marker: str) -> int:
    """Kill and reap what a question left: process ``pid`` (while it runs), its session and descendants,
    and every process carrying ``marker``. How many there were."""
    import psutil

    from harness.launch import reap

    roots = []
    try:
        roots += [psutil.Process(pid)] if pid is not None else []
    except psutil.NoSuchProcess:
        pass
    procs = reap.process_tree(roots, {pid} if pid is not None else set(), marker)
    reap.signal_all(procs, signal.SIGKILL)
    reap.wait_gone(procs, timeout_s=REAP_S)
    return len(procs)


def _json_lines(text: str, key: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{") and key in line:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and key in doc:
                out.append(doc)
    return out


def tp_envs(scenario: Scenario) -> list[dict]:
    """The TP_* variables each rank of ``scenario`` gets (shared env, then per-rank), for ``--check-env``."""
    shared = {k: v for k, v in scenario.env.items() if k.startswith("TP_")}
    per_rank = [{**shared, **{k: v for k, v in extra.items() if k.startswith("TP_")}}
                for extra in scenario.rank_env.values()]
    return [env for env in (shared, *per_rank) if env]


class Pending:
    """A question to the rank command, answered in the background.

    In zygote mode the zygote forks the question like a rank, so it costs a
    fork instead of a second ``import torch`` racing the zygote's own.
    """

    def __init__(self, command: tuple[str, ...], args: list[str], *, launch: str = "subprocess",
                 cwd: Path | None = None, labels: dict[tuple[str, str], str] | None = None) -> None:
        self.command, self.args = command, args
        self.labels = labels or {}
        """``(check, value)`` -> what a refusal names instead of the raw value (``proves 'x' of FM-01``)."""
        self.proc: Asked | None = None
        self.error = ""
        self._forked: dict = {}
        self.answer_at = time.monotonic() + PROBE_TIMEOUT_S
        if not args:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("TP_")}
        if launch == "zygote":
            self._forked = {"done": threading.Event(), "dir": tempfile.TemporaryDirectory(prefix="harness-probe-"),
                            "marker": lifetime.launch_marker()}
            threading.Thread(target=self._fork, args=(env, cwd or Path.cwd()), daemon=True).start()
            return
        try:
            self.proc = Asked([*command, *args], env=env, cwd=cwd)
        except OSError as exc:
            self.error = f"{' '.join(command)!r} could not be asked: {type(exc).__name__}: {exc}"

    def _fork(self, env: dict, cwd: Path) -> None:
        from harness.launch import zygote, zygote_module

        forked = self._forked
        log = Path(forked["dir"].name) / "probe.log"
        forked["log"] = log

        def on_exit(_pid: int, code: int | None, _mono: float | None) -> None:
            forked["code"] = code
            forked["done"].set()

        try:
            module, argv = zygote_module(self.command)
            forked["pid"] = zygote.spawn(module=module, argv=[*argv, *self.args], cwd=str(cwd), log=str(log),
                                         env={**env, lifetime.LAUNCH_ENV: forked["marker"]}, on_exit=on_exit,
                                         timeout_s=PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - any failure to ask means "did not answer"
            self.error = f"{' '.join(self.command)!r} could not be asked: {type(exc).__name__}: {exc}"
            forked["done"].set()

    def _forked_output(self) -> tuple[str, str, int | None] | None:
        """What the question the zygote forked printed; None when it could not be asked. Raises Refused when it
        did not answer in time (it and what it started are killed first)."""
        forked = self._forked
        done = forked["done"].wait(timeout=max(0.0, self.answer_at - time.monotonic()))
        # Its exit is reported before the zygote reaps what it left: end that here, now.
        reap_marked(forked.get("pid"), forked["marker"])
        if not done:
            forked["done"].wait(timeout=REAP_S)
        try:
            if not done:
                raise Refused(_late(self.command))
            if self.error:
                return None
            with forked["log"].open("rb") as fh:
                out = fh.read(MAX_ANSWER_BYTES).decode(errors="replace")
        finally:
            forked["dir"].cleanup()
        return out, "", forked.get("code")

    def answer(self) -> Answer:
        """Wait for the verdicts; raise Refused with the first refusal."""
        if not self.args:
            return Answer(answered=True)
        if self._forked:
            got = self._forked_output()
            if got is None:
                return Answer(answered=False, note=self.error)
            out, err, code = got
        elif self.proc is None:
            return Answer(answered=False, note=self.error)
        else:
            code, out, err = self.proc.result(self.answer_at)
            if code is None:
                raise Refused(_late(self.command))
        verdicts = _json_lines(out, "check")
        cannot = _CANNOT_START.search(f"{out}\n{err}") if code else None
        if not verdicts and cannot:
            raise Refused(f"the rank command {' '.join(self.command)[:200]!r} cannot start: {cannot[0]} "
                          f"(exit {code}); check --tp-command and the directory the ranks start in")
        if not verdicts:
            last = (err or out).strip().splitlines()[-1:] or ["no output"]
            return Answer(answered=False, note=f"{' '.join(self.command)!r} does not answer --check-* "
                                               f"(exit {code}: {last[0][:200]})")
        names = {"failpoints": "TP_FAILPOINTS", "guardrails": "TP_GUARDRAILS", "world_size": "world size"}
        for doc in verdicts:
            if not doc.get("ok"):
                label = self.labels.get((str(doc.get("check")), str(doc.get("value"))))
                what = label or f"{names.get(doc.get('check'), doc.get('check'))} {str(doc.get('value'))[:80]!r}"
                raise Refused(f"the TP path refuses {what}: {doc.get('error')}")
        return Answer(answered=True)


def start(command: tuple[str, ...], *, failpoints: Iterable[str] = (), guardrails: Iterable[str] = (),
          world_sizes: Iterable[int] = (), backends: Iterable[str] = (), envs: Iterable[dict] = (),
          proves: Iterable[tuple[str, str]] = (), launch: str = "subprocess", cwd: Path | None = None) -> Pending:
    """Ask ``command`` to check every input in one call, in the background; ``.answer()`` waits.

    ``proves`` holds ``(guardrail name, scenario id)`` pairs: each name is asked as ``TP_GUARDRAILS
    none,+NAME`` (the TP path's list of guardrails is the only one), and a refusal names the scenario.
    """
    labels = {("guardrails", f"none,+{name}"): f"proves={name!r} of scenario {sid} (asked as TP_GUARDRAILS "
                                                f"'none,+{name}')" for name, sid in proves}
    args: list[str] = []
    for flag, values in (("--check-failpoints", failpoints),
                         ("--check-guardrails", [*guardrails, *(f"none,+{name}" for name, _ in proves)]),
                         ("--check-world-size", world_sizes), ("--check-backend", backends),
                         ("--check-env", [json.dumps(e, sort_keys=True) for e in envs if e])):
        for value in dict.fromkeys(str(v) for v in values):  # unique, in order
            args += [flag, value]
    return Pending(command, args, launch=launch, cwd=cwd, labels=labels)


def ask(command: tuple[str, ...], planned: Iterable[tuple[Scenario, int]], *, backend: str, launch: str,
        cwd: Path | None = None) -> Pending:
    """Check what the harness knows itself (every named rank below the world size, Refused at once),
    then ask ``command`` about the rest of every ``(scenario, world size)``: faults, guardrails, the
    guardrails ``proves`` names, world sizes, backend and TP_* env (in the background)."""
    planned = list(planned)
    for scenario, world_size in planned:
        try:
            scenario.check_ranks(world_size)
        except ValueError as exc:
            raise Refused(str(exc)) from None
    return start(command, failpoints=[s.failpoints() for s, _ in planned if s.faults],
                 guardrails=[s.guardrails for s, _ in planned], world_sizes=[ws for _, ws in planned],
                 backends=[backend], envs=[env for s, _ in planned for env in tp_envs(s)],
                 proves=dict.fromkeys((name, s.id) for s, _ in planned for name in s.guardrails_proven()),
                 launch=launch, cwd=cwd)


def overlap_store_import(launch: str) -> None:
    """Import what a ``launch`` needs of torch here while the TP path answers (the first launch needs it anyway).

    The TP path's answer imports torch in another process; paying this process's own
    import now keeps the two in parallel instead of in a row. Under the zygote there is
    none to pay: the zygote forks the store's host (``harness.launch.store_host``).
    """
    if launch != "zygote":
        from harness.launch.store import tcp_store_class

        tcp_store_class()


def check(command: tuple[str, ...], **inputs) -> Answer:
    """``start(command, **inputs).answer()``."""
    return start(command, **inputs).answer()


@functools.lru_cache(maxsize=8)
def exit_codes(command: tuple[str, ...]) -> dict[str, int] | None:
    """Fatal code -> exit status from ``command --list-codes``; None when it does not answer."""
    proc = _run(command, ["--list-codes"])
    if isinstance(proc, str) or proc.returncode != 0:
        return None
    table = {}
    for doc in _json_lines(proc.stdout, "code"):
        if isinstance(doc.get("exit"), int):
            table[str(doc["code"])] = doc["exit"]
    return table or None
