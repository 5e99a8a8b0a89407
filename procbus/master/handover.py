"""What crosses an ``execv`` (``restart``) or goes to a successor (``upgrade``).

A master that re-executes itself, or starts the master that replaces it,
passes everything the next one needs through the environment, under the
names below, and open file descriptors:

==========================  =====================================================
``PROCBUS_FDS``             the listening sockets the workers serve (HTTP)
``PROCBUS_CONTROL_FDS``     the listening sockets of the name: ``control=FD,...``
                            (and ``metrics``, the ``/metrics`` endpoint)
``PROCBUS_LOCK_FD``         the runtime directory's lock (exec only: a successor
                            takes the lock when the old master lets go)
``PROCBUS_GENERATION``      the next master's generation
``PROCBUS_WORKER_GENERATIONS``  worker id -> latest generation (JSON), so that
                            generations never repeat
``PROCBUS_TARGET``          the worker count set at runtime and the configured
                            count it replaced (``scale 6`` outlives a restart,
                            a changed config still wins)
``PROCBUS_ADOPT``           the live workers to adopt (``restart --adopt``, JSON)
``PROCBUS_SUCCESSOR``       the pipes of an upgrade: ``READY_FD,ALIVE_FD``
``PROCBUS_RETAINED_FD``     a memory file holding the retained publishes
                            (`procbus.master.retained`): up to 16 MiB, too
                            much for the environment and not for every process
                            to read in ``/proc/PID/environ``
==========================  =====================================================

`Inherited.take` reads and *removes* them (so that neither workers nor a
later exec see stale values, and the memory file is read and closed before any
worker is forked); a malformed value is a `ConfigError`.
`exec_problem` tells, before anything is drained, whether a re-exec can work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from procbus.bus import STARTUP_CWD, extend_pythonpath
from procbus.errors import ConfigError, StartupError

if TYPE_CHECKING:
    from procbus.master.loop import EventLoop

log = logging.getLogger("procbus.master")

FDS_VARIABLE: Final = "PROCBUS_FDS"
CONTROL_FDS_VARIABLE: Final = "PROCBUS_CONTROL_FDS"
LOCK_VARIABLE: Final = "PROCBUS_LOCK_FD"
GENERATION_VARIABLE: Final = "PROCBUS_GENERATION"
WORKER_GENERATIONS_VARIABLE: Final = "PROCBUS_WORKER_GENERATIONS"
TARGET_VARIABLE: Final = "PROCBUS_TARGET"
ADOPT_VARIABLE: Final = "PROCBUS_ADOPT"
SUCCESSOR_VARIABLE: Final = "PROCBUS_SUCCESSOR"
RETAINED_VARIABLE: Final = "PROCBUS_RETAINED_FD"
MAX_RETAINED_BYTES: Final = 64 * 1024 * 1024
"""Bytes read from the retained publishes' memory file, at most (the store holds 16 MiB)."""

CONTROL_ROLES: Final = ("control", "events", "events_remote", "metrics")

# The upgrade's two pipes (see `procbus.master.jobs.upgrade` for the old master's side):
READY: Final = b"ready\n"
"""New -> old: every worker of the new master runs."""
TOOK_OVER: Final = b"took-over\n"
"""New -> old: the new master serves the name's sockets."""
FAILED: Final = b"failed\n"
"""New -> old: the new master cannot serve the name (it exits)."""
GO: Final = b"go\n"
"""Old -> new: take the name over (end of file: the old master is gone)."""
TAKEOVER_RETRY: Final = 0.05
"""Seconds before the first new attempt at the lock the old master is releasing;
each later attempt waits twice as long, up to `TAKEOVER_RETRY_MAX`."""
TAKEOVER_RETRY_MAX: Final = 2.0


@dataclass(frozen=True)
class AdoptedWorker:
    id: int
    generation: int
    pid: int


@dataclass(frozen=True)
class Adoption:
    """The live workers a re-executed master takes over (``restart --adopt``)."""

    workers: tuple[AdoptedWorker, ...]
    next_seq: int
    """The publish sequence goes on from here."""
    worker_tag: int
    """The workers are connected to this tree's sockets (`RuntimeDir.worker_tag`)."""

    def to_json(self) -> str:
        return json.dumps(
            {
                "workers": [[w.id, w.generation, w.pid] for w in self.workers],
                "next_seq": self.next_seq,
                "worker_tag": self.worker_tag,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Adoption:
        try:
            state = json.loads(text)
            workers = tuple(AdoptedWorker(int(i), int(g), int(p)) for i, g, p in state["workers"])
            return cls(workers, int(state["next_seq"]), int(state["worker_tag"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{ADOPT_VARIABLE}: not a worker hand-over ({exc})") from None


@dataclass
class Inherited:
    """What a master found in its environment at start (all None/empty: a fresh start)."""

    generation: int | None = None
    worker_generations: dict[int, int] = field(default_factory=dict)
    target: tuple[int, int] | None = None
    """(worker count set at runtime, configured count it replaced)."""
    adoption: Adoption | None = None
    lock_fd: int | None = None
    control_fds: dict[str, int] = field(default_factory=dict)
    successor: tuple[int, int] | None = None
    """(ready fd, alive fd) of an upgrade's pipes."""
    retained: bytes = b""
    """The retained publishes (`procbus.master.retained.RetainedStore.dump`), if any."""

    @classmethod
    def take(cls, environ: MutableMapping[str, str]) -> Inherited:
        """Read the hand-over variables from `environ`, removing them."""
        found = cls()
        generation = environ.pop(GENERATION_VARIABLE, None)
        if generation is not None:
            found.generation = _number(GENERATION_VARIABLE, generation)
        generations = environ.pop(WORKER_GENERATIONS_VARIABLE, None)
        if generations is not None:
            try:
                found.worker_generations = {
                    int(k): int(v) for k, v in json.loads(generations).items()
                }
            except (ValueError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    f"{WORKER_GENERATIONS_VARIABLE}: expected {{id: generation}} ({exc})"
                ) from None
        target = environ.pop(TARGET_VARIABLE, None)
        if target is not None:
            parts = target.split(":")
            if len(parts) != 2:
                raise ConfigError(f"{TARGET_VARIABLE}={target!r}: expected RUNTIME:CONFIGURED")
            found.target = (_number(TARGET_VARIABLE, parts[0]), _number(TARGET_VARIABLE, parts[1]))
        adopt = environ.pop(ADOPT_VARIABLE, None)
        if adopt is not None:
            found.adoption = Adoption.from_json(adopt)
        lock = environ.pop(LOCK_VARIABLE, None)
        if lock is not None:
            found.lock_fd = _number(LOCK_VARIABLE, lock)
        control = environ.pop(CONTROL_FDS_VARIABLE, None)
        if control:
            found.control_fds = _role_fds(control)
        successor = environ.pop(SUCCESSOR_VARIABLE, None)
        if successor is not None:
            parts = successor.split(",")
            if len(parts) != 2 or not all(part.isdigit() for part in parts):
                raise ConfigError(
                    f"{SUCCESSOR_VARIABLE}={successor!r}: expected READY_FD,ALIVE_FD"
                )
            found.successor = (int(parts[0]), int(parts[1]))
        retained = environ.pop(RETAINED_VARIABLE, None)
        if retained is not None:
            found.retained = _read_memory_file(_number(RETAINED_VARIABLE, retained))
        for fd in (*found.control_fds.values(), *(found.successor or ())):
            try:
                os.set_inheritable(fd, False)
            except OSError as exc:
                raise ConfigError(f"inherited fd {fd}: {exc.strerror}") from None
        return found


def _number(name: str, text: str) -> int:
    if not text.isdigit():
        raise ConfigError(f"{name}={text!r}: expected a number")
    return int(text)


def _read_memory_file(fd: int) -> bytes:
    """All of the memory file `fd` (from its start), which is closed then."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        parts: list[bytes] = []
        total = 0
        while part := os.read(fd, 1 << 20):
            total += len(part)
            if total > MAX_RETAINED_BYTES:
                raise ConfigError(
                    f"{RETAINED_VARIABLE}={fd}: more than {MAX_RETAINED_BYTES} bytes"
                )
            parts.append(part)
    except OSError as exc:
        raise ConfigError(f"{RETAINED_VARIABLE}={fd}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return b"".join(parts)


def _memory_file(data: bytes) -> int:
    """A new file in memory holding `data` (close-on-exec: `export` keeps it open)."""
    try:
        fd = os.memfd_create("procbus-retained", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # no memfd here: an unnamed temporary file
        fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:  # out of memory or space: the fd is nobody's yet
        os.close(fd)
        raise
    return fd


def _role_fds(text: str) -> dict[str, int]:
    fds: dict[str, int] = {}
    for part in text.split(","):
        role, sep, fd = part.partition("=")
        if not sep or role not in CONTROL_ROLES or not fd.isdigit():
            raise ConfigError(f"{CONTROL_FDS_VARIABLE}={text!r}: expected ROLE=FD,...")
        fds[role] = int(fd)
    return fds


@dataclass(frozen=True)
class HandOver:
    """What a master gives the next one (its own re-exec, or its successor)."""

    generation: int
    """The next master's."""
    worker_generations: Mapping[int, int]
    target: tuple[int, int]
    """(worker count set at runtime, configured count it replaced)."""
    control_fds: Mapping[str, int]
    listening_fds: Sequence[int]
    lock_fd: int | None = None
    adoption: Adoption | None = None
    successor: tuple[int, int] | None = None
    retained: bytes = b""
    """The retained publishes (`procbus.master.retained.RetainedStore.dump`)."""


def export(environ: MutableMapping[str, str], hand: HandOver) -> list[int]:
    """Write the hand-over into `environ`; return the fds that must stay open.

    The retained publishes go into a new memory file, named in `environ` by its
    descriptor: its owner is the next master (`spawn_successor` closes this
    process's copy once it forked).
    """
    environ[GENERATION_VARIABLE] = str(hand.generation)
    environ[WORKER_GENERATIONS_VARIABLE] = json.dumps(
        {str(k): v for k, v in hand.worker_generations.items()}
    )
    environ[TARGET_VARIABLE] = f"{hand.target[0]}:{hand.target[1]}"
    environ[FDS_VARIABLE] = ",".join(str(fd) for fd in hand.listening_fds)
    environ[CONTROL_FDS_VARIABLE] = ",".join(f"{r}={fd}" for r, fd in hand.control_fds.items())
    keep = [*hand.listening_fds, *hand.control_fds.values()]
    if hand.lock_fd is not None:
        environ[LOCK_VARIABLE] = str(hand.lock_fd)
        keep.append(hand.lock_fd)
    if hand.adoption is not None:
        environ[ADOPT_VARIABLE] = hand.adoption.to_json()
    if hand.successor is not None:
        environ[SUCCESSOR_VARIABLE] = f"{hand.successor[0]},{hand.successor[1]}"
        keep.extend(hand.successor)
    if hand.retained:
        fd = _memory_file(hand.retained)
        environ[RETAINED_VARIABLE] = str(fd)
        keep.append(fd)
    extend_pythonpath(environ)
    return keep


def exec_problem(executable: str, argv: Sequence[str], cwd: str) -> str | None:
    """Why ``execv(executable, argv)`` from `cwd` would fail now, or None.

    Checked before a restart drains anything: the interpreter must still be
    there and executable, and a script named on the command line must still
    exist (relative to `cwd`, or to ``/`` should `cwd` be gone, as the exec
    then falls back there).
    """
    if not os.access(executable, os.X_OK):
        return f"the interpreter {executable!r} is gone or not executable"
    base = cwd if os.path.isdir(cwd) else "/"
    script = _script(argv)
    if script is not None and not os.path.exists(os.path.join(base, script)):
        return f"the script {script!r} is gone (from {base})"
    return None


def _script(argv: Sequence[str]) -> str | None:
    """The script a Python command line runs (None for ``-m``, ``-c`` or a frozen app)."""
    if getattr(sys, "frozen", False):
        return None
    for index, arg in enumerate(argv[1:], start=1):
        if arg in ("-m", "-c") or arg.startswith(("-m", "-c")):
            return None
        if arg in ("-W", "-X"):
            continue
        if argv[index - 1] in ("-W", "-X") or arg.startswith("-"):
            continue
        return arg
    return None


def re_execute(hand: HandOver, executable: str, argv: Sequence[str]) -> str:
    """``restart``: replace this process with the next master, given `hand`.

    Returns only when ``execv`` failed, saying why; `hand` is then still in
    the environment, for this process to serve on as the next master would.
    """
    keep = export(os.environ, hand)
    if not os.path.isdir(STARTUP_CWD):
        log.warning("%s is gone: re-executing from /", STARTUP_CWD)
    log.info("master %d re-executing (generation %d)", os.getpid(), hand.generation)
    for handler in logging.getLogger().handlers:
        handler.flush()
    try:
        reexec(executable, argv, STARTUP_CWD, set(keep))
    except OSError as exc:
        return f"execv {executable}: {exc.strerror or exc}"
    raise AssertionError("execv returned")  # pragma: no cover


def reexec(executable: str, argv: Sequence[str], cwd: str, keep_fds: set[int]) -> None:
    """Replace this process (main thread only); returns only by raising ``OSError``.

    Every fd but 0-2 and `keep_fds` is marked close-on-exec. When `cwd` is
    gone (a release directory removed), the exec runs from ``/`` (the caller
    says so in its log first).
    """
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, fd in keep_fds)
            except OSError:
                continue
    os.execv(executable, list(argv))


@dataclass(frozen=True)
class SpawnedSuccessor:
    """The old master's ends of an upgrade's pipes to the new master."""

    pid: int
    ready_fd: int
    """Non-blocking: what the new master says (`READY`, `TOOK_OVER`, `FAILED`)."""
    alive_fd: int
    """Write `GO` here; closing it (or exiting) tells the new master the name is free."""


def spawn_successor(hand: HandOver, executable: str, argv: Sequence[str]) -> SpawnedSuccessor:
    """Fork and execute the next master (``upgrade``) with `hand` and both pipes."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(ready_r, False)
    environ = dict(os.environ)
    keep = export(environ, dataclasses.replace(hand, successor=(ready_w, alive_r)))
    given = [int(environ[RETAINED_VARIABLE])] if RETAINED_VARIABLE in environ else []
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        pid = os.fork()
    except OSError:
        for fd in (ready_r, ready_w, alive_r, alive_w, *given):
            os.close(fd)
        raise
    if pid == 0:  # pragma: no cover - replaced by exec at once
        try:
            for fd in keep:
                os.set_inheritable(fd, True)
            os.execve(executable, list(argv), environ)
        finally:
            os._exit(127)
    for fd in (ready_w, alive_r, *given):
        os.close(fd)
    log.info("upgrade: new master pid %d (generation %d)", pid, hand.generation)
    return SpawnedSuccessor(pid=pid, ready_fd=ready_r, alive_fd=alive_w)


# -- the new master's side ------------------------------------------------------


class SuccessorMaster(Protocol):
    """What a successor's hand-over asks of its master."""

    loop: EventLoop
    exit_code: int

    @property
    def exiting(self) -> bool: ...

    def take_over_name(self) -> None:
        """Serve the name's sockets (handed over by the old master)."""

    def take_name_lock(self) -> None:
        """Take the runtime directory's lock; `StartupError` while it is held."""

    def request_exit(self, fast: bool = False) -> None: ...


class Successor:
    """A new master started by `upgrade`, until it has taken over the name."""

    def __init__(self, ready_fd: int, alive_fd: int) -> None:
        self.ready_fd: int | None = ready_fd
        self.alive_fd: int | None = alive_fd
        self.took_over = False
        self.has_lock = False
        self.announced = False

    def announce_ready(self) -> None:
        """Tell the old master that every worker runs (once)."""
        self.announced = True
        self._say(READY)

    def _say(self, what: bytes, last: bool = False) -> None:
        if self.ready_fd is None:
            return
        with contextlib.suppress(OSError):  # the old master is gone: nothing to tell
            os.write(self.ready_fd, what)
        if last:
            os.close(self.ready_fd)
            self.ready_fd = None

    def watch(self, master: SuccessorMaster) -> None:
        """Take the name over on ``go`` (or when the old master is gone), then the lock."""
        fd = self.alive_fd
        assert fd is not None
        os.set_blocking(fd, False)

        def readable() -> None:
            try:
                data = os.read(fd, 64)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not self.took_over:
                self._take_over(master)
            if data:
                return  # "go": the old master exits next (end of file)
            master.loop.remove_reader(fd)
            os.close(fd)
            self.alive_fd = None
            self._take_lock(master, TAKEOVER_RETRY)

        master.loop.add_reader(fd, readable)

    def _take_over(self, master: SuccessorMaster) -> None:
        try:
            master.take_over_name()
        except (StartupError, OSError) as exc:
            log.error("upgrade: cannot serve the name: %s", exc)
            self._say(FAILED, last=True)
            master.exit_code = 1
            master.request_exit(fast=True)
            return
        self.took_over = True
        self._say(TOOK_OVER, last=True)

    def _take_lock(self, master: SuccessorMaster, wait: float) -> None:
        """Until it works: the old master may take a while to exit (its last workers)."""
        if not self.took_over or master.exiting:
            return
        try:
            master.take_name_lock()
        except StartupError as exc:
            if wait >= TAKEOVER_RETRY_MAX:
                log.warning("upgrade: still waiting for the runtime directory's lock: %s", exc)
            later = min(wait * 2, TAKEOVER_RETRY_MAX)
            master.loop.call_later(wait, lambda: self._take_lock(master, later))
            return
        self.has_lock = True
