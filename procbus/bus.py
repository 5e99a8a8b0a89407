r"""The process bus: a publish/subscribe state machine, one per process.

`Bus` is a drop-in for CherryPy's ``cherrypy.process.wspbus.Bus``: code written
against wspbus (and its plugins) runs after changing the import. Every process
of a procbus tree runs one: the master's is authoritative, and each worker's own
bus runs the worker's listeners when the master forwards a publish.

The bus models the life of the process. Its methods move it from one state to
the next and publish on the channel named after the transition::

                        O
                        |
                        V
       STOPPING --> STOPPED --> EXITING -> X
          A   A         |
          |    \___     |
          |        \    |
          |         V   V
        STARTED <-- STARTING

Built-in channels are ``start``, ``stop``, ``exit``, ``graceful``, ``log`` and
``main``; any other string is a custom channel. Listeners run in priority order
(lower first, default 50 or the callback's int ``priority`` attribute); where wspbus
leaves the order of equal priorities open, procbus runs them in subscription
order. Every listener runs even when others fail; failures are logged and raised
together as `ChannelFailures`. ``KeyboardInterrupt`` and ``SystemExit``
propagate at once.

A publish runs the listeners subscribed when it began, as on wspbus (which
sorts a copy of the set first): one subscribed or unsubscribed meanwhile, by a
listener or by another thread, counts from the next publish. The ordered
listeners of a channel are kept between publishes, so that a publish takes no
lock and sorts nothing; the set in ``listeners`` stays the truth (changing it
directly, as wspbus code may, is noticed by the next publish).

Beyond wspbus: subscribe, unsubscribe and publish are safe from any thread; a
``log`` message with no ``log`` listener goes to the standard ``logging`` logger
``procbus`` instead of vanishing; the re-exec path (`Bus.restart`) keeps an
explicit set of file descriptors open across ``execv`` (`Bus.keep_fds`), which
is how listening sockets survive a restart; `Bus.on_state` hears every
state change (a worker reports its bus's state to its master with it). A
process with an event loop for its listeners sets `Bus.awaiter` (an ASGI
worker does): then an ``async def`` listener's coroutine is run there, and its
outcome is the listener's.

This module does no IO of its own beyond the re-exec that wspbus defines.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import inspect
import itertools
import logging
import os
import sys
import threading
import traceback as _traceback
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from collections.abc import Set as AbstractSet
from typing import Any, Final, NamedTuple, TypeGuard, TypeVar, overload

__all__ = ["Bus", "ChannelFailures", "ListenerOutcome", "State", "bus", "states"]

_logger = logging.getLogger("procbus")


def _startup_directory() -> str:
    """The working directory as the shell named it (``$PWD``, symbolic links kept)
    when that is where the process is, else the resolved one.

    A deploy that points a ``current`` link at a new release, and removes the
    old one, is then followed by a re-exec (as gunicorn does).
    """
    cwd = os.getcwd()
    named = os.environ.get("PWD")
    try:
        if named and os.path.isabs(named) and os.path.samefile(named, cwd):
            return named
    except OSError:
        pass
    return cwd


def extend_pythonpath(env: MutableMapping[str, str]) -> None:
    """Put the current directory on PYTHONPATH when it is on sys.path as ''.

    With ``python -m``, ``sys.path[0]`` is the working directory; a
    re-executed process must still find what it imported from there.
    """
    prefix = "." + os.pathsep
    existing = env.get("PYTHONPATH", "")
    if sys.path and sys.path[0] == "" and not existing.startswith(prefix):
        env["PYTHONPATH"] = prefix + existing


STARTUP_CWD: Final = _startup_directory()
"""The directory the process was started from: `Bus.restart` (and procbus's
restart) changes back to it before re-executing, in case the application
changed directory since."""

DEFAULT_PRIORITY: Final = 50
EX_SOFTWARE: Final = 70

BUILTIN_CHANNELS: Final = ("start", "stop", "exit", "graceful", "log", "main")

Listener = Callable[..., Any]
_L = TypeVar("_L", bound=Listener)
ForwardHook = Callable[[str, tuple[Any, ...], dict[str, Any]], list[BaseException]]
Awaiter = Callable[[Awaitable[Any]], Any]
"""Waits for what an ``async def`` listener returned: its result, or raises its error."""


class ChannelFailures(Exception):
    """Raised by `Bus.publish` when one or more listeners failed.

    Every listener of the channel ran; the exceptions they raised are collected
    in order and returned by `get_instances`. On a master, the instances include
    the errors of remote workers (`procbus.errors.RemoteError`), each naming its
    worker.
    """

    delimiter = "\n"

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self._exceptions: list[BaseException] = []

    def handle_exception(self) -> None:
        """Append the exception being handled to the collected failures."""
        exc = sys.exc_info()[1]
        if exc is not None:
            self._exceptions.append(exc)

    def add(self, exc: BaseException) -> None:
        """Append `exc` to the collected failures."""
        self._exceptions.append(exc)

    def get_instances(self) -> list[BaseException]:
        """Return a copy of the list of collected exceptions."""
        return self._exceptions[:]

    def __str__(self) -> str:
        return self.delimiter.join(map(repr, self._exceptions))

    __repr__ = __str__

    def __bool__(self) -> bool:
        return bool(self._exceptions)


class State:
    """One state of the bus; compared by identity, shown as ``states.NAME``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"states.{self.name}"


_State = State


class _States:
    """The namespace of bus states, as wspbus exposes it (``states.STARTED``)."""

    STOPPED: Final = State("STOPPED")
    STARTING: Final = State("STARTING")
    STARTED: Final = State("STARTED")
    STOPPING: Final = State("STOPPING")
    EXITING: Final = State("EXITING")

    State: Final = State

    def __iter__(self) -> Iterator[_State]:
        return iter((self.STOPPED, self.STARTING, self.STARTED, self.STOPPING, self.EXITING))

    def by_name(self, name: str) -> _State:
        """Return the state called `name` (``"STARTED"``); raise ``KeyError``."""
        state = getattr(self, name, None)
        if not isinstance(state, _State):
            raise KeyError(name)
        return state


states: Final = _States()


class ListenerOutcome(NamedTuple):
    """What one listener did during a publish: its result or its error.

    A named tuple rather than a dataclass: a worker makes one per listener per
    publish, and a tuple is the cheapest immutable record to make.
    """

    listener: Listener
    result: Any = None
    error: Exception | None = None


class _Route(NamedTuple):
    """A channel's listeners in the order they run, and the members they were
    ordered from (what `Bus.publish` checks the channel's set against)."""

    members: AbstractSet[Listener]
    """A frozenset (`collections.abc.Set`, so that a ``set`` compares with it)."""
    ordered: tuple[Listener, ...]


def _exit_after(exc: SystemExit, failed: bool) -> None:
    """Earlier failures of a publish must not turn its ``SystemExit`` into a successful exit."""
    if failed and exc.code == 0:
        exc.code = 1


def _check_channel(channel: object) -> str:
    if not isinstance(channel, str):
        raise TypeError(f"channel must be a str, got {channel!r} ({type(channel).__name__})")
    return channel


def _is_priority(priority: object) -> TypeGuard[int]:
    # bool is an int subclass, but True as a priority is a bug, not a number.
    return isinstance(priority, int) and not isinstance(priority, bool)


def _check_priority(priority: object) -> int:
    if not _is_priority(priority):
        raise TypeError(f"priority must be an int, got {priority!r} ({type(priority).__name__})")
    return priority


def _attribute_priority(callback: Listener) -> int:
    """The callback's ``priority`` attribute if it is an int, else the default.

    wspbus reads ``getattr(callback, "priority", 50)``. An attribute that is
    not an int is not a priority someone chose (a ``MagicMock`` has every
    attribute), so it means the default; only an explicit ``priority=`` is
    checked strictly.
    """
    priority = getattr(callback, "priority", DEFAULT_PRIORITY)
    return priority if _is_priority(priority) else DEFAULT_PRIORITY


class Bus:
    """Process state machine and messenger (wspbus-compatible).

    All listeners of a channel are called even if others fail. Each failure is
    logged and processing moves on to the next listener; the failures are then
    raised together as `ChannelFailures`. The only way to stop the processing
    from inside a listener is to raise ``SystemExit`` (or ``KeyboardInterrupt``).
    """

    states = states
    execv: bool = False
    max_cloexec_files: int = os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024

    def __init__(self) -> None:
        self.execv = False
        self.keep_fds: set[int] = set()
        """File descriptors that must stay open across `restart`'s ``execv``."""
        self.listeners: dict[str, set[Listener]] = {ch: set() for ch in BUILTIN_CHANNELS}
        # (channel, callback) -> (priority, subscription order)
        self._priorities: dict[tuple[str, Listener], tuple[int, int]] = {}
        self._routes: dict[str, _Route] = {}
        """Per channel, its listeners in order (see `_ordered`); replaced, never changed."""
        self._order = itertools.count()
        self._lock = threading.RLock()
        self._state_changed = threading.Condition(threading.RLock())
        self._state: State = states.STOPPED
        self._atexit_registered = False
        self.forward: ForwardHook | None = None
        """Called after the local listeners of every `publish` (not by
        `run_listeners`); a master sets it to carry publishes to its workers.
        It returns the remote failures to raise with the local ones."""
        self.on_state: Callable[[State], None] | None = None
        """Called with each state the bus enters, in the thread that moved it, once
        `wait` was woken; a worker sets it to tell its master where its bus is."""
        self.awaiter: Awaiter | None = None
        """Set by a process that runs an event loop for its listeners (an ASGI
        worker): a listener that returns an awaitable (an ``async def``
        listener) has that awaitable waited for here, and what it returns or
        raises is the listener's result or error. Without one the awaitable
        itself is the result, as on wspbus."""

    # -- state -------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state; setting it wakes every `wait`."""
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        with self._state_changed:
            self._state = value
            self._state_changed.notify_all()
        hook = self.on_state
        if hook is not None:
            hook(value)

    # -- pub/sub -----------------------------------------------------------

    @overload
    def subscribe(
        self, channel: str, callback: None = None, priority: int | None = None
    ) -> Callable[[_L], _L]: ...

    @overload
    def subscribe(self, channel: str, callback: _L, priority: int | None = None) -> _L: ...

    def subscribe(
        self, channel: str, callback: Listener | None = None, priority: int | None = None
    ) -> Any:
        """Add `callback` to `channel` (if not present) and return it.

        With no `callback`, return a decorator that subscribes the function it
        decorates. The priority defaults to the callback's ``priority``
        attribute when that is an int, else 50; lower priorities run first,
        equal ones in the order they were subscribed. Subscribing again only
        updates the priority. An explicit `priority` that is not an int raises
        ``TypeError``. A publish already running goes on with the listeners it
        started with; the change counts from the next one.
        """
        _check_channel(channel)
        if priority is not None:
            _check_priority(priority)
        if callback is None:
            return functools.partial(self.subscribe, channel, priority=priority)
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        if priority is None:
            priority = _attribute_priority(callback)
        with self._lock:
            self.listeners.setdefault(channel, set()).add(callback)
            key = (channel, callback)
            previous = self._priorities.get(key)
            order = previous[1] if previous is not None else next(self._order)
            self._priorities[key] = (priority, order)
            self._routes.pop(channel, None)
        return callback

    def unsubscribe(self, channel: str, callback: Listener) -> None:
        """Discard `callback` from `channel` (if present).

        A publish already running still calls it if it had not reached it yet.
        """
        with self._lock:
            listeners = self.listeners.get(channel)
            if listeners and callback in listeners:
                listeners.discard(callback)
                self._priorities.pop((channel, callback), None)
                self._routes.pop(channel, None)

    def _ordered(self, channel: str) -> tuple[Listener, ...]:
        """The listeners of `channel` in the order they run, kept until the channel changes.

        The common path takes no lock and sorts nothing: the ordered tuple is
        reused while the channel's set still holds exactly the members it was
        ordered from (a set comparison, which also notices ``listeners``
        changed directly, as wspbus code may do); subscribe and unsubscribe
        drop it (a new priority changes no member).
        """
        route = self._routes.get(channel)
        if route is not None and self.listeners.get(channel) == route.members:
            return route.ordered
        return self._reorder(channel)

    def _reorder(self, channel: str) -> tuple[Listener, ...]:
        with self._lock:
            listeners = self.listeners.get(channel)
            if listeners is None:
                # Not kept: publishes on names nobody uses must not grow the table.
                self._routes.pop(channel, None)
                return ()
            found = list(listeners)
            # A callback added to the set directly (not through subscribe) gets
            # its default priority and runs after those subscribed before it.
            for callback in found:
                if (channel, callback) not in self._priorities:
                    priority = _attribute_priority(callback)
                    self._priorities[(channel, callback)] = (priority, next(self._order))
            found.sort(key=lambda cb: self._priorities[(channel, cb)])
            ordered = tuple(found)
            self._routes[channel] = _Route(frozenset(ordered), ordered)
            return ordered

    def publish(self, channel: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call every listener of `channel`; return their results in order.

        Returns ``[]`` for a channel nobody subscribed to. Raises
        `ChannelFailures` after all listeners ran if any of them failed, or
        if `forward` returned failures.
        """
        # The hot path of every process: no lock, no sort, no allocation but the
        # results; the rare failure path does the rest (`_failed`).
        results: list[Any] = []
        failures: ChannelFailures | None = None
        awaiter = self.awaiter
        for listener in self._ordered(channel):
            try:
                result = listener(*args, **kwargs)
                if awaiter is not None and inspect.isawaitable(result):
                    result = awaiter(result)
            except Exception as exc:
                failures = self._failed(channel, listener, exc, failures)
                continue
            except SystemExit as exc:
                _exit_after(exc, failures is not None)
                raise
            results.append(result)
        forward = self.forward
        if forward is not None:
            remote = forward(channel, args, kwargs)
            if remote:
                if failures is None:
                    failures = ChannelFailures()
                for error in remote:
                    failures.add(error)
        if failures is not None:
            raise failures
        return results

    def run_listeners(self, channel: str, *args: Any, **kwargs: Any) -> list[ListenerOutcome]:
        """Call every listener of `channel` and return what each one did.

        The rules of `publish` apply (order, logging of failures, propagation
        of ``KeyboardInterrupt`` and ``SystemExit``), but failures are returned
        beside the results instead of being raised, and `forward` is not
        called: a worker uses this to report each listener's outcome to the
        master, and the master's publisher to run its own listeners.
        """
        outcomes: list[ListenerOutcome] = []
        failures: ChannelFailures | None = None
        awaiter = self.awaiter
        for listener in self._ordered(channel):
            try:
                result = listener(*args, **kwargs)
                if awaiter is not None and inspect.isawaitable(result):
                    result = awaiter(result)
            except Exception as exc:
                failures = self._failed(channel, listener, exc, failures)
                outcomes.append(ListenerOutcome(listener, None, exc))
                continue
            except SystemExit as exc:
                _exit_after(exc, failures is not None)
                raise
            outcomes.append(ListenerOutcome(listener, result))
        return outcomes

    def _failed(
        self,
        channel: str,
        listener: Listener,
        exc: Exception,
        failures: ChannelFailures | None,
    ) -> ChannelFailures:
        """Collect `exc` (raised by `listener`) and log it; called while it is handled."""
        if failures is None:
            failures = ChannelFailures()
        failures.add(exc)
        if channel != "log":
            # A failing log listener would fail again on its own error.
            self.log(f"Error in {channel!r} listener {listener!r}", level=40, traceback=True)
        return failures

    def log(self, msg: str = "", level: int = 20, traceback: bool = False) -> None:
        """Publish `msg` and `level` on the ``log`` channel.

        With `traceback`, the exception being handled is appended. When no
        ``log`` listener is subscribed, the message goes to the ``procbus``
        logger of the standard ``logging`` module.
        """
        if traceback:
            msg += "\n" + "".join(_traceback.format_exception(*sys.exc_info()))
        if self.listeners.get("log"):
            self.publish("log", msg, level)
        else:
            _logger.log(level, "%s", msg)

    # -- transitions -------------------------------------------------------

    def _clean_exit(self) -> None:
        """At interpreter exit, warn and exit if the bus is still running."""
        if self.state is not states.EXITING:
            warnings.warn(
                f"The main thread is exiting, but the Bus is in the {self.state!r} state; "
                "shutting it down automatically now. You must either call "
                "bus.block() after start(), or call bus.exit() before the "
                "main thread exits.",
                RuntimeWarning,
                stacklevel=1,
            )
            self.exit()

    def start(self) -> None:
        """Start all services: publish ``start``.

        When a start listener fails, the failure is logged, the bus exits and
        the error is raised again.
        """
        if not self._atexit_registered:
            atexit.register(self._clean_exit)
            self._atexit_registered = True
        self.state = states.STARTING
        self.log("Bus STARTING")
        try:
            self.publish("start")
            self.state = states.STARTED
            self.log("Bus STARTED")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            self.log("Shutting down due to error in start listener:", level=40, traceback=True)
            # Failures of stop and exit listeners are logged by publish. Unlike
            # an exit() called during start from elsewhere, this one returns so
            # that the caller sees the error (wspbus ends the process here).
            with contextlib.suppress(Exception):
                self._exit(abort_if_starting=False)
            raise exc

    def stop(self) -> None:
        """Stop all services: publish ``stop``."""
        self.state = states.STOPPING
        self.log("Bus STOPPING")
        self.publish("stop")
        self.state = states.STOPPED
        self.log("Bus STOPPED")

    def exit(self) -> None:
        """Stop all services and prepare to exit the process.

        Often called from a signal handler or another thread, so it cannot let
        errors escape: if a stop or exit listener fails, the failure is logged
        and the process ends with status 70 (``EX_SOFTWARE``), as in wspbus.
        Called while the bus is STARTING (Ctrl-C while a start listener hangs),
        it ends the process with status 70 too.
        """
        self._exit(abort_if_starting=True)

    def _exit(self, *, abort_if_starting: bool) -> None:
        exit_state = self.state
        try:
            self.stop()
            self.state = states.EXITING
            self.log("Bus EXITING")
            self.publish("exit")
            self.log("Bus EXITED")
        except Exception:
            os._exit(EX_SOFTWARE)
        finally:
            self._unregister_atexit()
        if abort_if_starting and exit_state is states.STARTING:
            # exit() during start(), e.g. Ctrl-C while a start listener hangs:
            # leaving now avoids a loop where Ctrl-C never ends the process.
            os._exit(EX_SOFTWARE)

    def _unregister_atexit(self) -> None:
        if self._atexit_registered:
            atexit.unregister(self._clean_exit)
            self._atexit_registered = False

    def restart(self) -> None:
        """Exit, and have the main thread's `block` re-execute the process."""
        self.execv = True
        self.exit()

    def graceful(self) -> None:
        """Advise all services to reload: publish ``graceful``."""
        self.log("Bus graceful")
        self.publish("graceful")

    def wait(
        self,
        state: State | Iterable[State],
        interval: float = 0.1,
        channel: str | None = None,
    ) -> None:
        """Wait for the bus to reach `state` (or one of several).

        While waiting, `channel` is published every `interval` seconds (the
        main thread's `block` publishes ``main``). Unlike wspbus, a state change
        ends the wait at once instead of at the next tick.
        """
        wanted = {state} if isinstance(state, State) else set(state)
        while True:
            with self._state_changed:
                if self._state_changed.wait_for(lambda: self._state in wanted, interval):
                    return
            if channel is not None:
                self.publish(channel)

    def block(self, interval: float = 0.1) -> None:
        """Wait for EXITING, then for other threads, then re-exec if asked.

        Meant for the main thread. ``KeyboardInterrupt`` exits the bus;
        ``SystemExit`` exits it and propagates. After the wait, every
        non-daemon thread is joined, then, if `restart` was called, the process
        re-executes itself (`execv` must happen on the main thread).
        """
        try:
            self.wait(states.EXITING, interval=interval, channel="main")
        except (KeyboardInterrupt, OSError):
            self.log("Keyboard Interrupt: shutting down bus")
            self.exit()
        except SystemExit:
            self.log("SystemExit raised: shutting down bus")
            self.exit()
            raise

        self.log("Waiting for child threads to terminate...")
        current = threading.current_thread()
        main = threading.main_thread()
        for thread in threading.enumerate():
            if thread is not current and thread is not main and not thread.daemon:
                self.log(f"Waiting for thread {thread.name}.")
                thread.join()

        if self.execv:
            self._do_execv()

    def start_with_callback(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> threading.Thread:
        """Start `func` in a new thread once the bus is STARTED; start the bus.

        Returns the thread.
        """
        call_args = args or ()
        call_kwargs = kwargs or {}

        def _callback() -> None:
            self.wait(states.STARTED)
            func(*call_args, **call_kwargs)

        thread = threading.Thread(target=_callback)
        thread.name = "Bus Callback " + thread.name
        thread.start()
        self.start()
        return thread

    # -- re-exec -----------------------------------------------------------

    def exec_args(self) -> tuple[str, list[str]]:
        """Return the executable and the argv that re-execute this process.

        The argv is the interpreter's true command line (`sys.orig_argv`), so
        ``python -m package`` and interpreter flags survive, as in wspbus.
        """
        if getattr(sys, "frozen", False):
            return sys.executable, list(sys.argv)
        argv = list(getattr(sys, "orig_argv", ()))
        if not argv:
            import subprocess  # noqa: PLC0415 - only for interpreters without orig_argv

            flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
            argv = [sys.executable, *flags, *sys.argv]
        return sys.executable, argv

    def _open_fds(self) -> Iterable[int]:
        try:
            return sorted(int(name) for name in os.listdir("/proc/self/fd"))
        except OSError:
            return range(self.max_cloexec_files)

    def _set_cloexec(self) -> None:
        """Mark every fd above 2 close-on-exec, except those in `keep_fds`."""
        for fd in self._open_fds():
            if fd < 3:
                continue
            try:
                os.set_inheritable(fd, fd in self.keep_fds)
            except OSError:
                continue

    def _do_execv(self) -> None:
        """Re-execute the current process (main thread only)."""
        executable, argv = self.exec_args()
        self.log("Re-spawning " + " ".join(argv))
        extend_pythonpath(os.environ)
        os.chdir(STARTUP_CWD)
        if self.max_cloexec_files:
            self._set_cloexec()
        os.execv(executable, argv)

    # -- fork --------------------------------------------------------------

    def reset_after_fork(self) -> None:
        """Make this bus a fresh bus of a newly forked process.

        Listeners, priorities and state are dropped and the locks are new (a
        lock held by another thread at fork time would otherwise never be
        released). A forked worker calls this so that `procbus.bus` is its own.
        """
        if self._atexit_registered:
            self._unregister_atexit()
        Bus.__init__(self)


bus = Bus()
"""The bus of this process (the master's in the master, a worker's in a worker)."""
