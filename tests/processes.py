"""Real masters for the process-level tests: start, drive, and always reap.

A master starts in its own session on a private runtime directory under /tmp
(short, for ipc paths). It counts as up once it answers ``ping``. Stopping it
sends TERM, waits, then KILLs the whole process group it leads (a group the
test created), and finally checks that no process of that group is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import zmq

from procbus import protocol
from procbus.client import Client, ControlError
from procbus.protocol import MsgType
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent


def short_tempdir(prefix: str = "pb-") -> Path:
    """A fresh private directory with a short path (ipc paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (not zombie) processes of process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


class MasterProcess:
    """A master running in a subprocess, and a client to its control socket."""

    def __init__(
        self,
        argv: Sequence[str],
        runtime_dir: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> None:
        self.argv = list(argv)
        self.runtime_dir = runtime_dir
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = child_environment({"PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        self.pgid = self.proc.pid
        self.endpoint = f"ipc://{runtime_dir}/ctl"
        self.curve: tuple[bytes, bytes, bytes] | None = None
        """Client keys for a tcp:// `endpoint` (see `procbus.keys.load_client`)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, timeout: float = 10.0) -> Client:
        return Client(self.endpoint, timeout, curve=self.curve)

    def call(self, command: str, *args: Any, timeout: float = 10.0, **kwargs: Any) -> Any:
        with self.client(timeout) as client:
            return client.call(command, *args, timeout=timeout, **kwargs)

    def request(
        self, command: str, *args: Any, timeout: float = 10.0, **kwargs: Any
    ) -> dict[str, Any]:
        with self.client(timeout) as client:
            return client.request(command, list(args), kwargs, timeout=timeout)

    def wait_answering(self, timeout: float = 15.0) -> None:
        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"master exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.call("ping", timeout=0.5)
            except ControlError:
                return False
            return True

        wait_until(answers, timeout)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call("status")
        return result

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self.status()["workers"]
        return workers

    def wait_running(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        def running() -> list[dict[str, Any]] | None:
            workers = self.workers()
            ok = len(workers) == count and all(w["state"] == "running" for w in workers)
            return workers if ok else None

        return wait_until(running, timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """TERM, wait, KILL the group; check nothing of the group survives."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            wait_until(lambda: not group_members(self.pgid), 10)
        finally:
            self._log.close()
        return self.proc.returncode


def master_argv(app: str, runtime_dir: Path, workers: int = 2, **options: Any) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "tests.tree.master_main",
        "--app",
        app,
        "--workers",
        str(workers),
        "--runtime-dir",
        str(runtime_dir),
    ]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


@contextlib.contextmanager
def running_master(
    app: str = "tests.tree.apps:echo",
    workers: int = 2,
    wait: bool = True,
    curve: tuple[bytes, bytes, bytes] | None = None,
    env: dict[str, str] | None = None,
    **options: Any,
) -> Iterator[MasterProcess]:
    """A master with `workers` workers of `app`; always stopped and reaped.

    With a ``ctl`` option (a tcp:// endpoint), the harness talks to it with
    the client keys `curve`. `env` is added to the master's environment.
    """
    runtime_dir = short_tempdir()
    master = MasterProcess(
        master_argv(app, runtime_dir / "rt", workers, **options),
        runtime_dir / "rt",
        runtime_dir / "master.log",
        env,
    )
    if "ctl" in options:
        master.endpoint, master.curve = str(options["ctl"]), curve
    with supervised(master, runtime_dir, workers if wait else None) as started:
        yield started


@contextlib.contextmanager
def supervised(
    master: MasterProcess, directory: Path, workers: int | None
) -> Iterator[MasterProcess]:
    """Wait for `master` (unless `workers` is None), then always stop and reap it.

    `directory` (its runtime directory and log) is removed afterwards, unless
    ``PROCBUS_KEEP_LOGS`` is set.
    """
    try:
        if workers is not None:
            master.wait_answering()
            if workers:
                master.wait_running(workers)
        yield master
    finally:
        try:
            master.stop()
        finally:
            if os.environ.get("PROCBUS_KEEP_LOGS"):
                print(f"master log kept in {directory}", file=sys.stderr)
            else:
                shutil.rmtree(directory, ignore_errors=True)


def wait_seconds(seconds: float) -> None:
    """A deliberate pause (letting time pass is the behaviour under test)."""
    time.sleep(seconds)


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a master to bind, held back from other tests.

    The port is left with a connection in TIME_WAIT: the kernel hands it to no
    other ``bind(port 0)`` for a minute, while ZeroMQ (which binds with
    SO_REUSEADDR) can take it at once.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port: int = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            accepted.close()
    return port


class Events:
    """A subscriber to a master's event stream (``ipc://RUNTIME/evt``)."""

    def __init__(self, master: MasterProcess) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.linger = 0
        self.socket.subscribe(b"ev.")
        self.socket.connect(f"ipc://{master.runtime_dir}/evt")
        self.seen: list[dict[str, Any]] = []
        # Subscribed once our own ping's audit line comes through.
        wait_until(
            lambda: master.call("ping") and self.find("command", command="ping", wait=0.1), 15
        )
        self.seen.clear()

    def find(self, event: str, wait: float = 10.0, **fields: Any) -> dict[str, Any] | None:
        """The first event named `event` whose fields include `fields`, waiting `wait` s."""
        deadline = time.monotonic() + wait
        while True:
            for seen in self.seen:
                if seen["event"] == event and all(seen.get(k) == v for k, v in fields.items()):
                    return seen
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(max(1, int(remaining * 1000))):
                return None
            message = protocol.decode(
                self.socket.recv_multipart()[-1], expect=frozenset({MsgType.EVENT})
            )
            self.seen.append({"event": message["event"], **message["data"]})

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


CTL_AS_UID = textwrap.dedent(
    """
    import json, os, sys
    import procbus.cli, procbus.client, procbus.ctl, procbus.render, procbus.watch
    import procbus.paths, procbus.privatedir
    # Parsed and imported while still root: the interpreter's own files may be
    # unreadable to the other uid. Only the request runs as that uid.
    args = procbus.cli.build_parser().parse_args(sys.argv[2:])
    os.setgroups([])
    os.setgid(int(sys.argv[1]))
    os.setuid(int(sys.argv[1]))
    sys.exit(procbus.ctl.run(args))
    """
)
"""``python -c CTL_AS_UID UID ctl ARGS``: ``procbus ctl ARGS`` as uid (and gid) UID."""


def ctl_as_uid_argv(uid: int, *args: str) -> list[str]:
    """The argv of ``procbus ctl ARGS`` run by a process that switched to `uid` (needs root)."""
    return [sys.executable, "-c", CTL_AS_UID, str(uid), "ctl", *args]


def ctl_as_uid(uid: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``procbus ctl ARGS`` as `uid` to completion."""
    return run_to_end(ctl_as_uid_argv(uid, *args), timeout=timeout)


def child_environment(
    env: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a process a test starts: `base` (this process's unless given),
    with this checkout on ``PYTHONPATH``, and `env` over it."""
    return {**(os.environ if base is None else base), "PYTHONPATH": str(ROOT), **(env or {})}


def run_to_end(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to completion (at most `timeout` seconds), stdin empty, its output
    captured as text; the environment is `child_environment(env, base_env)`."""
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=child_environment(env, base_env),
        check=False,
    )


def procbus(
    *args: str,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    timeout: float = 30,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m procbus ARGS`` to completion (see `run_to_end`)."""
    return run_to_end(
        [sys.executable, "-m", "procbus", *args], env=env, base_env=base_env, timeout=timeout
    )
