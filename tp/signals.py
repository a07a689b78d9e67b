"""Signals acted on by a thread, because the main thread may be inside C++.

A rank blocked in a gloo collective never returns to the interpreter, so a
Python signal handler would run only after the collective ends (often never).
``signal.set_wakeup_fd`` makes the C-level handler write each caught signal's
number to a pipe; a daemon thread reads the pipe and runs what ``on``
registered for that signal. The Python-level handlers are no-ops that exist
only so the C handler is installed.

Where a process cannot install handlers (code embedding the TP path outside
the main thread) ``on`` says so and the signal keeps its previous meaning.

Stacks are dumped here too (``dump_stacks``), never from a signal handler:
faulthandler's handler walks every thread's frames without the GIL while
those threads keep pushing and popping frames, and reads a data-stack chunk
the interpreter has just freed. Under the harness's SIGUSR1 that killed a
rank with SIGSEGV on its own fatal path (a rank whose watchdog was dumping
stacks while the probe arrived). ``tools/stack_race.py`` shows the rate.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Callable

_actions: dict[int, Callable[[], None]] = {}
_thread: threading.Thread | None = None
_libc_signal = None
"""libc's ``signal``, resolved before any signal arrives (``dlopen`` may wait on the loader lock)."""


def on(signum: signal.Signals, action: Callable[[], None]) -> bool:
    """Run ``action`` on the signal thread each time ``signum`` arrives; False if this process cannot."""
    global _thread, _libc_signal
    if _libc_signal is None:
        _libc_signal = ctypes.CDLL(None, use_errno=True).signal
        _libc_signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
        _libc_signal.restype = ctypes.c_void_p
    previous = _actions.get(signum)
    _actions[signum] = action  # before the handler: a signal that arrives in between must find it
    try:
        signal.signal(signum, lambda *_: None)  # installs the C handler that writes the wakeup fd
        if _thread is None:
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)
            signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
            _thread = threading.Thread(target=_wakeups, args=(read_fd,), name="tp-signals", daemon=True)
            _thread.start()
    except ValueError:  # not the main thread
        if previous is None:
            _actions.pop(signum, None)
        else:
            _actions[signum] = previous
        return False
    return True


def dump_stacks() -> None:
    """Every thread's stack to stderr (so into the rank's log), in faulthandler's words.

    One C call made with the GIL held: no other thread runs Python, so no frame it reads is pushed, popped or
    freed meanwhile, and two dumps (a SIGUSR1 answer, a fatal path's) never interleave. Never raises: it runs
    on the way to ``os._exit``.
    """
    try:
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except (OSError, ValueError, RuntimeError) as exc:  # a closed or vanished log must not stop an exit
        print(f"TP-INFO stack dump failed: {exc}", file=sys.stderr, flush=True)


def die_by(signum: signal.Signals) -> None:
    """End the process by ``signum``'s default action, from any thread (the exit status says which signal).

    ``signal.signal`` may only be called from the main thread, which may be blocked in C++; a disposition
    belongs to the process, so libc's ``signal`` can restore the default from this thread.
    """
    if _libc_signal is not None:
        _libc_signal(int(signum), None)  # SIG_DFL is the null handler
    os.kill(os.getpid(), signum)
    os._exit(128 + int(signum))  # not reached unless the signal is blocked: exit as a shell reports it


def _wakeups(read_fd: int) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        for signum in data:  # each arrival, in order: a second SIGTERM means more than the first
            action = _actions.get(signum)
            if action is None:
                continue
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive a failed action
                print(f"TP-INFO the action for signal {signum} failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
                if signum == signal.SIGTERM:  # a stop request that failed still ends the process
                    die_by(signal.SIGTERM)
