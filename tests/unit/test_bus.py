"""The Bus contract: wspbus's states, channels, priorities, errors and logs."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

import procbus
from procbus import Bus, ChannelFailures, states
from procbus.bus import BUILTIN_CHANNELS, State, extend_pythonpath
from tests.processes import ROOT, run_to_end


class LogRecorder:
    """A ``log`` listener that keeps every (msg, level) it was given."""

    def __init__(self, bus: Bus) -> None:
        self.entries: list[tuple[str, int]] = []
        bus.subscribe("log", self)

    def __call__(self, msg: str, level: int) -> None:
        self.entries.append((msg, level))

    @property
    def messages(self) -> list[str]:
        return [msg for msg, _ in self.entries]


@pytest.fixture
def bus() -> Iterator[Bus]:
    b = Bus()
    try:
        yield b
    finally:
        # A bus left running would warn at interpreter exit.
        b._unregister_atexit()


@pytest.fixture
def log(bus: Bus) -> LogRecorder:
    return LogRecorder(bus)


def run_python(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the interpreter with `args`, capture its output (30 s at most)."""
    return run_to_end([sys.executable, *args], cwd=cwd)


def run_code(code: str) -> subprocess.CompletedProcess[str]:
    return run_python("-c", textwrap.dedent(code))


# -- states and listeners -----------------------------------------------------


def test_states_have_wspbus_reprs_and_bus_starts_stopped(bus: Bus) -> None:
    """The five states print as ``states.NAME``; a new bus is STOPPED."""
    assert [repr(s) for s in states] == [
        "states.STOPPED",
        "states.STARTING",
        "states.STARTED",
        "states.STOPPING",
        "states.EXITING",
    ]
    assert bus.states is states
    assert bus.state is states.STOPPED
    assert states.by_name("STARTED") is states.STARTED


def test_on_state_hears_every_state_the_bus_enters_in_order(bus: Bus) -> None:
    """Steps: set on_state; a start listener records the state the hook last heard;
    start, then exit; reset the bus after a fork.
    Expected: STARTING (heard before the start listeners ran), STARTED, STOPPING,
    STOPPED, EXITING, in that order; the hook is gone after the reset."""
    heard: list[State] = []
    bus.on_state = heard.append
    seen_by_listener: list[State] = []
    bus.subscribe("start", lambda: seen_by_listener.append(heard[-1]))
    bus.start()
    bus.exit()
    assert heard == [
        states.STARTING,
        states.STARTED,
        states.STOPPING,
        states.STOPPED,
        states.EXITING,
    ]
    assert seen_by_listener == [states.STARTING]
    bus.reset_after_fork()
    assert bus.on_state is None


def test_listeners_are_prefilled_with_builtin_channels(bus: Bus) -> None:
    """``bus.listeners`` maps each built-in channel to an empty set."""
    assert set(bus.listeners) == set(BUILTIN_CHANNELS)
    assert all(listeners == set() for listeners in bus.listeners.values())


def test_assigning_a_channel_set_then_subscribing_works(bus: Bus) -> None:
    """wspbus code does ``bus.listeners['x'] = set()`` and then subscribes."""
    bus.listeners["custom"] = set()
    bus.subscribe("custom", lambda: "ok")
    assert bus.publish("custom") == ["ok"]


def test_callbacks_added_to_the_set_directly_still_run(bus: Bus) -> None:
    """A callback added to the listener set without subscribe runs at priority 50."""
    bus.subscribe("ch", lambda: "first", priority=10)
    bus.listeners["ch"].add(lambda: "direct")
    assert bus.publish("ch") == ["first", "direct"]


def test_publish_to_unknown_channel_returns_empty_list(bus: Bus) -> None:
    """A channel nobody subscribed to is not an error."""
    assert bus.publish("nobody-listens", 1, k=2) == []
    assert bus.publish("graceful") == []


def test_subscribe_as_decorator_returns_the_function(bus: Bus) -> None:
    """``@bus.subscribe('ch')`` subscribes and leaves the function usable."""

    @bus.subscribe("ch", priority=5)
    def handler(x: int) -> int:
        return x * 2

    assert handler(2) == 4
    assert bus.publish("ch", 21) == [42]


def test_priority_orders_listeners_lower_first(bus: Bus) -> None:
    """Lower priorities run first; the default is 50; a ``priority`` attribute counts."""
    calls: list[str] = []

    def attr_priority() -> None:
        calls.append("attr10")

    attr_priority.priority = 10  # type: ignore[attr-defined]
    bus.subscribe("ch", lambda: calls.append("default50"))
    bus.subscribe("ch", lambda: calls.append("p90"), priority=90)
    bus.subscribe("ch", attr_priority)
    bus.subscribe("ch", lambda: calls.append("p1"), priority=1)
    bus.publish("ch")
    assert calls == ["p1", "attr10", "default50", "p90"]


def test_equal_priorities_run_in_subscription_order(bus: Bus) -> None:
    """Ties run in the order of subscription, whatever the set's hash order."""
    calls: list[int] = []
    listeners = [lambda i=i: calls.append(i) for i in range(200)]
    for listener in listeners:
        bus.subscribe("ch", listener)
    bus.publish("ch")
    assert calls == list(range(200))


def test_resubscribing_updates_priority_but_not_tie_order(bus: Bus) -> None:
    """Subscribing the same callback twice keeps one entry with the new priority."""
    calls: list[str] = []

    def a() -> None:
        calls.append("a")

    def b() -> None:
        calls.append("b")

    bus.subscribe("ch", a)
    bus.subscribe("ch", b)
    bus.subscribe("ch", a, priority=60)
    bus.publish("ch")
    assert calls == ["b", "a"]


def test_unsubscribe_removes_and_ignores_unknown(bus: Bus) -> None:
    """Unsubscribing removes the callback; unknown callbacks and channels are ignored."""

    def listener() -> str:
        return "x"

    bus.subscribe("ch", listener)
    bus.unsubscribe("ch", listener)
    bus.unsubscribe("ch", listener)
    bus.unsubscribe("never", listener)
    assert bus.publish("ch") == []


def test_publish_passes_args_and_kwargs(bus: Bus) -> None:
    """Listeners get the publish's positional and keyword arguments."""
    bus.subscribe("ch", lambda a, b=0: a + b)
    assert bus.publish("ch", 1, b=2) == [3]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((42, lambda: None), "channel must be a str, got 42 (int)"),
        (("ch", "not callable"), "callback must be callable, got 'not callable'"),
        (("ch", lambda: None, "5"), "priority must be an int, got '5' (str)"),
        (("ch", lambda: None, 1.5), "priority must be an int, got 1.5 (float)"),
        (("ch", lambda: None, True), "priority must be an int, got True (bool)"),
    ],
)
def test_subscribe_rejects_bad_input_naming_the_value(
    bus: Bus, args: tuple[Any, ...], message: str
) -> None:
    """A bad channel, callback or priority raises TypeError naming the value."""
    with pytest.raises(TypeError) as info:
        bus.subscribe(*args)
    assert str(info.value) == message


def test_mock_callback_subscribes_at_the_default_priority(bus: Bus) -> None:
    """wspbus reads ``getattr(callback, "priority", 50)``; a MagicMock has every
    attribute, its ``priority`` a MagicMock, and must subscribe as it does there.

    Steps: subscribe a listener at 10, one at the default, a MagicMock, one at 60;
    publish with an argument.
    Expected: no TypeError; the mock is called once with the argument, at the
    default priority 50 (after the default listener subscribed before it).
    """
    calls: list[str] = []
    mock = MagicMock(side_effect=lambda value: calls.append(f"mock {value}"))
    bus.subscribe("ch", lambda value: calls.append("p10"), priority=10)
    bus.subscribe("ch", lambda value: calls.append("default50"))
    assert bus.subscribe("ch", mock) is mock
    bus.subscribe("ch", lambda value: calls.append("p60"), priority=60)
    bus.publish("ch", 7)
    mock.assert_called_once_with(7)
    assert calls == ["p10", "default50", "mock 7", "p60"]


@pytest.mark.parametrize("attribute", ["high", 1.5, True, None, MagicMock()])
def test_priority_attribute_that_is_not_an_int_means_the_default(
    bus: Bus, attribute: object
) -> None:
    """Steps: a listener whose ``priority`` attribute is not an int (a str, a float,
    a bool, None, a mock) subscribed between listeners at 49 and 51, once through
    subscribe and once added to the listener set directly.
    Expected: both run at priority 50, between the two; nothing raises.
    """
    calls: list[str] = []

    def odd() -> None:
        calls.append("odd")

    def direct() -> None:
        calls.append("direct")

    odd.priority = attribute  # type: ignore[attr-defined]
    direct.priority = attribute  # type: ignore[attr-defined]
    bus.subscribe("ch", lambda: calls.append("p51"), priority=51)
    bus.subscribe("ch", odd)
    bus.subscribe("ch", lambda: calls.append("p49"), priority=49)
    bus.listeners["ch"].add(direct)
    bus.publish("ch")
    assert calls == ["p49", "odd", "direct", "p51"]


# -- errors -------------------------------------------------------------------


@pytest.mark.parametrize("channel", [*BUILTIN_CHANNELS[:4], "main", "custom"])
def test_every_listener_runs_and_failures_are_collected(
    bus: Bus, log: LogRecorder, channel: str
) -> None:
    """On any channel, a failing listener is logged at level 40 with its traceback,
    the others still run, and all failures come back as one ChannelFailures."""
    ran: list[str] = []

    def fail_value() -> None:
        raise ValueError("bad value")

    def fail_key() -> None:
        raise KeyError("k")

    bus.subscribe(channel, fail_value, priority=10)
    bus.subscribe(channel, lambda: ran.append("middle"), priority=20)
    bus.subscribe(channel, fail_key, priority=30)
    bus.subscribe(channel, lambda: ran.append("last"), priority=40)

    with pytest.raises(ChannelFailures) as info:
        bus.publish(channel)

    assert ran == ["middle", "last"]
    failures = info.value
    assert bool(failures)
    instances = failures.get_instances()
    assert [type(e) for e in instances] == [ValueError, KeyError]
    assert str(failures) == "ValueError('bad value')\nKeyError('k')"
    errors = [(m, lvl) for m, lvl in log.entries if m.startswith("Error in")]
    assert len(errors) == 2
    first, level = errors[0]
    assert first.startswith(f"Error in {channel!r} listener {fail_value!r}\n")
    assert "Traceback (most recent call last)" in first
    assert "ValueError: bad value" in first
    assert level == 40


def test_empty_channel_failures_is_false() -> None:
    """A ChannelFailures with nothing collected is falsy and prints empty."""
    failures = ChannelFailures()
    assert not failures
    assert str(failures) == ""
    assert failures.get_instances() == []


def test_failing_log_listener_is_not_logged_again(bus: Bus) -> None:
    """A log listener that fails raises ChannelFailures without recursing."""

    def broken(msg: str, level: int) -> None:
        raise RuntimeError("log broken")

    bus.subscribe("log", broken)
    with pytest.raises(ChannelFailures) as info:
        bus.log("hello")
    assert [type(e) for e in info.value.get_instances()] == [RuntimeError]


def test_keyboard_interrupt_propagates_at_once(bus: Bus) -> None:
    """KeyboardInterrupt stops the publish; later listeners do not run."""
    ran: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    bus.subscribe("ch", interrupt, priority=1)
    bus.subscribe("ch", lambda: ran.append("later"), priority=2)
    with pytest.raises(KeyboardInterrupt):
        bus.publish("ch")
    assert ran == []


def test_system_exit_after_failures_has_nonzero_code(bus: Bus, log: LogRecorder) -> None:
    """SystemExit(0) raised after another listener failed becomes SystemExit(1)."""

    def fail() -> None:
        raise ValueError("x")

    def leave() -> None:
        raise SystemExit(0)

    bus.subscribe("ch", fail, priority=1)
    bus.subscribe("ch", leave, priority=2)
    with pytest.raises(SystemExit) as info:
        bus.publish("ch")
    assert info.value.code == 1


def test_system_exit_without_failures_keeps_its_code(bus: Bus) -> None:
    """SystemExit(0) with no earlier failure propagates unchanged."""

    def leave() -> None:
        raise SystemExit(0)

    bus.subscribe("ch", leave)
    with pytest.raises(SystemExit) as info:
        bus.publish("ch")
    assert info.value.code == 0


def test_awaiter_resolves_async_listeners_in_priority_order_and_collects_errors(
    bus: Bus, log: LogRecorder
) -> None:
    """Steps: an awaiter that runs each awaitable to its end with asyncio.run; a sync
    listener, an async one that returns and an async one that raises, at priorities
    3, 1, 2. Expected: run_listeners gives, in priority order, the async result, the
    async error (logged like any listener's) and the sync result; publish raises the
    error in ChannelFailures; a non-awaitable result is not handed to the awaiter."""
    handed: list[object] = []

    def awaiter(awaitable: Any) -> Any:
        handed.append(awaitable)

        async def wait() -> Any:
            return await awaitable

        return asyncio.run(wait())

    async def answer(n: int) -> int:
        await asyncio.sleep(0)
        return n * 2

    async def refuse(n: int) -> int:
        raise LookupError(f"no {n}")

    bus.awaiter = awaiter
    bus.subscribe("ch", lambda n: f"sync {n}", priority=3)
    bus.subscribe("ch", answer, priority=1)
    bus.subscribe("ch", refuse, priority=2)
    outcomes = bus.run_listeners("ch", 21)
    assert [o.result for o in outcomes] == [42, None, "sync 21"]
    assert [type(o.error) for o in outcomes] == [type(None), LookupError, type(None)]
    assert len(handed) == 2
    assert any("Error in 'ch' listener" in m for m in log.messages)
    with pytest.raises(ChannelFailures) as info:
        bus.publish("ch", 1)
    assert [str(e) for e in info.value.get_instances()] == ["no 1"]


def test_without_awaiter_an_async_listener_result_is_its_coroutine(bus: Bus) -> None:
    """Steps: no awaiter; an async listener; publish. Expected: the result is the
    coroutine object itself, as on wspbus (closed here so that it warns of nothing)."""

    async def listener() -> int:
        return 1

    bus.subscribe("ch", listener)
    (result,) = bus.publish("ch")
    assert inspect.iscoroutine(result)
    result.close()


# -- transitions and their log messages ---------------------------------------


def test_start_stop_exit_transitions_log_and_publish(bus: Bus, log: LogRecorder) -> None:
    """start, stop and exit move through the states, publish and log as wspbus."""
    seen: list[tuple[str, object]] = []
    for channel in ("start", "stop", "exit"):
        bus.subscribe(channel, lambda ch=channel: seen.append((ch, bus.state)))

    bus.start()
    assert bus.state is states.STARTED
    bus.exit()
    assert bus.state is states.EXITING
    assert seen == [
        ("start", states.STARTING),
        ("stop", states.STOPPING),
        ("exit", states.EXITING),
    ]
    assert log.messages == [
        "Bus STARTING",
        "Bus STARTED",
        "Bus STOPPING",
        "Bus STOPPED",
        "Bus EXITING",
        "Bus EXITED",
    ]


def test_stop_then_start_again(bus: Bus, log: LogRecorder) -> None:
    """A stopped bus can be started again."""
    bus.start()
    bus.stop()
    assert bus.state is states.STOPPED
    bus.start()
    assert bus.state is states.STARTED
    bus.exit()
    assert log.messages[2:4] == ["Bus STOPPING", "Bus STOPPED"]


def test_graceful_logs_and_publishes(bus: Bus, log: LogRecorder) -> None:
    """graceful() logs 'Bus graceful' and publishes on graceful."""
    calls: list[str] = []
    bus.subscribe("graceful", lambda: calls.append("reloaded"))
    bus.graceful()
    assert calls == ["reloaded"]
    assert log.messages == ["Bus graceful"]


def test_failing_start_listener_exits_bus_and_reraises(bus: Bus, log: LogRecorder) -> None:
    """A start listener failure is logged, the bus exits, and the error is raised."""
    exited: list[bool] = []

    def boom() -> None:
        raise OSError("port in use")

    bus.subscribe("start", boom)
    bus.subscribe("exit", lambda: exited.append(True))
    with pytest.raises(ChannelFailures) as info:
        bus.start()
    assert isinstance(info.value.get_instances()[0], OSError)
    assert bus.state is states.EXITING
    assert exited == [True]
    assert any(m.startswith("Shutting down due to error in start listener:") for m in log.messages)


def test_log_goes_to_logging_without_listeners(bus: Bus, caplog: pytest.LogCaptureFixture) -> None:
    """With no log listener, bus.log writes to the 'procbus' logger at its level."""
    with caplog.at_level(logging.DEBUG, logger="procbus"):
        bus.log("hello there", level=30)
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("procbus", 30, "hello there")
    ]


def test_log_publishes_msg_and_level(bus: Bus, log: LogRecorder) -> None:
    """bus.log publishes (msg, level); level defaults to 20."""
    bus.log("one")
    bus.log("two", 40)
    assert log.entries == [("one", 20), ("two", 40)]


def test_log_with_traceback_appends_current_exception(bus: Bus, log: LogRecorder) -> None:
    """traceback=True appends the exception being handled."""
    try:
        raise ZeroDivisionError("zero")
    except ZeroDivisionError:
        bus.log("failed", traceback=True)
    msg = log.messages[0]
    assert msg.startswith("failed\nTraceback")
    assert "ZeroDivisionError: zero" in msg


def test_exit_code_is_70_when_exit_listener_fails() -> None:
    """As wspbus, a failing exit listener ends the process with status 70."""
    result = run_code(
        """
        from procbus import Bus
        b = Bus()
        def fail():
            raise RuntimeError("cannot clean up")
        b.subscribe("exit", fail)
        b.start()
        b.exit()
        print("not reached")
        """
    )
    assert result.returncode == 70
    assert "not reached" not in result.stdout
    assert "Error in 'exit' listener" in result.stderr


def test_atexit_warns_when_main_thread_ends_with_bus_running() -> None:
    """A started bus that is never exited warns at interpreter exit and exits."""
    result = run_code(
        """
        from procbus import Bus
        b = Bus()
        b.subscribe("exit", lambda: print("exit listener ran"))
        b.start()
        """
    )
    assert result.returncode == 0
    assert "RuntimeWarning: The main thread is exiting, but the Bus is in the" in result.stderr
    assert "states.STARTED" in result.stderr
    assert "exit listener ran" in result.stdout


def test_no_atexit_warning_after_clean_exit() -> None:
    """An exited bus says nothing at interpreter exit."""
    result = run_code(
        """
        from procbus import Bus
        b = Bus()
        b.start()
        b.exit()
        """
    )
    assert result.returncode == 0
    assert "RuntimeWarning" not in result.stderr


# -- wait, block, start_with_callback -----------------------------------------


def test_wait_publishes_on_its_channel_until_state(bus: Bus) -> None:
    """wait(state, interval, channel) publishes the channel each interval until the
    bus reaches the state (here: the third tick exits the bus)."""
    ticks: list[int] = []

    def tick() -> None:
        ticks.append(len(ticks))
        if len(ticks) == 3:
            bus.exit()

    bus.subscribe("tick", tick)
    bus.start()
    bus.wait(states.EXITING, interval=0.01, channel="tick")
    assert ticks == [0, 1, 2]
    assert bus.state is states.EXITING


def test_wait_accepts_several_states_and_returns_on_change(bus: Bus) -> None:
    """wait([...]) returns as soon as one of the states is reached from another thread."""
    thread = threading.Thread(target=bus.start)
    thread.start()
    try:
        bus.wait([states.STARTED, states.EXITING], interval=5)
    finally:
        thread.join(5)
    assert bus.state is states.STARTED
    bus.exit()


def test_block_publishes_main_and_joins_threads(bus: Bus, log: LogRecorder) -> None:
    """block() publishes 'main' until EXITING, then joins non-daemon threads."""
    mains: list[int] = []
    release = threading.Event()
    worker_done: list[bool] = []

    def worker() -> None:
        release.wait(5)
        worker_done.append(True)

    thread = threading.Thread(target=worker, name="slow-worker")
    thread.start()

    def on_main() -> None:
        mains.append(1)
        if len(mains) == 2:
            threading.Timer(0.05, release.set).start()
            bus.exit()

    bus.subscribe("main", on_main)
    bus.start()
    bus.block(interval=0.01)
    assert len(mains) == 2
    assert worker_done == [True]
    assert not thread.is_alive()
    assert "Waiting for child threads to terminate..." in log.messages
    assert "Waiting for thread slow-worker." in log.messages


def test_block_exits_bus_on_keyboard_interrupt(bus: Bus, log: LogRecorder) -> None:
    """A KeyboardInterrupt while blocking exits the bus cleanly."""

    def interrupt() -> None:
        raise KeyboardInterrupt

    bus.subscribe("main", interrupt)
    bus.start()
    bus.block(interval=0.01)
    assert bus.state is states.EXITING
    assert "Keyboard Interrupt: shutting down bus" in log.messages


def test_block_exits_bus_and_reraises_system_exit(bus: Bus, log: LogRecorder) -> None:
    """A SystemExit while blocking exits the bus and propagates."""

    def leave() -> None:
        raise SystemExit(3)

    bus.subscribe("main", leave)
    bus.start()
    with pytest.raises(SystemExit):
        bus.block(interval=0.01)
    assert bus.state is states.EXITING
    assert "SystemExit raised: shutting down bus" in log.messages


def test_start_with_callback_runs_after_started(bus: Bus) -> None:
    """The callback runs in its own thread once the bus is STARTED, with its args."""
    order: list[object] = []

    def slow_start() -> None:
        order.append("start listener")

    def callback(a: int, b: int = 0) -> None:
        order.append(("callback", a, b, bus.state))

    bus.subscribe("start", slow_start)
    thread = bus.start_with_callback(callback, (1,), {"b": 2})
    thread.join(5)
    assert not thread.is_alive()
    assert thread.name.startswith("Bus Callback ")
    assert order == ["start listener", ("callback", 1, 2, states.STARTED)]
    bus.exit()


# -- restart and execv --------------------------------------------------------


def test_restart_sets_execv_and_block_reexecutes(
    bus: Bus, log: LogRecorder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """restart() exits the bus; block() then calls os.execv with the true argv."""
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append((exe, list(argv))))
    monkeypatch.setattr(Bus, "_set_cloexec", lambda self: None)
    bus.start()
    bus.restart()
    assert bus.execv is True
    assert bus.state is states.EXITING
    bus.block(interval=0.01)
    assert calls == [(sys.executable, list(sys.orig_argv))]
    assert any(m.startswith("Re-spawning ") for m in log.messages)


def test_exec_args_keep_module_invocation(tmp_path: Path) -> None:
    """Under ``python -X dev -m pkg.mod arg``, the re-exec argv is exactly that."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        "import json, procbus\nprint(json.dumps(procbus.Bus().exec_args()))\n"
    )
    result = run_python("-X", "dev", "-m", "pkg.mod", "--flag", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    exe, argv = json.loads(result.stdout)
    assert exe == sys.executable
    assert argv[1:] == ["-X", "dev", "-m", "pkg.mod", "--flag"]


def test_extend_pythonpath_when_path0_is_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    """With sys.path[0] == '', '.' is prepended to PYTHONPATH once."""
    monkeypatch.setattr(sys, "path", ["", *sys.path[1:]])
    env = {"PYTHONPATH": "/opt/lib"}
    extend_pythonpath(env)
    extend_pythonpath(env)
    assert env["PYTHONPATH"] == "." + os.pathsep + "/opt/lib"
    monkeypatch.setattr(sys, "path", ["/somewhere", *sys.path[1:]])
    other: dict[str, str] = {}
    extend_pythonpath(other)
    assert "PYTHONPATH" not in other


def test_set_cloexec_keeps_only_the_listed_fds(bus: Bus) -> None:
    """Before execv every fd above 2 is close-on-exec except those in keep_fds."""
    keep_r, keep_w = os.pipe()
    drop_r, drop_w = os.pipe()
    try:
        for fd in (keep_r, keep_w, drop_r, drop_w):
            os.set_inheritable(fd, True)
        bus.keep_fds = {keep_r}
        bus._set_cloexec()
        assert os.get_inheritable(keep_r)
        assert not os.get_inheritable(keep_w)
        assert not os.get_inheritable(drop_r)
        assert not os.get_inheritable(drop_w)
    finally:
        for fd in (keep_r, keep_w, drop_r, drop_w):
            os.close(fd)


def test_kept_fd_survives_a_real_execv(tmp_path: Path) -> None:
    """A process that restarts through the bus still holds its kept fd after execv
    and sees the startup directory again."""
    script = tmp_path / "restarter.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from procbus import Bus
            b = Bus()
            if os.environ.get("KEPT_FD"):
                fd = int(os.environ["KEPT_FD"])
                print("after exec", os.read(fd, 100).decode(), os.getcwd() == sys.argv[1])
                sys.exit(0)
            r, w = os.pipe()
            os.write(w, b"kept")
            os.environ["KEPT_FD"] = str(r)
            b.keep_fds.add(r)
            b.start()
            os.chdir("/")
            b.restart()
            b.block(interval=0.01)
            """
        )
    )
    result = run_python(str(script), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "after exec kept True"


# -- beyond wspbus ------------------------------------------------------------


def test_subscribe_and_publish_are_thread_safe(bus: Bus) -> None:
    """Threads subscribing and unsubscribing while others publish never see a
    'set changed size during iteration' or a missing priority."""
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn(n: int) -> None:
        callbacks = [lambda: None for _ in range(50)]
        try:
            while not stop.is_set():
                for cb in callbacks:
                    bus.subscribe("ch", cb, priority=n)
                for cb in callbacks:
                    bus.unsubscribe("ch", cb)
        except BaseException as exc:
            errors.append(exc)

    def publish() -> None:
        try:
            for _ in range(2000):
                bus.publish("ch")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(n,)) for n in range(2)]
    publishers = [threading.Thread(target=publish) for _ in range(2)]
    for t in threads + publishers:
        t.start()
    for t in publishers:
        t.join(30)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []


def test_module_singleton_is_a_bus() -> None:
    """``from procbus import bus`` is this process's Bus instance."""
    from procbus import bus as singleton

    assert isinstance(singleton, Bus)
    assert procbus.bus is singleton


def test_reset_after_fork_gives_a_fresh_bus(bus: Bus) -> None:
    """reset_after_fork drops listeners and state but keeps the same object."""
    bus.subscribe("custom", lambda: 1)
    bus.start()
    bus.reset_after_fork()
    assert bus.state is states.STOPPED
    assert bus.publish("custom") == []
    assert set(bus.listeners) == set(BUILTIN_CHANNELS)


def test_exit_while_starting_ends_process_with_70() -> None:
    """exit() called from a start listener (as a Ctrl-C handler would) ends the
    process with status 70 instead of looping, as in wspbus."""
    result = run_code(
        """
        from procbus import Bus
        b = Bus()
        b.subscribe("start", b.exit)
        b.start()
        print("not reached")
        """
    )
    assert result.returncode == 70
    assert "not reached" not in result.stdout
