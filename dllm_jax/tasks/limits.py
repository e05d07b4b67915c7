"""A wall-clock limit for scoring one completion (:func:`call_with_time_limit`).

Scoring is pure Python (answer extraction, ``math-verify`` / sympy), so the limit stops it from
inside the process. In the main thread a SIGALRM timer raises :class:`ScoringTimeout`; CPython
also checks for signals inside long integer arithmetic, so a sympy power with a huge exponent
stops too. In any other thread, where signals cannot be handled, a watchdog thread raises the
exception in the scoring thread (``PyThreadState_SetAsyncExc``); that stops Python code between
two bytecodes, but one long call into C only when it returns. Either way the exception is raised
again every :data:`RETRY_S` seconds until the call returns, in case the scorer swallowed it
(e.g. while in a garbage-collection callback, where Python reports and drops exceptions; such a
report of a timeout is left out).

One limit is active at a time per thread: a call made under a limit runs under that limit.
``math-verify`` keeps its own SIGALRM timeouts only where no limit is active
(:func:`time_limit_active`), since its alarm would cancel this one.
"""

from __future__ import annotations

import ctypes
import functools
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from dllm_jax.errors import ConfigError

T = TypeVar("T")
RETRY_S = 0.5  # a timeout that was swallowed is raised again this often


class _State(threading.local):
    active = False  # this thread is running under a limit


_state = _State()


class ScoringTimeout(BaseException):
    """Raised in a thread whose scoring ran past its time limit. A ``BaseException``, so the
    scorers' ``except Exception`` (there for model garbage) does not swallow it."""


def time_limit_active() -> bool:
    """Whether this thread is running under :func:`call_with_time_limit`."""
    return _state.active


def call_with_time_limit(fn: Callable[[], T], seconds: float | None) -> T:
    """``fn()``, stopped by :class:`ScoringTimeout` after ``seconds`` of wall clock.

    None, or a call made under another limit, runs ``fn()`` as it is (the outer limit holds).

    Raises:
      ConfigError: ``seconds`` is not a positive number.
    """
    if seconds is not None and not seconds > 0:
        raise ConfigError(f"a scoring time limit must be > 0 seconds, got {seconds}")
    if seconds is None or time_limit_active():
        return fn()
    _state.active = True
    report = sys.unraisablehook
    sys.unraisablehook = hook = functools.partial(_drop_timeouts, report)
    try:
        if threading.current_thread() is threading.main_thread():
            return _with_alarm(fn, seconds)
        return _with_watchdog(fn, seconds)
    finally:
        _state.active = False
        if sys.unraisablehook is hook:  # not replaced meanwhile
            sys.unraisablehook = report


def _drop_timeouts(report: Callable[[Any], object], info: Any) -> None:
    """An unraisable-exception hook that drops timeouts: one raised where Python cannot raise
    (a garbage-collection callback) is lost, and is raised again :data:`RETRY_S` later."""
    if info.exc_type is not ScoringTimeout:
        report(info)


def _expire(signum: int, frame: object) -> None:
    raise ScoringTimeout


def _with_alarm(fn: Callable[[], T], seconds: float) -> T:
    """``fn()`` under a SIGALRM interval timer (main thread); a timer that was already running
    is set going again afterwards with what it had left."""
    previous = signal.signal(signal.SIGALRM, _expire)
    start = time.monotonic()
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds, RETRY_S)
    try:
        return fn()
    finally:
        while True:  # a timeout raised here (the timer fired as fn returned) is dropped
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                break
            except ScoringTimeout:
                continue
        if outer_delay > 0:
            left = max(outer_delay - (time.monotonic() - start), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, outer_interval)


def _interrupt(thread_id: int, exc: type[BaseException] | None) -> None:
    """Raises ``exc`` in thread ``thread_id`` at its next bytecode; None drops one not yet
    raised."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), None if exc is None else ctypes.py_object(exc))


def _with_watchdog(fn: Callable[[], T], seconds: float) -> T:
    """``fn()`` in this (not the main) thread, with a watchdog thread raising the timeout."""
    target, lock, done = threading.get_ident(), threading.Lock(), threading.Event()
    fired: list[bool] = []

    def watch() -> None:
        wait = seconds
        while not done.wait(wait):
            with lock:
                if done.is_set():
                    return
                fired.append(True)
                _interrupt(target, ScoringTimeout)
            wait = RETRY_S

    threading.Thread(target=watch, name="scoring-time-limit", daemon=True).start()
    try:
        return fn()
    finally:
        while True:  # once done is set the watchdog raises nothing more
            try:
                with lock:
                    done.set()
                break
            except ScoringTimeout:
                continue
        if fired:
            _interrupt(target, None)  # one raised as fn returned is dropped, not left pending
