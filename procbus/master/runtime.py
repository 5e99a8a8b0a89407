"""The master's private runtime directory: endpoints, lock, state files.

Every ZeroMQ endpoint of a master is an ``ipc://`` socket file in one
directory. That directory, and the ``procbus-UID`` directory above it, are
opened and checked with `procbus.privatedir` (owned by the master's uid,
writable by nobody else, no symbolic link) before anything is bound or removed
in them, and kept open: the lock file and the socket files are handled
relative to the open directory, and `RuntimeDir.intact` tells whether the
path still leads there.

The directory is mode 0700, or 0711 when other uids must reach a socket in it
(``admin_uids``/``read_uids``, or workers that run as another user): they may
then enter it, never list or change it, and each socket file's mode and the
master's ZAP handler (`procbus.master.auth`) decide who may connect.

A lock file in it (``flock``) says that a master runs under this name: a
second master fails at once with a one-line error and leaves the running one
untouched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import Final

from procbus.errors import StartupError
from procbus.privatedir import DirectoryId, PrivateDir, check_directory, open_private

# sockaddr_un.sun_path is 108 bytes with the trailing NUL.
MAX_IPC_PATH: Final = 107

ENDPOINT_FILES: Final = {
    "publish": "pub",
    "replies": "rep",
    "control": "ctl",
    "events": "evt",
}
LOCK_FILE: Final = "master.lock"
PRIVATE_MODE: Final = 0o700
SHARED_MODE: Final = 0o711
"""Others may enter (to reach a socket they are allowed), never list or write."""


def default_runtime_dir(name: str) -> Path:
    """``$XDG_RUNTIME_DIR/procbus/NAME``, else ``$TMPDIR/procbus-UID/NAME``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "procbus" / name
    return Path(tempfile.gettempdir()) / f"procbus-{os.getuid()}" / name


def check_name(name: str) -> str:
    if not name or "/" in name or name in {".", ".."} or "\0" in name:
        raise StartupError(f"instance name {name!r} must be a non-empty file name (no '/')")
    return name


def _missing_components(path: Path) -> int:
    """How many trailing components of `path` do not exist yet (at least 1)."""
    count = 1
    parent = path.parent
    while parent != parent.parent and not os.path.lexists(parent):
        count += 1
        parent = parent.parent
    return count


class RuntimeDir:
    """A master's runtime directory and the lock that proves it is in use."""

    def __init__(self, path: Path, managed: int | None = None) -> None:
        self.path = Path(os.path.abspath(path))
        self.managed = managed
        """How many trailing components of `path` procbus owns (None: the
        missing ones and the last, decided when acquired)."""
        self.lock_fd: int | None = None
        self.dir: PrivateDir | None = None

    @classmethod
    def for_name(cls, name: str, base: Path | None = None) -> RuntimeDir:
        check_name(name)
        if base is not None:
            return cls(base)
        return cls(default_runtime_dir(name), managed=2)

    def child(self, name: str) -> RuntimeDir:
        """A directory of ours inside this one (an upgrading master's ``next-PID``)."""
        managed = (self.managed or 1) + 1
        return RuntimeDir(self.path / name, managed)

    def endpoint(self, role: str) -> str:
        """The ``ipc://`` endpoint of `role` (publish, replies, control, events)."""
        path = self.path / ENDPOINT_FILES[role]
        if len(str(path)) > MAX_IPC_PATH:
            raise StartupError(
                f"runtime directory '{self.path}' is too long for ipc sockets "
                f"({len(str(path))} > {MAX_IPC_PATH} bytes); choose a shorter one"
            )
        return f"ipc://{path}"

    def endpoints(self) -> dict[str, str]:
        return {role: self.endpoint(role) for role in ENDPOINT_FILES}

    @property
    def identity(self) -> DirectoryId | None:
        return self.dir.identity if self.dir is not None else None

    def acquire(self, shared: bool = False) -> None:
        """Open (create) and check the directory and take its lock, or raise `StartupError`.

        `shared`: other uids must reach sockets in it (mode 0711, not 0700).
        A directory that fails a check is left exactly as it was.
        """
        for role in ENDPOINT_FILES:
            self.endpoint(role)  # fail early on a path that is too long
        managed = self.managed or _missing_components(self.path)
        mode = SHARED_MODE if shared else PRIVATE_MODE
        directory = open_private(self.path, managed=managed, mode=mode)
        try:
            if self.lock_fd is not None:  # adopted across execv: already ours
                self._check_adopted_lock(directory)
            else:
                self.lock_fd = self._lock(directory)
            self._clear_endpoints(directory)
        except BaseException:
            directory.close()
            raise
        if self.dir is not None:
            self.dir.close()
        self.dir = directory
        self.managed = managed

    def _lock(self, directory: PrivateDir) -> int:
        lock_path = self.path / LOCK_FILE
        try:
            fd = os.open(
                LOCK_FILE,
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
                dir_fd=directory.fd,
            )
        except OSError as exc:
            raise StartupError(f"cannot open '{lock_path}': {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {holder})" if holder else ""
                raise StartupError(
                    f"another master is already running in '{self.path}'{who}"
                ) from None
            raise StartupError(f"cannot lock '{lock_path}': {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _check_adopted_lock(self, directory: PrivateDir) -> None:
        assert self.lock_fd is not None
        try:
            named = os.stat(LOCK_FILE, dir_fd=directory.fd, follow_symlinks=False)
        except OSError:
            named = None
        held = os.fstat(self.lock_fd)
        if named is None or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            raise StartupError(
                f"the lock this master kept across exec is no longer '{self.path / LOCK_FILE}'"
            )

    def _clear_endpoints(self, directory: PrivateDir) -> None:
        """Remove socket files a dead master left; refuse any other kind of file."""
        for filename in ENDPOINT_FILES.values():
            try:
                info = os.stat(filename, dir_fd=directory.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISSOCK(info.st_mode):
                raise StartupError(f"'{self.path / filename}' exists and is not a socket")
            directory.unlink(filename)

    def adopt_lock(self, fd: int) -> None:
        """Take over a lock fd inherited across ``execv`` (`acquire` checks and keeps it)."""
        os.fstat(fd)  # an OSError here: the fd is not open
        os.set_inheritable(fd, False)
        self.lock_fd = fd

    def intact(self) -> bool:
        """The path still leads to the directory acquired, and every socket file is there."""
        if self.dir is None or not self.dir.intact():
            return False
        for filename in ENDPOINT_FILES.values():
            try:
                info = os.stat(filename, dir_fd=self.dir.fd, follow_symlinks=False)
            except OSError:
                return False
            if not stat.S_ISSOCK(info.st_mode):
                return False
        return True

    def verify(self) -> None:
        """After binding: raise `StartupError` if the path no longer leads to our directory."""
        if self.dir is None or not self.dir.intact():
            raise StartupError(f"runtime directory '{self.path}' was replaced while in use")

    def chmod(self, role: str, mode: int, group: int | None = None) -> None:
        """Set the mode (and group) of `role`'s socket file."""
        assert self.dir is not None
        filename = ENDPOINT_FILES[role]
        if group is not None:
            os.chown(filename, -1, group, dir_fd=self.dir.fd, follow_symlinks=False)
        os.chmod(filename, mode, dir_fd=self.dir.fd)

    def release(self, keep_lock: bool = False, remove: bool = False) -> None:
        """Remove the socket files and drop the lock (unless `keep_lock`).

        `remove`: also remove the lock file and the directory itself (a
        directory of one master's only, such as ``next-PID``).
        """
        directory = self.dir
        if directory is not None:
            for filename in ENDPOINT_FILES.values():
                with contextlib.suppress(OSError):
                    directory.unlink(filename)
            if remove:
                with contextlib.suppress(OSError):
                    directory.unlink(LOCK_FILE)
                if directory.intact():
                    with contextlib.suppress(OSError):
                        os.rmdir(self.path)
            directory.close()
            self.dir = None
        if self.lock_fd is not None and not keep_lock:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = None


def check_endpoint(endpoint: str) -> None:
    """Before connecting to an ``ipc://`` endpoint: its directory must pass the checks.

    A directory where procbus would put the caller's own masters
    (``$TMPDIR/procbus-UID/NAME`` with the caller's uid) must belong to the
    caller or root; elsewhere, its owner is whoever the caller chose to reach.
    Either way nobody else may be able to write to it or to any directory
    above it. Raises `procbus.privatedir.UnsafeDirectory`.
    """
    if not endpoint.startswith("ipc://"):
        return
    directory = Path(os.path.abspath(endpoint.removeprefix("ipc://"))).parent
    own_default = directory.parent == default_runtime_dir("-").parent
    check_directory(directory, {0, os.getuid()} if own_default else None)


def remove_stale_child(home: RuntimeDir, name: str) -> None:
    """Remove ``home/name`` (a ``next-PID`` directory a failed successor left): its
    socket files and lock file, then the directory; anything else there stays."""
    if home.dir is None:
        return
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=home.dir.fd)
    except OSError:
        return
    try:
        for filename in (*ENDPOINT_FILES.values(), LOCK_FILE):
            with contextlib.suppress(OSError):
                info = os.stat(filename, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISSOCK(info.st_mode) or filename == LOCK_FILE:
                    os.unlink(filename, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=home.dir.fd)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    return None
