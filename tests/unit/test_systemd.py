"""sd_notify without libsystemd: payloads, watchdog interval, and never raising;
and the master's plugin that decides what systemd hears, and when.

A fake systemd is a bound AF_UNIX datagram socket, on a path in `tmp_path` or
in the abstract namespace under a random name, that the test reads. The
plugin follows a `HostedMaster`: a real bus, loop and event stream, the
workers' figures set by hand.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from procbus.master.planner import WorkerState
from procbus.master.systemd import Notifier, forget_in_worker
from procbus.plugins.systemd import SystemdNotify
from tests.hosted_master import HostedMaster


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, notify_socket: str) -> None:
        self.notify_socket = notify_socket
        bind_to = "\0" + notify_socket[1:] if notify_socket.startswith("@") else notify_socket
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(bind_to)
        self.sock.settimeout(5)

    def receive(self) -> str:
        """The next datagram (a notify message is delivered before `sendto` returns)."""
        return self.sock.recv(4096).decode()

    def received(self) -> list[str]:
        """Every datagram waiting now, monotonic clock readings replaced by ``N``."""
        self.sock.setblocking(False)
        messages = []
        try:
            while True:
                messages.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(5)
        return [re.sub(r"MONOTONIC_USEC=[0-9]+", "MONOTONIC_USEC=N", m) for m in messages]

    def pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return False
        finally:
            self.sock.settimeout(5)
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeSystemd]:
    """A fake systemd on a socket file, then in the abstract namespace."""
    if request.param == "path":
        fake = FakeSystemd(str(tmp_path / "notify"))
    else:
        fake = FakeSystemd(f"@procbus-test-{uuid.uuid4().hex}")
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def notifier(systemd: FakeSystemd) -> Iterator[Notifier]:
    with Notifier({"NOTIFY_SOCKET": systemd.notify_socket}) as notifier:
        yield notifier


def test_ready_sends_ready_and_optional_status(notifier: Notifier, systemd: FakeSystemd) -> None:
    """Send ``ready()`` then ``ready("4 workers")``.

    Expected: the datagrams ``READY=1`` and ``READY=1\\nSTATUS=4 workers``.
    """
    assert notifier.enabled
    assert notifier.ready()
    assert systemd.receive() == "READY=1"
    assert notifier.ready("4 workers")
    assert systemd.receive() == "READY=1\nSTATUS=4 workers"


def test_each_message_has_its_exact_payload(notifier: Notifier, systemd: FakeSystemd) -> None:
    """Send stopping, status, mainpid and watchdog messages.

    Expected: one datagram each with exactly the sd_notify lines.
    """
    notifier.stopping()
    assert systemd.receive() == "STOPPING=1"
    notifier.stopping("draining 3 workers")
    assert systemd.receive() == "STOPPING=1\nSTATUS=draining 3 workers"
    notifier.status("serving")
    assert systemd.receive() == "STATUS=serving"
    notifier.mainpid(4242)
    assert systemd.receive() == "MAINPID=4242"
    notifier.watchdog()
    assert systemd.receive() == "WATCHDOG=1"


def test_status_text_is_kept_on_one_line(notifier: Notifier, systemd: FakeSystemd) -> None:
    """Send a status with line breaks in it.

    Expected: the breaks become spaces, so no line can pose as another field.
    """
    notifier.status("worker 3 failed:\nREADY=1\r\n")
    assert systemd.receive() == "STATUS=worker 3 failed: READY=1"


def test_reloading_sends_the_monotonic_clock_in_microseconds(
    notifier: Notifier, systemd: FakeSystemd
) -> None:
    """Send ``reloading()`` between two readings of CLOCK_MONOTONIC.

    Expected: ``RELOADING=1\\nMONOTONIC_USEC=N`` with N between the readings;
    a status comes last when given.
    """
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = systemd.receive().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after
    notifier.reloading("rolling restart")
    lines = systemd.receive().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert lines[2] == "STATUS=rolling restart"


@pytest.mark.parametrize(
    ("watchdog", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "OURS"}, 0.25),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "OTHER"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_PID": "OURS"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_for_our_pid_only(
    systemd: FakeSystemd, watchdog: dict[str, str], expected: float | None
) -> None:
    """Build notifiers with WATCHDOG_USEC and WATCHDOG_PID variations.

    Expected: half of WATCHDOG_USEC in seconds when WATCHDOG_PID is unset or
    ours; ``None`` when it names another pid, or the timeout is 0, malformed
    or absent.
    """
    environ = {"NOTIFY_SOCKET": systemd.notify_socket}
    for key, value in watchdog.items():
        environ[key] = value.replace("OURS", str(os.getpid())).replace(
            "OTHER", str(os.getpid() + 1)
        )
    with Notifier(environ) as notifier:
        assert notifier.watchdog_interval == expected


def test_without_notify_socket_every_method_is_a_no_op() -> None:
    """Build a notifier from an environment without NOTIFY_SOCKET (or with it empty).

    Expected: not enabled, no watchdog interval even with WATCHDOG_USEC, every
    method returns ``False`` and opens nothing.
    """
    for environ in ({"WATCHDOG_USEC": "1000000"}, {"NOTIFY_SOCKET": ""}):
        notifier = Notifier(environ)
        assert not notifier.enabled
        assert notifier.watchdog_interval is None
        assert not notifier.ready("x")
        assert not notifier.reloading()
        assert not notifier.stopping()
        assert not notifier.status("x")
        assert not notifier.mainpid(1)
        assert not notifier.watchdog()
        notifier.close()


def test_unsupported_notify_socket_disables_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Build a notifier for a NOTIFY_SOCKET that is neither a path nor @name.

    Expected: disabled, one warning naming the value.
    """
    with caplog.at_level(logging.WARNING, logger="procbus.master"):
        notifier = Notifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.ready()
    assert [r.getMessage() for r in caplog.records] == [
        "NOTIFY_SOCKET='vsock:2:1234' is not a unix socket path or @name; not notifying systemd"
    ]


def test_closed_notifier_sends_nothing(notifier: Notifier, systemd: FakeSystemd) -> None:
    """Close the notifier, then send.

    Expected: disabled, ``False``, nothing received; closing twice is fine.
    """
    notifier.close()
    assert not notifier.enabled
    assert not notifier.ready()
    assert not systemd.pending()
    notifier.close()


def test_gone_systemd_never_raises_and_is_logged_once_per_outage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Send while systemd's socket is gone (twice), after it is back, and
    after it is gone again.

    Expected: no exception; sends return ``False`` while it is gone; one
    warning for the first outage, an info when it works again, one warning
    for the second outage.
    """
    path = tmp_path / "notify"
    with (
        caplog.at_level(logging.INFO, logger="procbus.master"),
        Notifier({"NOTIFY_SOCKET": str(path)}) as notifier,
    ):
        assert not notifier.ready()
        assert not notifier.watchdog()
        fake = FakeSystemd(str(path))
        try:
            assert notifier.watchdog()
            assert fake.receive() == "WATCHDOG=1"
        finally:
            fake.close()
            path.unlink()
        assert not notifier.stopping()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            f"cannot notify systemd on {path}: No such file or directory"
            " (not logged again until it works)",
        ),
        (logging.INFO, f"notifying systemd on {path} works again"),
        (
            logging.WARNING,
            f"cannot notify systemd on {path}: No such file or directory"
            " (not logged again until it works)",
        ),
    ]


def test_full_systemd_queue_does_not_block(notifier: Notifier, systemd: FakeSystemd) -> None:
    """Ping the watchdog many times while nobody reads the socket.

    Expected: every call returns at once; once the receive queue is full the
    sends fail (``False``) instead of blocking; what was queued arrives.
    """
    results = [notifier.watchdog() for _ in range(10_000)]
    assert results[0]
    assert not results[-1]
    assert systemd.receive() == "WATCHDOG=1"


def test_worker_forgets_the_notify_and_watchdog_variables_and_nothing_else() -> None:
    """Apply forget_in_worker to an environment with the three systemd variables
    and others; then to one that has none of them.

    Expected: NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID are gone, every
    other variable is untouched, and a missing variable is no error.
    """
    environ = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "42",
        "LANG": "C.UTF-8",
        "PATH": "/usr/bin",
    }
    forget_in_worker(environ)
    assert environ == {"LANG": "C.UTF-8", "PATH": "/usr/bin"}
    forget_in_worker(environ)
    assert environ == {"LANG": "C.UTF-8", "PATH": "/usr/bin"}


def test_state_changes_wait_for_room_in_a_full_queue_and_go_in_order(tmp_path: Path) -> None:
    """Steps: a notify socket nobody reads until its queue is full; then READY, a
    watchdog ping and MAINPID; then the reader drains and `retry` runs. Expected: the
    sends fail while full; READY and MAINPID arrive afterwards, in that order; the
    watchdog ping (stale by then) does not."""
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    try:
        with Notifier({"NOTIFY_SOCKET": path}) as notifier:
            filler = 0
            while notifier.status(f"filler {filler}"):
                filler += 1
                assert filler < 100_000
            assert not notifier.ready("up")
            assert not notifier.watchdog()
            assert not notifier.mainpid(4242)
            assert notifier.pending == 2
            while True:
                try:
                    receiver.recv(4096)
                except BlockingIOError:
                    break
            assert notifier.retry()
            received = [receiver.recv(4096).decode() for _ in range(2)]
            assert received == ["READY=1\nSTATUS=up", "MAINPID=4242"]
    finally:
        receiver.close()


# -- SystemdNotify: what the master says, and when -----------------------------


@pytest.fixture
def master() -> Iterator[HostedMaster]:
    hosted = HostedMaster(workers=2)
    try:
        yield hosted
    finally:
        hosted.close()


@pytest.fixture
def notify(master: HostedMaster, systemd: FakeSystemd) -> Iterator[SystemdNotify]:
    plugin = SystemdNotify(master, {"NOTIFY_SOCKET": systemd.notify_socket})
    plugin.subscribe()
    try:
        yield plugin
    finally:
        plugin.unsubscribe()


def test_ready_once_every_worker_runs_then_a_status_line_per_change(
    notify: SystemdNotify, master: HostedMaster, systemd: FakeSystemd
) -> None:
    """Steps: the first worker runs (``ready``); the second; ``ready`` again, and a
    ``scale``; a worker exits (``exit``).

    Expected: nothing until both run; then ``READY=1`` with ``STATUS=2 workers``
    and a status line; afterwards a status line per event, never READY again.
    """
    master.pool.add(WorkerState.RUNNING)
    master.emit("ready", worker=1)
    assert systemd.received() == []
    master.pool.add(WorkerState.RUNNING)
    master.emit("ready", worker=2)
    assert systemd.received() == [
        "READY=1\nSTATUS=2 workers",
        "STATUS=2 of 2 workers running, generation 1",
    ]
    master.emit("ready", worker=2)
    master.pool.target = 3
    master.emit("scale", workers=3)
    master.pool.by_pid[10_001].state = WorkerState.EXITED
    master.emit("exit", worker=1, status=0)
    assert systemd.received() == [
        "STATUS=2 of 2 workers running, generation 1",
        "STATUS=2 of 3 workers running, generation 1",
        "STATUS=1 of 3 workers running, generation 1",
    ]


def test_a_reload_is_reloading_then_ready_and_other_jobs_are_status_only(
    notify: SystemdNotify, master: HostedMaster, systemd: FakeSystemd
) -> None:
    """Steps: the workers run; a reload job starts and ends; a scale job starts and ends.

    Expected: ``RELOADING=1`` with ``MONOTONIC_USEC`` once when the reload starts,
    ``READY=1`` when it is done, then a status line; the scale job gets a status
    line when done and nothing else.
    """
    master.run_workers()
    systemd.received()
    master.emit("job_started", job="reload-1", kind="reload")
    master.emit("job_done", job="reload-1", kind="reload", state="done", error=None)
    master.emit("job_started", job="scale-2", kind="scale")
    master.emit("job_done", job="scale-2", kind="scale", state="done", error=None)
    assert systemd.received() == [
        "RELOADING=1\nMONOTONIC_USEC=N",
        "READY=1",
        "STATUS=2 of 2 workers running, generation 1",
        "STATUS=2 of 2 workers running, generation 1",
    ]


def test_stopping_on_the_bus_exit_but_not_on_its_stop(
    notify: SystemdNotify, master: HostedMaster, systemd: FakeSystemd
) -> None:
    """Steps: the workers run; publish ``stop`` (``ctl stop``: the master stays up),
    then ``exit``.

    Expected: nothing on stop; ``STOPPING=1`` on exit.
    """
    master.run_workers()
    systemd.received()
    master.bus.publish("stop")
    assert systemd.received() == []
    master.bus.publish("exit")
    assert systemd.received() == ["STOPPING=1"]


def test_a_master_that_handed_over_exits_without_stopping(
    notify: SystemdNotify, master: HostedMaster, systemd: FakeSystemd
) -> None:
    """Steps: the workers run; the master hands the tree over to a successor
    (``upgraded_to``); publish ``exit``.

    Expected: nothing: the service goes on in the new master.
    """
    master.run_workers()
    systemd.received()
    master.lineage.upgraded_to = 4242
    master.bus.publish("exit")
    assert systemd.received() == []


@pytest.mark.parametrize("exits_bus", [True, False], ids=["drained", "adopt"])
def test_a_re_exec_is_reloading_once_and_never_stopping(
    notify: SystemdNotify, master: HostedMaster, systemd: FakeSystemd, exits_bus: bool
) -> None:
    """Steps: the workers run; a restart job that fails (the exec would not work)
    ends; then one that succeeds (``exec_requested``); the bus exits (drained
    workers) or not (``--adopt``).

    Expected: the failed restart is a status line only; the successful one a
    status line, then ``RELOADING=1`` with ``STATUS=re-executing``; no
    ``STOPPING`` either way.
    """
    master.run_workers()
    systemd.received()
    master.emit("job_done", job="restart-1", kind="restart", state="failed", error="gone")
    assert systemd.received() == ["STATUS=2 of 2 workers running, generation 1"]
    master.lineage.exec_requested = True
    master.emit("job_done", job="restart-2", kind="restart", state="done", error=None)
    if exits_bus:
        master.bus.publish("exit")
    assert systemd.received() == [
        "STATUS=2 of 2 workers running, generation 1",
        "RELOADING=1\nMONOTONIC_USEC=N\nSTATUS=re-executing",
    ]


def test_a_successor_says_ready_only_when_it_takes_over_and_owns_the_watchdog(
    master: HostedMaster, systemd: FakeSystemd
) -> None:
    """Steps: a master started by an upgrade (``successor``) with the old master's
    pid in WATCHDOG_PID builds the plugin; its workers all run; it takes over.

    Expected: WATCHDOG_PID is now our pid (and the plugin pings); no READY at
    boot, only the status line; at takeover ``MAINPID=`` our pid, then ``READY=1``
    naming the generation.
    """
    master.lineage.successor = object()
    environ = {
        "NOTIFY_SOCKET": systemd.notify_socket,
        "WATCHDOG_USEC": "2000000",
        "WATCHDOG_PID": str(os.getppid()),
    }
    plugin = SystemdNotify(master, environ)
    plugin.subscribe()
    try:
        assert environ["WATCHDOG_PID"] == str(os.getpid())
        assert plugin.notifier.watchdog_interval == 1.0
        master.run_workers()
        assert systemd.received() == ["STATUS=2 of 2 workers running, generation 1"]
        master.generation = 2
        master.emit("takeover", pid=os.getpid(), generation=2)
        assert systemd.received() == [
            f"MAINPID={os.getpid()}",
            "READY=1\nSTATUS=took over, generation 2",
        ]
    finally:
        plugin.unsubscribe()


def test_watchdog_pings_while_a_worker_heartbeats_or_none_is_wanted(
    master: HostedMaster, systemd: FakeSystemd
) -> None:
    """Steps: WATCHDOG_USEC=2 s (a ping every second); the bus starts (twice, as
    ``ctl start`` after ``ctl stop`` does); the workers run and heartbeat; the
    clock moves 1 s; then 2 s more without heartbeats; then the pool wants no
    worker; one worker heartbeats again.

    Expected: one ping for the first second (the second start added no timer);
    none while every heartbeat is two intervals old; one when no worker is
    wanted; one when a worker heartbeats again.
    """
    environ = {"NOTIFY_SOCKET": systemd.notify_socket, "WATCHDOG_USEC": "2000000"}
    plugin = SystemdNotify(master, environ)
    plugin.subscribe()
    try:
        master.bus.publish("start")
        master.bus.publish("start")
        master.run_workers()
        systemd.received()
        master.advance(1.0)
        assert systemd.received() == ["WATCHDOG=1"]
        master.advance(1.0)
        master.advance(1.0)
        assert systemd.received() == []
        master.pool.target = 0
        master.advance(1.0)
        assert systemd.received() == ["WATCHDOG=1"]
        master.pool.target = 2
        master.pool.by_pid[10_002].last_heartbeat = master.clock.now
        master.advance(1.0)
        assert systemd.received() == ["WATCHDOG=1"]
    finally:
        plugin.unsubscribe()


def test_unsubscribed_plugin_says_nothing_more(master: HostedMaster, systemd: FakeSystemd) -> None:
    """Steps: subscribe the plugin, start the bus (the timers), unsubscribe it;
    then the workers run, the clock moves past a watchdog interval, the bus exits.

    Expected: no message at all, no listener of it left on the bus, no observer
    on the event stream, the socket closed.
    """
    environ = {"NOTIFY_SOCKET": systemd.notify_socket, "WATCHDOG_USEC": "2000000"}
    plugin = SystemdNotify(master, environ)
    plugin.subscribe()
    master.bus.publish("start")
    plugin.unsubscribe()
    master.run_workers()
    master.advance(2.0)
    master.bus.publish("exit")
    assert systemd.received() == []
    assert not any(master.bus.listeners.values())
    assert master.event_stream.observers == []
    assert not plugin.notifier.enabled


def test_state_changes_that_found_the_queue_full_are_retried_from_the_loop(
    master: HostedMaster, tmp_path: Path
) -> None:
    """Steps: a notify socket nobody reads until its queue is full; the bus starts;
    the workers run (READY cannot go); the reader drains; the clock moves 0.2 s.

    Expected: READY arrives from the loop's retry timer, without a new event.
    """
    path = str(tmp_path / "notify")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    plugin = SystemdNotify(master, {"NOTIFY_SOCKET": path})
    plugin.subscribe()
    try:
        master.bus.publish("start")
        filler = 0
        while plugin.notifier.status(f"filler {filler}"):
            filler += 1
            assert filler < 100_000
        master.run_workers()
        assert plugin.notifier.pending == 1
        while True:
            try:
                receiver.recv(4096)
            except BlockingIOError:
                break
        master.advance(0.2)
        assert receiver.recv(4096).decode() == "READY=1\nSTATUS=2 workers"
        assert plugin.notifier.pending == 0
    finally:
        plugin.unsubscribe()
        receiver.close()
