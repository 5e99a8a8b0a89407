#!/usr/bin/env python3
"""What clients see while a pre-fork tree reloads: procbus against gunicorn, in the same run.

Every case starts a fresh tree in its own session on 127.0.0.1:0 (N workers,
the same app), waits until every worker has imported the app, then drives K
client threads for ``--before`` seconds, triggers one operation and keeps the
load for at least ``--seconds`` more (longer while the workers are not all new
yet, up to ``--settle`` seconds after the trigger). The cases:

- procbus ``reload`` (the surge, the default: the whole new generation
  forked at once, the old one drained once it all runs), ``rolling``
  (``reload --batch 1``: one new worker runs before its old one drains, one
  at a time), ``b4`` (``reload --batch 4``), ``restart`` (the master
  re-executes, keeping its sockets) and ``upgrade`` (a new master beside the
  old one, then the hand-over), each through a ``procbus ctl`` process; and
  ``hup``: SIGHUP to the master, the same reload as ``reload`` without the
  ``ctl`` process's own start-up;
- gunicorn (sync workers) ``hup`` (SIGHUP) and ``usr2``: USR2 to the master,
  wait for the new master (``PIDFILE.2``) and for its N workers to have
  imported the app, then WINCH and QUIT the old master. (gunicorn ignores
  WINCH unless daemonized, and QUIT is its quick shutdown: the old workers
  leave at once, in-flight requests included.)

The app (written to a temporary directory) sleeps ``--import-delay`` seconds at
import, the boot cost of a real app, where reload strategies differ; then it
leaves a marker file named after its pid, so that "this worker has booted" is
known for both servers alike. It answers every request with its pid after
``--request-delay`` seconds, so that requests are in flight during the
operation.

A client does GET on a fresh connection per request (``--keep-alive``: one
connection per client, opened again after a failure) and records for each
request its start, end, outcome (ok, refused, closed without a response,
reset, timeout, 5xx, other status, bad response, other OS error) and the pid
that answered. After a failure a client waits 10 ms before its next request.

Printed per case: requests and failures by kind over the whole load; p50, p99
and max latency of the successful requests that ended after the trigger,
with the p99 of those before it as a baseline; the longest time without a
successful response; the time from the trigger until every worker is new (N
live workers have booted, none from before the trigger; ``-``: not within the
load); and how long the operation itself took (the ``procbus ctl`` process, or
the signals and waits of the gunicorn dance). Then one line per case with the
trigger's wall-clock time (to read the logs, kept with ``--logs DIR``) and the
exit status of the first master, and a one-line summary.

This process becomes a child subreaper (Linux), so that a master started by
another master (after ``upgrade`` or USR2) is reparented here when its parent
exits. Every case ends with TERM to every master (found from ``procbus ctl
status`` or the pidfiles), a bounded wait, KILL to the whole session, and a
wait for every process of the session that became a child of this one.

Run: ``.venv/bin/python scripts/bench_reload.py [--workers 4] [--import-delay 0.5]``;
``--cases procbus:hup gunicorn:hup --repeat 3`` runs only those, interleaved.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import ctypes
import datetime
import enum
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple

import psutil

PYTHON: Final = sys.executable
GUNICORN: Final = str(Path(sys.executable).with_name("gunicorn"))
APP_MODULE: Final = "reload_bench_app"
APP_SOURCE: Final = '''\
"""The app of bench_reload: slow to import, a little slow to answer, answers its pid."""

import os
import time

time.sleep(float(os.environ["BENCH_IMPORT_DELAY"]))
_DELAY = float(os.environ["BENCH_REQUEST_DELAY"])
with open(os.path.join(os.environ["BENCH_MARKERS"], str(os.getpid())), "w"):
    pass


def app(environ, start_response):
    if _DELAY:
        time.sleep(_DELAY)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''
OPERATIONS: Final = {
    "procbus": ("reload", "hup", "rolling", "restart", "upgrade", "b4"),
    "gunicorn": ("hup", "usr2"),
}
PROCBUS_COMMANDS: Final = {"rolling": ("reload", "--batch", "1"), "b4": ("reload", "--batch", "4")}
"""procbus operations that are not a ``ctl`` command of the same name."""
PR_SET_CHILD_SUBREAPER: Final = 36
FAILURE_PAUSE: Final = 0.01
"""Seconds a client waits after a failed request, as a client retrying would."""
BOOT_LIMIT: Final = 60.0
STOP_GRACE: Final = 15.0
POLL: Final = 0.01


class Outcome(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"
    CLOSED = "closed"
    RESET = "reset"
    TIMEOUT = "timeout"
    HTTP_5XX = "5xx"
    HTTP_OTHER = "status"
    BAD_RESPONSE = "bad-response"
    OS_ERROR = "oserror"


class Sample(NamedTuple):
    start: float
    end: float
    outcome: Outcome
    pid: int | None
    error: str | None
    """What went wrong, for the first failure of each kind in the report."""


@dataclass(frozen=True)
class Settings:
    workers: int
    clients: int
    before: float
    seconds: float
    settle: float
    import_delay: float
    request_delay: float
    timeout: float
    keep_alive: bool


@dataclass
class CaseResult:
    server: str
    operation: str
    samples: list[Sample]
    load_start: float
    load_end: float
    trigger: float
    trigger_wall: float
    operation_seconds: float
    all_new: float | None
    old: frozenset[int]
    """The workers that had booted at the trigger."""
    notes: list[str] = field(default_factory=list)


# -- processes --------------------------------------------------------------


def become_subreaper() -> bool:
    """Adopt the orphans of our descendants (Linux), so that they can be reaped here."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def is_alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exit_status(pid: int) -> int | None:
    """The exit status of our child `pid` if it has ended, without reaping it.

    The session leader stays a zombie until the end of the case, so that its
    pid, the session's process group id, cannot be reused meanwhile.
    """
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def reap_session(leader: subprocess.Popen[bytes], masters: list[int]) -> None:
    """TERM every master, wait, KILL the session, then reap what became our children."""
    group = leader.pid
    for pid in masters:
        if is_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not any(is_alive(pid) for pid in masters), STOP_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    leader.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        adopted = []
        for child in psutil.Process().children():
            with contextlib.suppress(ProcessLookupError):
                if os.getpgid(child.pid) == group:
                    adopted.append(child.pid)
        if not adopted:
            return
        for pid in adopted:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


# -- the trees ----------------------------------------------------------------


class Tree(abc.ABC):
    """One server tree in its own session; the session leader is its first master."""

    server = ""
    listening = re.compile("")

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.markers = directory / "markers"
        self.markers.mkdir()
        self.log_path = directory / f"{self.server}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._dead: set[int] = set()

    @abc.abstractmethod
    def argv(self) -> list[str]:
        """The command line of the first master."""

    @abc.abstractmethod
    def masters(self) -> list[int]:
        """Every master pid known now, the newest first."""

    @abc.abstractmethod
    def operate(self, operation: str) -> list[str]:
        """Run `operation`; return notes on anything that went wrong."""

    def start(self) -> None:
        env = dict(
            os.environ,
            PYTHONPATH=str(self.directory),
            BENCH_IMPORT_DELAY=str(self.settings.import_delay),
            BENCH_REQUEST_DELAY=str(self.settings.request_delay),
            BENCH_MARKERS=str(self.markers),
        )
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_until(self._read_port, BOOT_LIMIT):
            raise RuntimeError(f"{self.server}: no listening address in the log")
        booted = wait_until(lambda: len(self.live_workers()) == self.settings.workers, BOOT_LIMIT)
        if not booted or not wait_until(self._answers, BOOT_LIMIT):
            raise RuntimeError(f"{self.server}: the workers did not boot")

    def _read_port(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.server} exited with {self.proc.returncode}")
        match = self.listening.search(self.log_path.read_text(errors="replace"))
        if match:
            self.port = int(match[1])
        return match is not None

    def _answers(self) -> bool:
        return fetch(self.port, 2.0, None).outcome is Outcome.OK

    def live_workers(self) -> set[int]:
        """Pids of the live processes that have imported the app."""
        live = set()
        for entry in os.listdir(self.markers):
            pid = int(entry)
            if pid in self._dead:
                continue
            if is_alive(pid):
                live.add(pid)
            else:
                self._dead.add(pid)
        return live

    def close(self) -> None:
        if self.proc is None:
            return
        masters: list[int] = []
        with contextlib.suppress(Exception):  # best effort: the session is killed anyway
            masters = self.masters()
        reap_session(self.proc, list(dict.fromkeys([*masters, self.proc.pid])))


class ProcbusTree(Tree):
    server = "procbus"
    listening = re.compile(r"listening on 127\.0\.0\.1:(\d+)")

    def argv(self) -> list[str]:
        return [
            PYTHON,
            "-m",
            "procbus",
            "run",
            f"{APP_MODULE}:app",
            "--workers",
            str(self.settings.workers),
            "--bind",
            "127.0.0.1:0",
            "--runtime-dir",
            str(self.directory / "rt"),
        ]

    def ctl(self, *command: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        control = f"ipc://{self.directory / 'rt' / 'ctl'}"
        argv = [PYTHON, "-m", "procbus", "ctl", "--ctl", control, "--timeout", str(timeout)]
        return subprocess.run(
            [*argv, *command],
            capture_output=True,
            text=True,
            timeout=timeout + 10,
            check=False,
            cwd=self.directory,
        )

    def masters(self) -> list[int]:
        done = self.ctl("--json", "status", timeout=5.0)
        if done.returncode != 0:
            return []
        return [int(json.loads(done.stdout)["master"]["pid"])]

    def operate(self, operation: str) -> list[str]:
        if operation == "hup":  # the same command as ctl reload, without the ctl process
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGHUP)
            return []
        done = self.ctl(*PROCBUS_COMMANDS.get(operation, (operation,)))
        if done.returncode == 0:
            return []
        output = (done.stdout + done.stderr).strip().replace("\n", " | ")
        return [f"procbus ctl {operation} exited {done.returncode}: {output[-600:]}"]


class GunicornTree(Tree):
    server = "gunicorn"
    listening = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")

    @property
    def pidfile(self) -> Path:
        return self.directory / "gunicorn.pid"

    def argv(self) -> list[str]:
        return [
            GUNICORN,
            f"{APP_MODULE}:app",
            "--workers",
            str(self.settings.workers),
            "--worker-class",
            "sync",
            "--bind",
            "127.0.0.1:0",
            "--pid",
            str(self.pidfile),
            "--no-control-socket",
            "--graceful-timeout",
            "30",
        ]

    def masters(self) -> list[int]:
        pids = []
        for path in (self.pidfile.with_name(self.pidfile.name + ".2"), self.pidfile):
            with contextlib.suppress(FileNotFoundError, ValueError):
                pids.append(int(path.read_text().strip()))
        return pids

    def operate(self, operation: str) -> list[str]:
        old = int(self.pidfile.read_text().strip())
        if operation == "hup":
            os.kill(old, signal.SIGHUP)
            return []
        return self._upgrade(old)

    def _upgrade(self, old: int) -> list[str]:
        next_pidfile = self.pidfile.with_name(self.pidfile.name + ".2")
        os.kill(old, signal.SIGUSR2)
        if not wait_until(next_pidfile.exists, BOOT_LIMIT):
            return [f"gunicorn: no {next_pidfile.name} within {BOOT_LIMIT:g}s; old master kept"]
        new = int(next_pidfile.read_text().strip() or 0)
        if not wait_until(lambda: len(self._booted_children(new)) >= self.settings.workers, 60):
            return [f"gunicorn: new master {new} did not boot its workers; old master kept"]
        os.kill(old, signal.SIGWINCH)
        os.kill(old, signal.SIGQUIT)
        return []

    def _booted_children(self, master: int) -> set[int]:
        try:
            children = {child.pid for child in psutil.Process(master).children()}
        except psutil.NoSuchProcess:
            return set()
        return children & self.live_workers()


TREES: Final[dict[str, type[Tree]]] = {"procbus": ProcbusTree, "gunicorn": GunicornTree}


# -- load -----------------------------------------------------------------------


def fetch(port: int, timeout: float, conn: http.client.HTTPConnection | None) -> Sample:
    """One GET; on a fresh connection unless `conn` (kept open) is given."""
    start = time.monotonic()
    own = conn is None
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout) if own else conn
    assert connection is not None
    outcome, pid, error = Outcome.OK, None, None
    try:
        connection.request("GET", "/", headers={"Connection": "close"} if own else {})
        response = connection.getresponse()
        body = response.read()
        if response.status >= 500:
            outcome, error = Outcome.HTTP_5XX, f"{response.status} {response.reason}"
        elif response.status != 200:
            outcome, error = Outcome.HTTP_OTHER, f"{response.status} {response.reason}"
        else:
            pid = int(body)
    except Exception as exc:
        outcome, error = classify(exc), f"{type(exc).__name__}: {exc}"[:160]
    if own or outcome is not Outcome.OK:
        connection.close()
    return Sample(start, time.monotonic(), outcome, pid, error)


def classify(exc: Exception) -> Outcome:
    if isinstance(exc, ConnectionRefusedError):
        return Outcome.REFUSED
    if isinstance(exc, http.client.RemoteDisconnected):  # before reset: it is a subclass
        return Outcome.CLOSED
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return Outcome.RESET
    if isinstance(exc, TimeoutError):
        return Outcome.TIMEOUT
    if isinstance(exc, http.client.HTTPException | ValueError):
        return Outcome.BAD_RESPONSE
    if isinstance(exc, OSError):
        return Outcome.OS_ERROR
    raise exc


class Load:
    """K client threads, each with its own list of samples, until `stop`."""

    def __init__(self, port: int, settings: Settings) -> None:
        self.port = port
        self.settings = settings
        self.stopping = threading.Event()
        self.samples: list[list[Sample]] = [[] for _ in range(settings.clients)]
        self.threads = [
            threading.Thread(target=self._client, args=(out,), name=f"client-{i}", daemon=True)
            for i, out in enumerate(self.samples)
        ]

    def _client(self, out: list[Sample]) -> None:
        timeout = self.settings.timeout
        conn = None
        while not self.stopping.is_set():
            if self.settings.keep_alive and conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            sample = fetch(self.port, timeout, conn)
            out.append(sample)
            if sample.outcome is not Outcome.OK:
                conn = None
                self.stopping.wait(FAILURE_PAUSE)
        if conn is not None:
            conn.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[Load]:
        for thread in self.threads:
            thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            deadline = time.monotonic() + self.settings.timeout + 2
            for thread in self.threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def all_samples(self) -> list[Sample]:
        return sorted((s for out in self.samples for s in out), key=lambda s: s.start)


class NewWorkersWatch:
    """Records when every worker is new: N live booted workers, none of `old`."""

    def __init__(self, tree: Tree, old: set[int], since: float) -> None:
        self.tree = tree
        self.old = old
        self.since = since
        self.done = threading.Event()
        self.stopping = threading.Event()
        self.elapsed: float | None = None
        self.thread = threading.Thread(target=self._watch, name="watch", daemon=True)

    def _watch(self) -> None:
        while not self.stopping.is_set():
            live = self.tree.live_workers()
            if len(live) >= self.tree.settings.workers and not live & self.old:
                self.elapsed = time.monotonic() - self.since
                self.done.set()
                return
            self.stopping.wait(POLL)

    @contextlib.contextmanager
    def running(self) -> Iterator[NewWorkersWatch]:
        self.thread.start()
        try:
            yield self
        finally:
            self.stopping.set()
            self.thread.join(5)


# -- one case -------------------------------------------------------------------


def run_case(
    server: str, operation: str, settings: Settings, keep_logs: Path | None
) -> CaseResult:
    directory = Path(tempfile.mkdtemp(prefix="pbrl-", dir="/tmp"))
    (directory / f"{APP_MODULE}.py").write_text(APP_SOURCE)
    tree = TREES[server](directory, settings)
    try:
        tree.start()
        result = drive(tree, operation, settings)
        assert tree.proc is not None
        first_master = exit_status(tree.proc.pid)
        if first_master is not None:
            result.notes.append(f"first master {tree.proc.pid} exited {first_master}")
        return result
    except BaseException:
        sys.stderr.write(tree.log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        try:
            tree.close()
        finally:
            if keep_logs is not None:
                keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(tree.log_path, keep_logs / f"{server}-{operation}.log")
            shutil.rmtree(directory, ignore_errors=True)


def drive(tree: Tree, operation: str, settings: Settings) -> CaseResult:
    load = Load(tree.port, settings)
    load_start = time.monotonic()
    with load.running():
        time.sleep(settings.before)  # the load schedule, not a synchronisation
        old = tree.live_workers()
        trigger, trigger_wall = time.monotonic(), time.time()
        watch = NewWorkersWatch(tree, old, trigger)
        with watch.running():
            notes = tree.operate(operation)
            operation_seconds = time.monotonic() - trigger
            watch.done.wait(max(0.0, trigger + settings.settle - time.monotonic()))
            until = trigger + settings.seconds
            if watch.elapsed is not None:
                until = max(until, trigger + watch.elapsed + 0.5)
            time.sleep(max(0.0, until - time.monotonic()))
        load_end = time.monotonic()
    return CaseResult(
        server=tree.server,
        operation=operation,
        samples=load.all_samples(),
        load_start=load_start,
        load_end=load_end,
        trigger=trigger,
        trigger_wall=trigger_wall,
        operation_seconds=operation_seconds,
        all_new=watch.elapsed,
        old=frozenset(old),
        notes=notes,
    )


# -- figures -----------------------------------------------------------------------


def percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def longest_gap(result: CaseResult) -> tuple[float, float]:
    """The longest time without a successful response, and its start after the trigger."""
    ends = sorted(s.end for s in result.samples if s.outcome is Outcome.OK)
    points = [result.load_start, *ends, result.load_end]
    gap, start = max((b - a, a) for a, b in itertools.pairwise(points))
    return gap, start - result.trigger


def failures(result: CaseResult) -> Counter[Outcome]:
    return Counter(s.outcome for s in result.samples if s.outcome is not Outcome.OK)


def row(result: CaseResult) -> str:
    ok_after = sorted(
        s.end - s.start
        for s in result.samples
        if s.outcome is Outcome.OK and s.end >= result.trigger
    )
    ok_before = sorted(
        s.end - s.start
        for s in result.samples
        if s.outcome is Outcome.OK and s.end < result.trigger
    )
    failed = failures(result)
    kinds = " ".join(f"{kind}={count}" for kind, count in sorted(failed.items())) or "-"
    gap, _ = longest_gap(result)
    return (
        f"{result.server:<9}{result.operation:<9}{len(result.samples):>8}"
        f"{sum(failed.values()):>6}{ms(percentile(ok_after, 0.5)):>8}"
        f"{ms(percentile(ok_after, 0.99)):>8}{ms(ok_after[-1] if ok_after else None):>8}"
        f"{ms(percentile(ok_before, 0.99)):>9}{gap * 1e3:>8.0f}"
        f"{seconds(result.all_new):>9}{result.operation_seconds:>7.2f}  {kinds}"
    )


HEADER: Final = (
    f"{'server':<9}{'op':<9}{'requests':>8}{'fail':>6}{'p50 ms':>8}{'p99 ms':>8}"
    f"{'max ms':>8}{'base p99':>9}{'gap ms':>8}{'all new':>9}{'op s':>7}  failures"
)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.1f}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def detail(result: CaseResult) -> str:
    wall = datetime.datetime.fromtimestamp(result.trigger_wall).strftime("%H:%M:%S.%f")[:-3]
    gap, gap_start = longest_gap(result)
    parts = [f"trigger {wall}", f"longest gap {gap * 1e3:.0f} ms from {gap_start:+.2f}s"]
    failed = [s for s in result.samples if s.outcome is not Outcome.OK]
    if failed:
        first, last = failed[0].start - result.trigger, failed[-1].end - result.trigger
        parts.append(f"failures between {first:+.2f}s and {last:+.2f}s")
        examples = {s.outcome: s for s in reversed(failed)}
        parts.extend(
            f"first {kind} at {s.start - result.trigger:+.2f}s: {s.error}"
            for kind, s in sorted(examples.items())
        )
    answered = [s for s in result.samples if s.pid is not None]
    last_old = max((s.end for s in answered if s.pid in result.old), default=None)
    first_new = min((s.end for s in answered if s.pid not in result.old), default=None)
    for label, moment in (
        ("first answer of a new worker", first_new),
        ("last of an old", last_old),
    ):
        if moment is not None:
            parts.append(f"{label} {moment - result.trigger:+.2f}s")
    return f"  {result.server} {result.operation}: " + "; ".join([*parts, *result.notes])


def summary(results: list[CaseResult]) -> str:
    parts = []
    for result in results:
        gap, _ = longest_gap(result)
        parts.append(
            f"{result.server} {result.operation} {sum(failures(result).values())} failed,"
            f" gap {gap * 1e3:.0f} ms, all new {seconds(result.all_new)}"
        )
    return "summary: " + "; ".join(parts)


# -- main -------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4, help="workers per tree (4)")
    parser.add_argument("--clients", type=int, default=8, help="client threads (8)")
    parser.add_argument("--before", type=float, default=2.0, help="seconds of load before (2)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=3.0,
        help="seconds of load after the trigger, at least (3)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="at most this many seconds after the trigger, waiting for all-new workers (20)",
    )
    parser.add_argument(
        "--import-delay", type=float, default=0.5, help="seconds the app sleeps at import (0.5)"
    )
    parser.add_argument(
        "--request-delay", type=float, default=0.005, help="seconds per request (0.005)"
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout, seconds (5)")
    parser.add_argument("--keep-alive", action="store_true", help="one connection per client")
    parser.add_argument("--only", choices=tuple(OPERATIONS), help="one server only")
    parser.add_argument(
        "--cases",
        nargs="+",
        metavar="SERVER:OP",
        help="only these cases, in this order (procbus:reload gunicorn:hup)",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run the cases this many times, interleaved (1)"
    )
    parser.add_argument("--logs", type=Path, metavar="DIR", help="keep the servers' logs in DIR")
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write each case's figures to FILE"
    )
    return parser.parse_args()


def cases(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(server, operation) of each case to run, from ``--cases`` or ``--only``."""
    if not args.cases:
        servers = [args.only] if args.only else list(OPERATIONS)
        return [(server, operation) for server in servers for operation in OPERATIONS[server]]
    chosen = []
    for text in args.cases:
        server, _, operation = text.partition(":")
        if operation not in OPERATIONS.get(server, ()):
            known = ", ".join(f"{s}:{o}" for s, ops in OPERATIONS.items() for o in ops)
            raise SystemExit(f"bench_reload: unknown case {text!r} (known: {known})")
        chosen.append((server, operation))
    return chosen


def main() -> int:
    args = parse_args()
    settings = Settings(
        workers=args.workers,
        clients=args.clients,
        before=args.before,
        seconds=args.seconds,
        settle=max(args.settle, args.seconds),
        import_delay=args.import_delay,
        request_delay=args.request_delay,
        timeout=args.timeout,
        keep_alive=args.keep_alive,
    )
    subreaper = become_subreaper()
    connections = "keep-alive" if settings.keep_alive else "a new connection per request"
    print(
        f"{settings.workers} workers, {settings.clients} clients ({connections}), "
        f"import {settings.import_delay:g} s, request {settings.request_delay * 1e3:g} ms, "
        f"load {settings.before:g} s + at least {settings.seconds:g} s, "
        f"{os.cpu_count()} CPUs{'' if subreaper else ', not a subreaper'}"
    )
    results = [
        run_case(server, operation, settings, args.logs)
        for _ in range(args.repeat)
        for server, operation in cases(args)
    ]
    print(HEADER)
    for result in results:
        print(row(result))
    for result in results:
        print(detail(result))
    print(summary(results))
    if args.json:
        args.json.write_text(json.dumps([figures(result) for result in results]))
    return 0


def figures(result: CaseResult) -> dict[str, Any]:
    """One case's figures, for scripts/bench: seconds until every worker is new, failed
    requests, the longest gap, and the steady p99 before the trigger."""
    before = sorted(
        s.end - s.start
        for s in result.samples
        if s.outcome is Outcome.OK and s.end < result.trigger
    )
    gap, _ = longest_gap(result)
    return {
        "case": f"{result.server}:{result.operation}",
        "all_new_s": result.all_new,
        "failed": sum(failures(result).values()),
        "requests": len(result.samples),
        "gap_ms": gap * 1e3,
        "steady_p99_ms": (percentile(before, 0.99) or 0.0) * 1e3,
    }


if __name__ == "__main__":
    sys.exit(main())
