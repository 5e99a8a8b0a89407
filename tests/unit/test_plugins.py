"""Unit tests of `procbus.plugins`, the CherryPy-compatible bus plugins.

Each test uses its own `Bus`. Real signals go to this process, with handlers
that cannot end it; fork, setuid and daemonizing happen only in child
processes. The autouse fixture restores signal handlers and fails a test that
leaves a thread running.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from procbus import Bus, ProcbusError, states
from procbus.errors import ConfigError, StartupError
from procbus.plugins import (
    Autoreloader,
    BackgroundTask,
    Daemonizer,
    DropPrivileges,
    Monitor,
    PerpetualTimer,
    PIDFile,
    SignalHandler,
    SimplePlugin,
    ThreadManager,
)
from procbus.plugins.process import MasterPIDFile
from tests.helpers import wait_until
from tests.hosted_master import HostedMaster
from tests.processes import run_to_end

TOUCHED_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
Logs = list[tuple[str, int]]


@pytest.fixture(autouse=True)
def _leaves_nothing_behind() -> Iterator[None]:
    threads_before = set(threading.enumerate())
    handlers_before = {signum: signal.getsignal(signum) for signum in TOUCHED_SIGNALS}
    yield
    for signum, handler in handlers_before.items():
        if handler is not None:
            signal.signal(signum, handler)
    leftover = [t for t in threading.enumerate() if t not in threads_before]
    assert not leftover, f"test left threads running: {leftover}"


@pytest.fixture
def bus() -> Bus:
    return Bus()


@pytest.fixture
def logs(bus: Bus) -> Logs:
    records: Logs = []
    bus.subscribe("log", lambda msg, level=20: records.append((msg, level)))
    return records


def messages(logs: Logs) -> list[str]:
    return [msg for msg, _ in logs]


class Recorder:
    """A listener that records the arguments of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


def run_script(path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    path.write_text(textwrap.dedent(source))
    return run_to_end([sys.executable, str(path), *args], timeout=20)


def is_running(pid: int) -> bool:
    """Return whether `pid` runs (a zombie nobody reaped does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_processes_running(script: Path) -> None:
    """Kill, by pid, any process still running `script` (unique to one test)."""
    for proc in psutil.process_iter(["cmdline"]):
        if str(script) in (proc.info["cmdline"] or []) and is_running(proc.pid):
            proc.kill()


def dead_pid() -> int:
    """Return the pid of a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait(timeout=10)
    return child.pid


def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")


# -- SimplePlugin -------------------------------------------------------------


class _Probe(SimplePlugin):
    graceful = 5  # not callable: must be skipped

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus)
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")

    def reload(self) -> None:
        self.calls.append("reload")

    def helper(self) -> None:
        self.calls.append("helper")


def test_simple_plugin_subscribes_methods_named_after_channels(bus: Bus) -> None:
    """Steps: add a custom ``reload`` channel, subscribe a plugin with ``start``,
    ``reload``, ``helper`` methods and a non-callable ``graceful``; publish.
    Expected: ``start`` and ``reload`` run; no ``helper`` channel appears and
    ``graceful`` has no listener."""
    bus.listeners.setdefault("reload", set())
    probe = _Probe(bus)
    probe.subscribe()
    bus.publish("start")
    bus.publish("reload")
    assert probe.calls == ["start", "reload"]
    assert "helper" not in bus.listeners
    assert bus.listeners["graceful"] == set()


def test_simple_plugin_unsubscribe_removes_its_methods(bus: Bus) -> None:
    """Steps: subscribe a plugin, unsubscribe it, publish ``start``.
    Expected: the plugin's method does not run; the channel is empty."""
    probe = _Probe(bus)
    probe.subscribe()
    probe.unsubscribe()
    bus.publish("start")
    assert probe.calls == []
    assert bus.listeners["start"] == set()


@pytest.mark.parametrize(
    ("make", "priority"),
    [
        (Daemonizer, 65),
        (lambda bus: PIDFile(bus, "unused.pid"), 70),
        (lambda bus: Monitor(bus, lambda: None), 70),
        (Autoreloader, 70),
        (DropPrivileges, 77),
    ],
)
def test_start_listeners_run_in_cherrypy_priority_order(
    bus: Bus, make: Callable[[Bus], SimplePlugin], priority: int
) -> None:
    """Steps: subscribe the plugin and listeners at priorities one below and
    one above its own; publish ``start``.
    Expected: the plugin's ``start`` carries CherryPy's priority and runs
    between the two."""
    plugin = make(bus)
    order: list[str] = []
    bus.subscribe("start", lambda: order.append("before"), priority=priority - 1)
    bus.subscribe("start", lambda: order.append("after"), priority=priority + 1)
    start = getattr(plugin, "start")  # noqa: B009 - SimplePlugin declares no start
    assert start.priority == priority
    bus.subscribe("start", lambda: order.append("plugin"), priority=start.priority)
    bus.publish("start")
    assert order == ["before", "plugin", "after"]


# -- SignalHandler ------------------------------------------------------------


def test_signal_handler_defaults_exit_restart_and_graceful(bus: Bus) -> None:
    """Steps: build a SignalHandler.
    Expected: SIGTERM -> bus.exit, SIGHUP -> handle_SIGHUP, SIGUSR1 -> bus.graceful;
    `signals` maps numbers to canonical names."""
    handler = SignalHandler(bus)
    assert handler.handlers == {
        "SIGTERM": bus.exit,
        "SIGHUP": handler.handle_SIGHUP,
        "SIGUSR1": bus.graceful,
    }
    assert handler.signals[signal.SIGTERM] == "SIGTERM"
    assert handler.signals[signal.SIGABRT] == "SIGABRT"


@pytest.mark.parametrize("bad", ["SIGNOPE", "SIG_DFL", "getsignal", "", 0, 99999])
def test_set_handler_rejects_unknown_signal(bus: Bus, bad: str | int) -> None:
    """Steps: set a handler for an unknown signal name or number.
    Expected: ValueError naming it, and no listener subscribed."""
    handler = SignalHandler(bus)
    with pytest.raises(ValueError, match="No such signal"):
        handler.set_handler(bad, Recorder())
    assert set(bus.listeners) == {"start", "stop", "exit", "graceful", "log", "main"}


def test_set_handler_for_uncatchable_signal_raises_value_error(bus: Bus) -> None:
    """Steps: set a handler for SIGKILL.
    Expected: ValueError (so `subscribe` skips it like an unknown signal)."""
    with pytest.raises(ValueError, match="SIGKILL"):
        SignalHandler(bus).set_handler(signal.SIGKILL)


@pytest.mark.parametrize("sig", ["SIGUSR2", signal.SIGUSR2, int(signal.SIGUSR2)])
def test_real_signal_publishes_on_channel_named_after_it(
    bus: Bus, logs: Logs, sig: str | int
) -> None:
    """Steps: set_handler(SIGUSR2 by name or number, recorder); send SIGUSR2 to
    this process.
    Expected: "Listening for SIGUSR2." and "Caught signal SIGUSR2." logged and
    the recorder subscribed to channel ``SIGUSR2`` runs once."""
    handler = SignalHandler(bus)
    recorder = Recorder()
    handler.set_handler(sig, recorder)
    assert signal.getsignal(signal.SIGUSR2) == handler._handle_signal
    os.kill(os.getpid(), signal.SIGUSR2)
    wait_until(lambda: recorder.calls)
    assert recorder.calls == [()]
    assert "Listening for SIGUSR2." in messages(logs)
    assert "Caught signal SIGUSR2." in messages(logs)
    handler.unsubscribe()


def test_sigusr1_publishes_graceful_by_default(bus: Bus, logs: Logs) -> None:
    """Steps: subscribe the default handlers; send SIGUSR1.
    Expected: the bus publishes ``graceful``; the bus keeps running."""
    graceful = Recorder()
    bus.subscribe("graceful", graceful)
    handler = SignalHandler(bus)
    handler.subscribe()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: graceful.calls)
    finally:
        handler.unsubscribe()
    assert "Caught signal SIGUSR1." in messages(logs)
    assert bus.state is states.STOPPED


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_foreground_sighup_exit_the_bus(bus: Bus, signum: int) -> None:
    """Steps: subscribe the default handlers of a stopped bus; send SIGTERM or
    SIGHUP (the process is not daemonized).
    Expected: the bus publishes ``exit`` and ends EXITING, without re-exec."""
    exited = Recorder()
    bus.subscribe("exit", exited)
    handler = SignalHandler(bus)
    handler.subscribe()
    try:
        # Without our handler the signal would end the test process.
        assert signal.getsignal(signum) == handler._handle_signal
        os.kill(os.getpid(), signum)
        wait_until(lambda: exited.calls)
    finally:
        handler.unsubscribe()
    assert bus.state is states.EXITING
    assert bus.execv is False


@pytest.mark.parametrize(("stdin_kind", "restarts"), [("devnull", True), ("tty", False)])
def test_sighup_restarts_only_when_forked_and_without_tty(
    bus: Bus, stdin_kind: str, restarts: bool
) -> None:
    """Steps: build a SignalHandler; fork; in the child, point stdin at
    /dev/null or at a pseudo-terminal and call handle_SIGHUP; report the
    child's bus state through a pipe.
    Expected: with no tty the child's bus restarts (execv set); with a tty it
    only exits."""
    handler = SignalHandler(bus)
    master, slave = os.openpty()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        status = 1
        try:
            stdin_fd = slave if stdin_kind == "tty" else os.open(os.devnull, os.O_RDONLY)
            sys.stdin = open(stdin_fd, closefd=False)  # noqa: SIM115
            handler.handle_SIGHUP()
            os.write(write_end, f"{bus.state.name} {bus.execv}".encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        report = os.read(read_end, 100).decode()
        _, wait_status = os.waitpid(pid, 0)
    finally:
        for fd in (read_end, master, slave):
            os.close(fd)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert report == f"EXITING {restarts}"
    assert bus.state is states.STOPPED  # the parent's bus is untouched


def test_handlers_can_be_replaced_before_subscribe(bus: Bus) -> None:
    """Steps: replace `handlers` with {"SIGUSR2": recorder}; subscribe; send
    SIGUSR2.
    Expected: only SIGUSR2 gets our handler (SIGTERM keeps its own) and the
    recorder runs."""
    term_before = signal.getsignal(signal.SIGTERM)
    handler = SignalHandler(bus)
    recorder = Recorder()
    handler.handlers = {"SIGUSR2": recorder}
    handler.subscribe()
    try:
        assert signal.getsignal(signal.SIGTERM) == term_before
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_until(lambda: recorder.calls)
    finally:
        handler.unsubscribe()


def test_unsubscribe_restores_previous_handlers_and_listeners(bus: Bus, logs: Logs) -> None:
    """Steps: install a Python handler for SIGUSR1 and SIG_IGN for SIGUSR2;
    subscribe a SignalHandler for both (twice); unsubscribe.
    Expected: the previous handlers are back, with CherryPy's "Restoring"
    lines; the channel listeners are gone."""

    def previous(signum: int, frame: types.FrameType | None) -> None:
        pass

    signal.signal(signal.SIGUSR1, previous)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    handler = SignalHandler(bus)
    recorder = Recorder()
    handler.handlers = {"SIGUSR1": recorder, "SIGUSR2": recorder}
    handler.subscribe()
    handler.subscribe()
    handler.unsubscribe()
    assert signal.getsignal(signal.SIGUSR1) is previous
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
    assert f"Restoring SIGUSR1 handler {previous!r}." in messages(logs)
    assert f"Restoring SIGUSR2 handler {signal.SIG_IGN!r}." in messages(logs)
    assert not [level for _, level in logs if level >= 30]
    assert bus.listeners["SIGUSR1"] == set()
    assert bus.listeners["SIGUSR2"] == set()


def test_unsubscribe_restores_sig_dfl_when_previous_handler_unknown(bus: Bus, logs: Logs) -> None:
    """Steps: subscribe for SIGUSR2; mark its previous handler as None (what
    `signal.signal` returns for a handler installed outside Python); unsubscribe.
    Expected: "Restoring SIGUSR2 handler to SIG_DFL." and SIG_DFL installed."""
    handler = SignalHandler(bus)
    handler.handlers = {"SIGUSR2": Recorder()}
    handler.subscribe()
    handler._previous_handlers[signal.SIGUSR2] = None
    handler.unsubscribe()
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    assert "Restoring SIGUSR2 handler to SIG_DFL." in messages(logs)


def test_unsubscribe_warns_when_our_handler_was_replaced(bus: Bus, logs: Logs) -> None:
    """Steps: subscribe for SIGUSR2; another component installs SIG_IGN;
    unsubscribe.
    Expected: the previous handler is restored and a warning says ours was
    not registered."""
    previous = signal.getsignal(signal.SIGUSR2)
    handler = SignalHandler(bus)
    handler.handlers = {"SIGUSR2": Recorder()}
    handler.subscribe()
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    handler.unsubscribe()
    assert signal.getsignal(signal.SIGUSR2) == previous
    assert (
        f"Restored old SIGUSR2 handler {previous!r}, but our handler was not registered.",
        30,
    ) in logs


def test_signal_handler_outside_main_thread(bus: Bus, logs: Logs) -> None:
    """Steps: subscribe from another thread; subscribe from the main thread;
    unsubscribe from another thread; unsubscribe from the main thread.
    Expected: the first subscribe installs nothing and raises nothing; the
    threaded unsubscribe logs an error and keeps the handler to restore; the
    main-thread unsubscribe restores it."""
    previous = signal.getsignal(signal.SIGUSR2)
    handler = SignalHandler(bus)
    handler.handlers = {"SIGUSR2": Recorder()}

    def in_thread(func: Callable[[], None]) -> None:
        thread = threading.Thread(target=func)
        thread.start()
        thread.join(timeout=5)

    in_thread(handler.subscribe)
    assert signal.getsignal(signal.SIGUSR2) == previous
    handler.subscribe()
    in_thread(handler.unsubscribe)
    assert signal.getsignal(signal.SIGUSR2) == handler._handle_signal
    assert any(m.startswith("Unable to restore SIGUSR2") and lv == 40 for m, lv in logs)
    handler.unsubscribe()
    assert signal.getsignal(signal.SIGUSR2) == previous


# -- PIDFile ------------------------------------------------------------------


def test_pidfile_written_on_start_and_removed_on_exit(
    bus: Bus, logs: Logs, tmp_path: Path
) -> None:
    """Steps: start a PIDFile; start it again; exit.
    Expected: the file holds "<pid>\\n" with mode 0o644; the second start only
    logs; exit removes the file; CherryPy's log lines."""
    path = str(tmp_path / "app.pid")
    plugin = PIDFile(bus, path)
    pid = os.getpid()
    plugin.start()
    assert Path(path).read_text() == f"{pid}\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    plugin.start()
    plugin.exit()
    assert not os.path.exists(path)
    assert messages(logs) == [
        f"PID {pid!r} written to {path!r}.",
        f"PID {pid!r} already written to {path!r}.",
        f"PID file removed: {path!r}.",
    ]


def test_pidfile_is_replaced_by_rename(bus: Bus, tmp_path: Path) -> None:
    """Steps: create a stale pidfile; start.
    Expected: the file is a new inode (written beside and renamed, never
    rewritten in place) and no temporary file is left."""
    path = tmp_path / "app.pid"
    path.write_text(f"{dead_pid()}\n")
    inode = path.stat().st_ino
    PIDFile(bus, path).start()
    assert path.stat().st_ino != inode
    assert path.read_text() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == ["app.pid"]


def test_pidfile_of_live_process_is_refused(bus: Bus, tmp_path: Path) -> None:
    """Steps: write our parent's pid (alive, not ours) into the pidfile; start.
    Expected: StartupError, one line naming the file and the pid; file untouched."""
    path = tmp_path / "app.pid"
    other = os.getppid()
    path.write_text(f"{other}\n")
    with pytest.raises(StartupError) as caught:
        PIDFile(bus, path).start()
    message = str(caught.value)
    assert "\n" not in message
    assert repr(str(path)) in message
    assert str(other) in message
    assert path.read_text() == f"{other}\n"


def test_pidfile_of_live_process_fails_bus_start_and_is_kept(tmp_path: Path) -> None:
    """Steps: in a child process, subscribe a PIDFile whose file holds this
    (live) test process's pid, and start the bus.
    Expected: the start fails and the child exits unsuccessfully, the error
    names the file and pid, and the exit listener leaves the file."""
    path = tmp_path / "app.pid"
    path.write_text(f"{os.getpid()}\n")
    result = run_script(
        tmp_path / "start.py",
        """
        import sys
        from procbus import Bus
        from procbus.plugins import PIDFile
        bus = Bus()
        PIDFile(bus, sys.argv[1]).subscribe()
        bus.start()
        print("started")
        """,
        str(path),
    )
    assert result.returncode != 0, result.stderr
    assert "started" not in result.stdout
    assert f"pidfile {str(path)!r} belongs to running process {os.getpid()}" in result.stderr
    assert path.read_text() == f"{os.getpid()}\n"


def test_pidfile_of_dead_process_is_replaced(bus: Bus, logs: Logs, tmp_path: Path) -> None:
    """Steps: write the pid of a reaped child into the pidfile; start.
    Expected: the file now holds our pid and a line reports the stale file."""
    path = tmp_path / "app.pid"
    stale = dead_pid()
    path.write_text(f"{stale}\n")
    PIDFile(bus, path).start()
    assert path.read_text() == f"{os.getpid()}\n"
    assert f"Replacing stale PID file {str(path)!r} (PID {stale} is not running)." in messages(
        logs
    )


@pytest.mark.parametrize("content", ["", "garbage\n", "0\n", "-1\n", "12abc\n", "1_0\n"])
def test_pidfile_without_a_pid_is_replaced(
    bus: Bus, logs: Logs, tmp_path: Path, content: str
) -> None:
    """Steps: write content that is not a positive pid (0 and -1 would address
    process groups); start.
    Expected: the file now holds our pid and a line reports the old content."""
    path = tmp_path / "app.pid"
    path.write_text(content)
    PIDFile(bus, path).start()
    assert path.read_text() == f"{os.getpid()}\n"
    assert f"Replacing PID file {str(path)!r} holding no PID ({content!r})." in messages(logs)


def test_pidfile_holding_our_own_pid_is_rewritten(bus: Bus, logs: Logs, tmp_path: Path) -> None:
    """Steps: write our own pid (as after a re-exec, which keeps the pid); start.
    Expected: written without a stale or refusal message."""
    path = tmp_path / "app.pid"
    path.write_text(f"{os.getpid()}\n")
    PIDFile(bus, path).start()
    assert path.read_text() == f"{os.getpid()}\n"
    assert messages(logs) == [f"PID {os.getpid()} written to {str(path)!r}."]


def test_pidfile_in_missing_directory_fails_with_one_line(bus: Bus, tmp_path: Path) -> None:
    """Steps: start a PIDFile under a directory that does not exist.
    Expected: StartupError "cannot write pidfile '...': directory '...' does not
    exist"."""
    path = tmp_path / "missing" / "app.pid"
    with pytest.raises(StartupError) as caught:
        PIDFile(bus, str(path)).start()
    assert str(caught.value) == (
        f"cannot write pidfile {str(path)!r}: directory {str(path.parent)!r} does not exist"
    )


def test_pidfile_under_a_regular_file_fails_with_one_line(bus: Bus, tmp_path: Path) -> None:
    """Steps: start a PIDFile whose directory is a regular file.
    Expected: StartupError saying it is not a directory."""
    parent = tmp_path / "file"
    parent.write_text("")
    path = parent / "app.pid"
    with pytest.raises(StartupError) as caught:
        PIDFile(bus, path).start()
    assert str(caught.value) == (
        f"cannot write pidfile {str(path)!r}: {str(parent)!r} is not a directory"
    )


def test_pidfile_that_is_a_directory_fails_with_one_line(bus: Bus, tmp_path: Path) -> None:
    """Steps: start a PIDFile whose path is a directory.
    Expected: a one-line StartupError naming it; nothing left beside it."""
    path = tmp_path / "app.pid"
    path.mkdir()
    with pytest.raises(StartupError, match="cannot read pidfile") as caught:
        PIDFile(bus, path).start()
    assert "\n" not in str(caught.value)
    assert os.listdir(tmp_path) == ["app.pid"]


def test_pidfile_in_unwritable_directory_fails_with_one_line(tmp_path: Path) -> None:
    """Steps: in a child process running as an unprivileged user (nobody when
    we are root), start a PIDFile in '/'.
    Expected: StartupError "cannot write pidfile '/...': directory '/' is not
    writable (Permission denied)"; no file created."""
    path = f"/procbus-test-{uuid.uuid4().hex}.pid"
    result = run_script(
        tmp_path / "unwritable.py",
        """
        import os, pwd, sys
        from procbus import Bus
        from procbus.errors import StartupError
        from procbus.plugins import PIDFile
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.setgid(nobody.pw_gid)
            os.setgroups([])
            os.setuid(nobody.pw_uid)
        try:
            PIDFile(Bus(), sys.argv[1]).start()
        except StartupError as exc:
            print(exc)
            sys.exit(3)
        """,
        path,
    )
    assert not os.path.exists(path)
    assert result.returncode == 3, result.stderr
    assert result.stdout == (
        f"cannot write pidfile {path!r}: directory '/' is not writable (Permission denied)\n"
    )


def test_pidfile_exit_keeps_file_holding_another_pid(bus: Bus, logs: Logs, tmp_path: Path) -> None:
    """Steps: start; another process rewrites the file with its pid; exit.
    Expected: the file is kept and a warning says why."""
    path = tmp_path / "app.pid"
    plugin = PIDFile(bus, path)
    plugin.start()
    path.write_text("1\n")
    plugin.exit()
    assert path.read_text() == "1\n"
    assert (
        f"PID file {str(path)!r} holds '1\\n', not our PID {os.getpid()}; leaving it.",
        30,
    ) in logs


def test_pidfile_exit_without_file_does_nothing(bus: Bus, logs: Logs, tmp_path: Path) -> None:
    """Steps: exit a PIDFile whose file was never written.
    Expected: no error and nothing logged."""
    PIDFile(bus, tmp_path / "app.pid").exit()
    assert logs == []


# -- MasterPIDFile (procbus run --pidfile) -------------------------------------


@pytest.fixture
def master(bus: Bus) -> Iterator[HostedMaster]:
    hosted = HostedMaster(bus=bus)
    try:
        yield hosted
    finally:
        hosted.close()


def test_master_pidfile_is_written_when_subscribed_before_the_bus_starts(
    bus: Bus, master: HostedMaster, tmp_path: Path
) -> None:
    """Steps: the master's own start listener (priority 70, subscribed first, as
    the Master does when built) records what it finds; subscribe a MasterPIDFile;
    publish start, then exit.
    Expected: the file holds our pid as soon as it is subscribed, so before the
    master's start listener forks anything; exit removes it."""
    path = tmp_path / "master.pid"
    seen: list[str | None] = []
    bus.subscribe(
        "start", lambda: seen.append(path.read_text() if path.exists() else None), priority=70
    )
    MasterPIDFile(master, path).subscribe()
    assert path.read_text() == f"{os.getpid()}\n"
    bus.publish("start")
    assert seen == [f"{os.getpid()}\n"]
    bus.publish("exit")
    assert not path.exists()


def test_master_pidfile_of_a_live_instance_is_refused_and_stays_off_the_bus(
    bus: Bus, logs: Logs, master: HostedMaster, tmp_path: Path
) -> None:
    """Steps: the file holds our parent's pid (alive, not ours); subscribe a
    MasterPIDFile; publish exit.
    Expected: StartupError on subscribe, one line naming the file and the pid;
    no listener of it on the bus, so the exit leaves the file and logs nothing
    about it."""
    path = tmp_path / "master.pid"
    other = os.getppid()
    path.write_text(f"{other}\n")
    with pytest.raises(StartupError, match=f"belongs to running process {other}") as caught:
        MasterPIDFile(master, path).subscribe()
    assert "\n" not in str(caught.value)
    assert bus.listeners["start"] == bus.listeners["exit"] == set()
    bus.publish("exit")
    assert path.read_text() == f"{other}\n"
    assert not any("PID" in message for message in messages(logs))


def test_successor_writes_the_master_pidfile_when_it_takes_over(
    bus: Bus, logs: Logs, master: HostedMaster, tmp_path: Path
) -> None:
    """Steps: the file holds the old master's pid (our parent, alive); a master
    started by an upgrade subscribes a MasterPIDFile; its workers run; the old
    master exits (its own exit listener removes the file); the new one takes
    over (``takeover``); publish exit.
    Expected: the old master's pid stays while the new one boots; ours after the
    takeover; exit removes it; the plugin then follows the event stream no more."""
    path = tmp_path / "master.pid"
    path.write_text(f"{os.getppid()}\n")
    master.lineage.successor = object()
    plugin = MasterPIDFile(master, path)
    plugin.subscribe()
    master.run_workers()
    assert path.read_text() == f"{os.getppid()}\n"
    path.unlink()
    master.emit("takeover", pid=os.getpid(), generation=2)
    assert path.read_text() == f"{os.getpid()}\n"
    bus.publish("exit")
    assert not path.exists()
    plugin.unsubscribe()
    assert master.event_stream.observers == []
    assert f"PID {os.getpid()!r} written to {str(path)!r}." in messages(logs)


def test_successor_that_never_took_over_leaves_the_master_pidfile_alone(
    bus: Bus, logs: Logs, master: HostedMaster, tmp_path: Path
) -> None:
    """Steps: the file holds a pid that is not running (the old master's, say,
    killed); a master started by an upgrade subscribes a MasterPIDFile, its
    workers run (``ready`` events), and it exits before any takeover.
    Expected: the file is untouched (only the takeover makes it ours, even over
    a stale pid); nothing logged about it."""
    path = tmp_path / "master.pid"
    stale = dead_pid()
    path.write_text(f"{stale}\n")
    master.lineage.successor = object()
    plugin = MasterPIDFile(master, path)
    plugin.subscribe()
    master.run_workers()
    bus.publish("exit")
    plugin.unsubscribe()
    assert path.read_text() == f"{stale}\n"
    assert not any("PID" in message for message in messages(logs))


# -- Daemonizer ---------------------------------------------------------------

DAEMON_SCRIPT = """
import json, os, sys
from procbus import Bus
from procbus.plugins import Daemonizer

report, output = sys.argv[1], sys.argv[2]
bus = Bus()
logs = []
bus.subscribe("log", lambda msg, level=20: logs.append(msg))
options = {} if output == "-" else {"stdout": output, "stderr": output}
daemonizer = Daemonizer(bus, **options)
daemonizer.subscribe()
bus.start()
pid = os.getpid()
daemonizer.start()
print("to stdout", flush=True)
print("to stderr", file=sys.stderr, flush=True)
info = {
    "pid": pid,
    "pid_after_second_start": os.getpid(),
    "sid": os.getsid(0),
    "pgid": os.getpgid(0),
    "umask": os.umask(0o022),
    "stdio": [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)],
    "logs": logs,
}
with open(report + ".tmp", "w") as file:
    json.dump(info, file)
os.replace(report + ".tmp", report)
bus.exit()
"""


@pytest.mark.parametrize("to_file", [False, True], ids=["devnull", "file"])
def test_daemonizer_detaches_into_new_session(tmp_path: Path, to_file: bool) -> None:
    """Steps: a child script subscribes a Daemonizer (stdout/stderr default or
    a file), starts its bus, starts the Daemonizer again, and writes a report.
    Expected: the launched process exits 0 at once; the daemon has another pid,
    a new session of which it is not the leader, umask 0, stdin /dev/null and
    stdout/stderr on /dev/null or the file; the second start only logs; the
    daemon ends by itself."""
    script = tmp_path / "daemon.py"
    report = tmp_path / "report.json"
    output = tmp_path / "out.log"
    script.write_text(DAEMON_SCRIPT)
    try:
        launched = subprocess.Popen(
            [sys.executable, str(script), str(report), str(output) if to_file else "-"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _, stderr = launched.communicate(timeout=20)
        assert launched.returncode == 0, stderr
        wait_until(report.exists)
        info = json.loads(report.read_text())
        wait_until(lambda: not is_running(info["pid"]))
    finally:
        kill_processes_running(script)
    pid = info["pid"]
    assert pid != launched.pid
    assert info["sid"] != launched.pid
    assert info["pid_after_second_start"] == pid
    assert info["sid"] not in (os.getsid(0), pid)
    assert info["pgid"] == info["sid"]
    assert info["umask"] == 0
    sink = str(output) if to_file else "/dev/null"
    assert info["stdio"] == ["/dev/null", sink, sink]
    assert f"Daemonized to PID: {pid}" in info["logs"]
    assert "Already daemonized." in info["logs"]
    if to_file:
        assert output.read_text() == "to stdout\nto stderr\n"


# -- DropPrivileges -----------------------------------------------------------

DROP_SCRIPT = """
import json, os, sys
from procbus import Bus
from procbus.plugins import DropPrivileges

uid, gid = (int(v) if v.isdigit() else v for v in sys.argv[1:3])
os.setgroups([0, 1, 2])  # supplementary groups the drop must clear
bus = Bus()
logs = []
bus.subscribe("log", lambda msg, level=20: logs.append(msg))
plugin = DropPrivileges(bus, umask=0o027, uid=uid, gid=gid)
plugin.subscribe()
bus.start()
plugin.start()
umask = os.umask(0o027)
print(json.dumps({
    "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getegid()],
    "groups": os.getgroups(),
    "umask": umask,
    "logs": logs,
}))
bus.exit()
"""


@pytest.mark.parametrize("by_name", [True, False], ids=["names", "numbers"])
def test_drop_privileges_switches_user_group_and_umask(tmp_path: Path, by_name: bool) -> None:
    """Steps: as root, a child script subscribes DropPrivileges(uid, gid of
    nobody, by name or number, umask 0o027), starts its bus, then starts the
    plugin again.
    Expected: the child runs as nobody's uid and gid with no supplementary
    groups and umask 027; CherryPy's log lines, including the "already" lines
    of the second start."""
    root_only()
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    args = ("nobody", group) if by_name else (str(nobody.pw_uid), str(nobody.pw_gid))
    result = run_script(tmp_path / "drop.py", DROP_SCRIPT, *args)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["ids"] == [nobody.pw_uid, nobody.pw_uid, nobody.pw_gid, nobody.pw_gid]
    assert info["groups"] == []
    assert info["umask"] == 0o027
    logs = info["logs"]
    assert "Started as uid: 'root' gid: 'root'" in logs
    assert f"Running as uid: 'nobody' gid: {group!r}" in logs
    assert any(line.startswith("umask old: ") and line.endswith(", new: 027") for line in logs)
    assert f"Already running as uid: 'nobody' gid: {group!r}" in logs
    assert "umask already set to: 027" in logs


def test_drop_privileges_resolves_names(bus: Bus) -> None:
    """Steps: build DropPrivileges with uid "root" and gid "root".
    Expected: uid and gid are the numbers (0); nothing changes before start."""
    plugin = DropPrivileges(bus, uid="root", gid="root", umask=0o022)
    assert (plugin.uid, plugin.gid, plugin.umask) == (0, 0, 0o022)
    assert plugin.finalized is False


@pytest.mark.parametrize("field", ["uid", "gid"])
def test_drop_privileges_unknown_name_is_refused(bus: Bus, field: str) -> None:
    """Steps: build DropPrivileges with an unknown user or group name.
    Expected: a ConfigError (a ProcbusError) naming it."""
    name = f"no-such-{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {field: name}
    with pytest.raises(ConfigError, match=name) as caught:
        DropPrivileges(bus, **settings)
    assert isinstance(caught.value, ProcbusError)


def test_drop_privileges_without_settings_only_warns(bus: Bus, logs: Logs) -> None:
    """Steps: start a DropPrivileges with no uid, gid or umask.
    Expected: two warnings, finalized set, no change to ids or umask."""
    ids = (os.getuid(), os.getgid(), os.getgroups())
    plugin = DropPrivileges(bus)
    plugin.start()
    assert logs == [("uid/gid not set", 30), ("umask not set", 30)]
    assert plugin.finalized is True
    assert (os.getuid(), os.getgid(), os.getgroups()) == ids


def test_drop_privileges_finalized_does_not_switch_again(bus: Bus, logs: Logs) -> None:
    """Steps: mark a DropPrivileges with uid, gid and umask as finalized; start.
    Expected: only "already" lines; ids and umask unchanged."""
    plugin = DropPrivileges(bus, uid=os.getuid() + 1, gid=os.getgid() + 1, umask=0o077)
    plugin.finalized = True
    plugin.start()
    current = os.umask(0o022)
    os.umask(current)
    assert current != 0o077
    assert os.getuid() != plugin.uid
    assert messages(logs) == [
        "Already running as uid: {!r} gid: {!r}".format(*DropPrivileges._current_ids()),
        "umask already set to: 077",
    ]


# -- BackgroundTask and PerpetualTimer ----------------------------------------


def test_background_task_repeats_function_with_arguments(bus: Bus) -> None:
    """Steps: start a task every 1 ms with args and kwargs; wait for 3 calls;
    cancel and join.
    Expected: each call got the arguments; the task is daemonic and running
    until cancelled."""
    calls: list[tuple[Any, ...]] = []
    task = BackgroundTask(0.001, lambda *a, **k: calls.append((a, k)), (1, 2), {"x": 3}, bus=bus)
    assert task.daemon is True
    task.start()
    try:
        assert task.running is True
        wait_until(lambda: len(calls) >= 3)
    finally:
        task.cancel()
        task.join(timeout=5)
    assert task.running is False
    assert all(call == ((1, 2), {"x": 3}) for call in calls)


def test_background_task_cancel_interrupts_the_wait() -> None:
    """Steps: start a task with a one-hour interval; cancel it.
    Expected: the thread ends within a second, the function never ran."""
    calls: list[int] = []
    task = BackgroundTask(3600, lambda: calls.append(1))
    task.start()
    task.cancel()
    task.join(timeout=1)
    assert not task.is_alive()
    assert calls == []


def test_background_task_error_is_logged_and_stops_task(bus: Bus, logs: Logs) -> None:
    """Steps: start a task whose function raises.
    Expected: the error and its traceback are logged at level 40, the task
    stops after one call and no unhandled thread exception escapes."""
    calls: list[int] = []

    def boom() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    task = BackgroundTask(0.001, boom, bus=bus)
    task.start()
    task.join(timeout=5)
    assert not task.is_alive()
    assert calls == [1]
    assert task.running is False
    [(message, level)] = logs
    assert level == 40
    assert message.startswith(f"Error in background task thread function {boom!r}.")
    assert "RuntimeError: boom" in message


def test_background_task_without_bus_logs_to_procbus_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Steps: start a bus-less task whose function raises.
    Expected: the error goes to the ``procbus`` logger with the exception."""

    def boom() -> None:
        raise RuntimeError("boom")

    task = BackgroundTask(0.001, boom)
    with caplog.at_level("ERROR", logger="procbus"):
        task.start()
        task.join(timeout=5)
    [record] = caplog.records
    assert record.name == "procbus"
    assert record.exc_info is not None


def test_perpetual_timer_repeats_until_cancelled(bus: Bus, logs: Logs) -> None:
    """Steps: start a PerpetualTimer every 1 ms; wait for 3 calls; cancel; then
    a timer whose function raises.
    Expected: the first repeats and stops on cancel; the second logs the error
    and stops."""
    calls: list[int] = []
    timer = PerpetualTimer(0.001, lambda: calls.append(1), bus=bus)
    timer.start()
    try:
        wait_until(lambda: len(calls) >= 3)
    finally:
        timer.cancel()
        timer.join(timeout=5)
    assert not timer.is_alive()

    failing = PerpetualTimer(0.001, lambda: 1 / 0, bus=bus)
    failing.start()
    failing.join(timeout=5)
    assert not failing.is_alive()
    assert "Error in perpetual timer thread function" in logs[0][0]
    assert logs[0][1] == 40


# -- Monitor ------------------------------------------------------------------


def test_monitor_runs_callback_in_named_thread(bus: Bus, logs: Logs) -> None:
    """Steps: start a Monitor named "probe" every 1 ms; wait for calls; stop.
    Expected: calls run in a daemon thread "probe"; the thread ends; CherryPy's
    start and stop lines."""
    names: list[str] = []
    monitor = Monitor(bus, lambda: names.append(threading.current_thread().name), 0.001, "probe")
    monitor.start()
    thread = monitor.thread
    assert thread is not None and thread.daemon
    try:
        wait_until(lambda: len(names) >= 2)
    finally:
        monitor.stop()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert monitor.thread is None
    assert set(names) == {"probe"}
    assert messages(logs) == ["Started monitor thread 'probe'.", "Stopped thread 'probe'."]


def test_monitor_start_twice_keeps_one_thread(bus: Bus, logs: Logs) -> None:
    """Steps: start an unnamed Monitor twice; stop.
    Expected: one thread, named after the class; the second start only logs."""
    monitor = Monitor(bus, lambda: None, 3600)
    monitor.start()
    thread = monitor.thread
    monitor.start()
    assert monitor.thread is thread and thread is not None
    monitor.stop()
    thread.join(timeout=1)
    assert not thread.is_alive()
    assert thread.name == "Monitor"
    assert "Monitor thread 'Monitor' already started." in messages(logs)


@pytest.mark.parametrize(("name", "shown"), [(None, "Monitor"), ("probe", "probe")])
def test_monitor_stop_without_thread_names_the_monitor(
    bus: Bus, logs: Logs, name: str | None, shown: str
) -> None:
    """Steps: stop a Monitor that never started.
    Expected: "No thread running for <name or class name>." (CherryPy shows
    None here, an operator-precedence bug)."""
    Monitor(bus, lambda: None, name=name).stop()
    assert messages(logs) == [f"No thread running for {shown}."]


def test_monitor_stop_joins_non_daemon_thread(bus: Bus, logs: Logs) -> None:
    """Steps: give a Monitor a running non-daemon task; stop.
    Expected: "Joining" is logged and the thread has ended when stop returns."""
    monitor = Monitor(bus, lambda: None, 3600, "probe")
    task = BackgroundTask(3600, lambda: None)
    task.daemon = False
    task.name = "probe"
    task.start()
    monitor.thread = task
    monitor.stop()
    assert not task.is_alive()
    assert messages(logs) == ["Joining 'probe'", "Stopped thread 'probe'."]


def test_monitor_graceful_replaces_thread(bus: Bus) -> None:
    """Steps: start a Monitor; publish ``graceful`` on its bus; stop.
    Expected: the old thread ended and a new one runs."""
    monitor = Monitor(bus, lambda: None, 3600)
    monitor.subscribe()
    monitor.start()
    old = monitor.thread
    assert old is not None
    bus.graceful()
    new = monitor.thread
    try:
        old.join(timeout=1)
        assert not old.is_alive()
        assert new is not None and new is not old and new.is_alive()
    finally:
        monitor.stop()
        if new is not None:
            new.join(timeout=1)


def test_monitor_with_zero_frequency_starts_no_thread(bus: Bus) -> None:
    """Steps: start a Monitor with frequency 0.
    Expected: no thread."""
    monitor = Monitor(bus, lambda: None, 0)
    monitor.start()
    assert monitor.thread is None


def test_monitor_stopped_from_its_callback_ends(bus: Bus, logs: Logs) -> None:
    """Steps: start a Monitor whose callback stops the monitor.
    Expected: the callback runs once and the thread ends."""
    calls: list[int] = []

    def callback() -> None:
        calls.append(1)
        monitor.stop()

    monitor = Monitor(bus, callback, 0.001, "probe")
    monitor.start()
    thread = monitor.thread
    assert thread is not None
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert calls == [1]
    assert "Stopped thread 'probe'." in messages(logs)


def test_monitor_follows_the_bus(bus: Bus) -> None:
    """Steps: subscribe a Monitor; start the bus; exit the bus.
    Expected: the thread runs while the bus runs and ends on exit."""
    monitor = Monitor(bus, lambda: None, 3600)
    monitor.subscribe()
    bus.start()
    thread = monitor.thread
    assert thread is not None and thread.is_alive()
    bus.exit()
    thread.join(timeout=1)
    assert not thread.is_alive()
    assert monitor.thread is None


# -- Autoreloader -------------------------------------------------------------


@pytest.fixture
def probe_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module file in tmp_path, registered in sys.modules for this test."""
    name = f"procbus_probe_{uuid.uuid4().hex}"
    source = tmp_path / f"{name}.py"
    source.write_text("VALUE = 1\n")
    module = types.ModuleType(name)
    module.__file__ = str(source)
    monkeypatch.setitem(sys.modules, name, module)
    return source


def bump_mtime(path: Path, seconds: float) -> None:
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + seconds))


def reloader_for(bus: Bus, module: Path) -> Autoreloader:
    return Autoreloader(bus, match=f"^{module.stem}$")


def test_autoreloader_first_scan_is_a_baseline(bus: Bus, probe_module: Path) -> None:
    """Steps: scan twice without changes.
    Expected: the module's file is recorded; no restart."""
    reloader = reloader_for(bus, probe_module)
    reloader.run()
    reloader.run()
    assert reloader.mtimes == {str(probe_module): probe_module.stat().st_mtime}
    assert bus.execv is False
    assert bus.state is states.STOPPED


@pytest.mark.parametrize("change", ["newer", "older", "deleted"])
def test_autoreloader_restarts_when_module_file_changes(
    bus: Bus, logs: Logs, probe_module: Path, change: str
) -> None:
    """Steps: scan; make the module's file newer, older, or delete it; scan.
    Expected: "Restarting because <file> changed." and the bus restarts
    (exits with execv set)."""
    reloader = reloader_for(bus, probe_module)
    reloader.run()
    if change == "deleted":
        probe_module.unlink()
    else:
        bump_mtime(probe_module, 5 if change == "newer" else -5)
    reloader.run()
    assert f"Restarting because {probe_module} changed." in messages(logs)
    assert bus.execv is True
    assert bus.state is states.EXITING


def test_autoreloader_watches_extra_files(bus: Bus, logs: Logs, tmp_path: Path) -> None:
    """Steps: add a config file to `files` of a reloader matching no module;
    scan; bump the file's mtime; scan.
    Expected: a restart naming the file."""
    extra = tmp_path / "app.conf"
    extra.write_text("")
    reloader = Autoreloader(bus, match="^$")
    reloader.files.add(str(extra))
    reloader.run()
    assert bus.execv is False
    bump_mtime(extra, 5)
    reloader.run()
    assert bus.execv is True
    assert f"Restarting because {extra} changed." in messages(logs)


def test_autoreloader_ignores_modules_not_matching(bus: Bus, probe_module: Path) -> None:
    """Steps: scan with a `match` that excludes the module; bump its mtime; scan.
    Expected: the file is not watched; no restart."""
    reloader = Autoreloader(bus, match=f"^(?!{probe_module.stem}$)procbus_probe_")
    reloader.run()
    bump_mtime(probe_module, 5)
    reloader.run()
    assert str(probe_module) not in reloader.mtimes
    assert bus.execv is False


def test_autoreloader_file_for_module(tmp_path: Path) -> None:
    """Steps: ask for the file of modules with no ``__file__``, a relative one,
    and a zip-imported one.
    Expected: None; an absolute path against the start directory; the archive."""
    assert Autoreloader._file_for_file_module(types.SimpleNamespace(__file__=None)) is None
    relative = Autoreloader._file_for_module(types.SimpleNamespace(__file__="pkg/mod.py"))
    assert relative is not None and os.path.isabs(relative)
    assert relative.endswith(os.path.join("pkg", "mod.py"))
    zipped = types.SimpleNamespace(
        __file__="x.zip/mod.py", __loader__=types.SimpleNamespace(archive="/x.zip")
    )
    assert Autoreloader._file_for_module(zipped) == "/x.zip"


def test_autoreloader_watches_source_of_pyc_module(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps: register a module whose ``__file__`` is a .pyc; scan.
    Expected: the .py beside it is the watched file."""
    source = tmp_path / "procbus_pyc_probe.py"
    source.write_text("")
    module = types.ModuleType("procbus_pyc_probe")
    module.__file__ = str(source) + "c"
    monkeypatch.setitem(sys.modules, "procbus_pyc_probe", module)
    reloader = Autoreloader(bus, match="^procbus_pyc_probe$")
    reloader.run()
    assert list(reloader.mtimes) == [str(source)]


def test_autoreloader_thread_restarts_bus(bus: Bus, logs: Logs, probe_module: Path) -> None:
    """Steps: subscribe an Autoreloader polling every 1 ms; start the bus; wait
    for the baseline scan; bump the module's mtime.
    Expected: the reloader's thread "Autoreloader" restarts the bus, then ends."""
    reloader = Autoreloader(bus, frequency=0.001, match=f"^{probe_module.stem}$")
    reloader.subscribe()
    bus.start()
    thread = reloader.thread
    assert thread is not None and thread.name == "Autoreloader"
    try:
        wait_until(lambda: str(probe_module) in reloader.mtimes)
        bump_mtime(probe_module, 5)
        wait_until(lambda: bus.state is states.EXITING)
    finally:
        if bus.state is not states.EXITING:
            bus.exit()
        thread.join(timeout=5)
    assert not thread.is_alive()
    assert bus.execv is True
    assert "Stopped thread 'Autoreloader'." in messages(logs)


# -- ThreadManager ------------------------------------------------------------


def in_new_thread(func: Callable[[], object]) -> None:
    thread = threading.Thread(target=func)
    thread.start()
    thread.join(timeout=5)


@pytest.fixture
def thread_events(bus: Bus) -> list[tuple[str, int]]:
    events: list[tuple[str, int]] = []
    ThreadManager(bus).subscribe()
    bus.subscribe("start_thread", lambda i: events.append(("start", i)))
    bus.subscribe("stop_thread", lambda i: events.append(("stop", i)))
    return events


def test_thread_manager_adds_its_channels(bus: Bus) -> None:
    """Steps: build a ThreadManager.
    Expected: the four thread channels exist on the bus."""
    ThreadManager(bus)
    assert {"acquire_thread", "start_thread", "release_thread", "stop_thread"} <= set(
        bus.listeners
    )


def test_acquire_thread_starts_each_thread_once(
    bus: Bus, thread_events: list[tuple[str, int]]
) -> None:
    """Steps: acquire twice from this thread, once from another.
    Expected: start_thread(1) once for this thread, start_thread(2) for the other."""
    bus.publish("acquire_thread")
    bus.publish("acquire_thread")
    in_new_thread(lambda: bus.publish("acquire_thread"))
    assert thread_events == [("start", 1), ("start", 2)]


def test_release_thread_stops_it(bus: Bus, thread_events: list[tuple[str, int]]) -> None:
    """Steps: acquire and release this thread; release again.
    Expected: stop_thread(1) once."""
    bus.publish("acquire_thread")
    bus.publish("release_thread")
    bus.publish("release_thread")
    assert thread_events == [("start", 1), ("stop", 1)]


@pytest.mark.parametrize("channel", ["stop", "graceful"])
def test_stop_and_graceful_release_every_thread(
    bus: Bus, thread_events: list[tuple[str, int]], channel: str
) -> None:
    """Steps: acquire from two threads; publish stop (or graceful) twice.
    Expected: stop_thread for both, once."""
    bus.publish("acquire_thread")
    in_new_thread(lambda: bus.publish("acquire_thread"))
    bus.publish(channel)
    bus.publish(channel)
    assert thread_events[2:] == [("stop", 1), ("stop", 2)]


def test_thread_indexes_are_not_reused(bus: Bus, thread_events: list[tuple[str, int]]) -> None:
    """Steps: acquire this thread and a second, still running, one; release
    this one; acquire a third.
    Expected: the third gets index 3, not the second thread's 2 (CherryPy
    would reuse it)."""
    done = threading.Event()

    def second() -> None:
        bus.publish("acquire_thread")
        done.wait(timeout=5)

    bus.publish("acquire_thread")
    thread = threading.Thread(target=second)
    thread.start()
    try:
        wait_until(lambda: len(thread_events) == 2)
        bus.publish("release_thread")
        in_new_thread(lambda: bus.publish("acquire_thread"))
    finally:
        done.set()
        thread.join(timeout=5)
    assert thread_events == [("start", 1), ("start", 2), ("stop", 1), ("start", 3)]
