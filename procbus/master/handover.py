"""What crosses an ``execv`` (``restart``) or goes to a successor (``upgrade``).

A master that re-executes itself, or starts the master that replaces it,
passes everything the next one needs through the environment, under the
names below, and open file descriptors:

==========================  =====================================================
``PROCBUS_FDS``             the listening sockets the workers serve (HTTP)
``PROCBUS_CONTROL_FDS``     the listening sockets of the name: ``control=FD,...``
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
==========================  =====================================================

`Inherited.take` reads and *removes* them (so that neither workers nor a
later exec see stale values); a malformed value is a `ConfigError`.
`exec_problem` tells, before anything is drained, whether a re-exec can work.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from procbus.errors import ConfigError

FDS_VARIABLE: Final = "PROCBUS_FDS"
CONTROL_FDS_VARIABLE: Final = "PROCBUS_CONTROL_FDS"
LOCK_VARIABLE: Final = "PROCBUS_LOCK_FD"
GENERATION_VARIABLE: Final = "PROCBUS_GENERATION"
WORKER_GENERATIONS_VARIABLE: Final = "PROCBUS_WORKER_GENERATIONS"
TARGET_VARIABLE: Final = "PROCBUS_TARGET"
ADOPT_VARIABLE: Final = "PROCBUS_ADOPT"
SUCCESSOR_VARIABLE: Final = "PROCBUS_SUCCESSOR"

CONTROL_ROLES: Final = ("control", "events", "events_remote")


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


def _role_fds(text: str) -> dict[str, int]:
    fds: dict[str, int] = {}
    for part in text.split(","):
        role, sep, fd = part.partition("=")
        if not sep or role not in CONTROL_ROLES or not fd.isdigit():
            raise ConfigError(f"{CONTROL_FDS_VARIABLE}={text!r}: expected ROLE=FD,...")
        fds[role] = int(fd)
    return fds


def export(
    environ: MutableMapping[str, str],
    *,
    generation: int,
    worker_generations: Mapping[int, int],
    target: tuple[int, int],
    control_fds: Mapping[str, int],
    listening_fds: Sequence[int],
    lock_fd: int | None = None,
    adoption: Adoption | None = None,
    successor: tuple[int, int] | None = None,
) -> list[int]:
    """Write the hand-over into `environ`; return the fds that must stay open."""
    environ[GENERATION_VARIABLE] = str(generation)
    environ[WORKER_GENERATIONS_VARIABLE] = json.dumps(
        {str(k): v for k, v in worker_generations.items()}
    )
    environ[TARGET_VARIABLE] = f"{target[0]}:{target[1]}"
    environ[FDS_VARIABLE] = ",".join(str(fd) for fd in listening_fds)
    environ[CONTROL_FDS_VARIABLE] = ",".join(f"{r}={fd}" for r, fd in control_fds.items())
    keep = [*listening_fds, *control_fds.values()]
    if lock_fd is not None:
        environ[LOCK_VARIABLE] = str(lock_fd)
        keep.append(lock_fd)
    if adoption is not None:
        environ[ADOPT_VARIABLE] = adoption.to_json()
    if successor is not None:
        environ[SUCCESSOR_VARIABLE] = f"{successor[0]},{successor[1]}"
        keep.extend(successor)
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
