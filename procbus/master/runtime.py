"""The master's private runtime directory: socket files, lock, and who owns them.

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

Socket files. ``ctl`` and ``evt`` belong to the name: whichever master holds
the lock serves them (and hands their listening sockets on, across an exec
or to its successor). The workers' ``wTAG.pub`` and ``wTAG.rep`` belong to one
tree of workers, ``TAG`` being the generation of the master that first bound
them: an upgrading master's new workers get sockets of their own beside the
old master's, and workers adopted across ``restart --adopt`` find theirs
again. procbus creates every socket file itself (`RuntimeDir.listen`): bound
under a temporary name through the open directory, given its mode, then
renamed into place, so that a file is never visible with the wrong mode and
replacing a stale one is atomic. A master removes, when it goes, only the
files it made and that are still the ones it made.

A lock file (``flock``) says that a master runs under this name: a second
master fails at once with a one-line error and leaves the running one
untouched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
from pathlib import Path
from typing import Final

from procbus.errors import StartupError
from procbus.paths import (
    CONTROL_FILES,
    LOCK_FILE,
    MAX_IPC_PATH,
    WORKER_FILES,
    check_name,
    default_runtime_dir,
)
from procbus.privatedir import DirectoryId, PrivateDir, open_private

_WORKER_FILE: Final = re.compile(r"w[0-9]+\.(pub|rep)")
_TEMPORARY_FILE: Final = re.compile(r"\.(ctl|evt|w[0-9]+\.(pub|rep))\.[0-9]+")
"""A socket file `RuntimeDir.listen` had not renamed into place yet (its master died)."""
PRIVATE_MODE: Final = 0o700
SHARED_MODE: Final = 0o711
"""Others may enter (to reach a socket they are allowed), never list or write."""
LISTEN_BACKLOG: Final = 128


def _missing_components(path: Path) -> int:
    """How many trailing components of `path` do not exist yet (at least 1)."""
    count = 1
    parent = path.parent
    while parent != parent.parent and not os.path.lexists(parent):
        count += 1
        parent = parent.parent
    return count


class RuntimeDir:
    """A master's runtime directory, its lock, and the socket files it made there."""

    def __init__(self, path: Path, managed: int | None = None) -> None:
        self.path = Path(os.path.abspath(path))
        self.managed = managed
        """How many trailing components of `path` procbus owns (None: the
        missing ones and the last, decided when opened)."""
        self.worker_tag = 1
        """The ``TAG`` of the workers' socket files (see the module docstring)."""
        self.lock_fd: int | None = None
        self.dir: PrivateDir | None = None
        self._made: dict[str, tuple[int, int]] = {}
        """Socket files this process made: name -> (device, inode)."""

    @classmethod
    def for_name(cls, name: str, base: Path | None = None) -> RuntimeDir:
        check_name(name)
        if base is not None:
            return cls(base)
        return cls(default_runtime_dir(name), managed=2)

    # -- names ------------------------------------------------------------------

    def filename(self, role: str) -> str:
        """The file name of `role`'s socket (control, events, publish, replies)."""
        if role in CONTROL_FILES:
            return CONTROL_FILES[role]
        return WORKER_FILES[role].format(tag=self.worker_tag)

    def endpoint(self, role: str) -> str:
        """The ``ipc://`` endpoint of `role`."""
        path = self.path / self.filename(role)
        if len(str(path)) > MAX_IPC_PATH:
            raise StartupError(
                f"runtime directory '{self.path}' is too long for ipc sockets "
                f"({len(str(path))} > {MAX_IPC_PATH} bytes); choose a shorter one"
            )
        return f"ipc://{path}"

    def endpoints(self) -> dict[str, str]:
        return {role: self.endpoint(role) for role in (*CONTROL_FILES, *WORKER_FILES)}

    @property
    def identity(self) -> DirectoryId | None:
        return self.dir.identity if self.dir is not None else None

    # -- the directory and the lock ---------------------------------------------

    def open(self, shared: bool = False) -> None:
        """Open (create) and check the directory, or raise `StartupError`.

        `shared`: other uids must reach sockets in it (mode 0711, not 0700).
        A directory that fails a check is left exactly as it was.
        """
        self.endpoints()  # fail early on a path that is too long
        managed = self.managed or _missing_components(self.path)
        mode = SHARED_MODE if shared else PRIVATE_MODE
        directory = open_private(self.path, managed=managed, mode=mode)
        if self.dir is not None:
            self.dir.close()
        self.dir = directory
        self.managed = managed

    def acquire(self, shared: bool = False, keep: frozenset[str] = frozenset()) -> None:
        """`open`, take the lock, and remove the socket files a dead master left.

        `keep`: file names not to remove (sockets inherited across an exec).
        """
        self.open(shared)
        self.lock()
        self.remove_stale(keep)

    def lock(self) -> None:
        """Take the name's lock (or check the one kept across exec); `StartupError` if held."""
        assert self.dir is not None
        if self.lock_fd is not None:
            self._check_adopted_lock(self.dir)
            return
        lock_path = self.path / LOCK_FILE
        try:
            fd = os.open(
                LOCK_FILE,
                os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                0o600,
                dir_fd=self.dir.fd,
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
        self.lock_fd = fd

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

    def adopt_lock(self, fd: int) -> None:
        """Take over a lock fd inherited across ``execv`` (`lock` then checks it)."""
        os.fstat(fd)  # an OSError here: the fd is not open
        os.set_inheritable(fd, False)
        self.lock_fd = fd

    def remove_stale(self, keep: frozenset[str] = frozenset()) -> None:
        """With the lock held: remove socket files no live master serves any more.

        The name's ``ctl``/``evt`` and every tree's worker sockets, except
        `keep`; a file of another kind under such a name is an error.
        """
        assert self.dir is not None
        for filename in os.listdir(self.dir.fd):
            ours = (
                filename in CONTROL_FILES.values()
                or _WORKER_FILE.fullmatch(filename)
                or _TEMPORARY_FILE.fullmatch(filename)
            )
            if not ours or filename in keep or filename in self._made:
                continue
            info = os.stat(filename, dir_fd=self.dir.fd, follow_symlinks=False)
            if not stat.S_ISSOCK(info.st_mode):
                raise StartupError(f"'{self.path / filename}' exists and is not a socket")
            self.dir.unlink(filename)

    # -- socket files ---------------------------------------------------------------

    def listen(self, role: str, mode: int, group: int | None = None) -> socket.socket:
        """A listening Unix socket at `role`'s file, with `mode` (and `group`).

        Bound through the open directory under a temporary name, given its
        mode, listening, then renamed over whatever had the name (a stale
        file, or the file of a master this one takes over from).
        """
        assert self.dir is not None
        name = self.filename(role)
        temporary = f".{name}.{os.getpid()}"
        self.dir.unlink(temporary)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(f"/proc/self/fd/{self.dir.fd}/{temporary}")
            if group is not None:
                os.chown(temporary, -1, group, dir_fd=self.dir.fd, follow_symlinks=False)
            os.chmod(temporary, mode, dir_fd=self.dir.fd)
            sock.listen(LISTEN_BACKLOG)
            os.rename(temporary, name, src_dir_fd=self.dir.fd, dst_dir_fd=self.dir.fd)
            info = os.stat(name, dir_fd=self.dir.fd, follow_symlinks=False)
        except OSError:
            sock.close()
            self.dir.unlink(temporary)
            raise
        self._made[name] = (info.st_dev, info.st_ino)
        return sock

    def adopt_file(self, role: str) -> None:
        """`role`'s file is served by a listening socket inherited across exec: ours."""
        assert self.dir is not None
        name = self.filename(role)
        with contextlib.suppress(OSError):
            info = os.stat(name, dir_fd=self.dir.fd, follow_symlinks=False)
            if stat.S_ISSOCK(info.st_mode):
                self._made[name] = (info.st_dev, info.st_ino)

    def disown(self, role: str) -> None:
        """`role`'s file now serves another master (handed over): leave it when going."""
        self._made.pop(self.filename(role), None)

    def present(self, role: str) -> bool:
        """`role`'s file is there, and is the one this process made."""
        name = self.filename(role)
        if self.dir is None or name not in self._made:
            return False
        try:
            info = os.stat(name, dir_fd=self.dir.fd, follow_symlinks=False)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._made[name]

    def intact(self) -> bool:
        """The path still leads to the directory opened, and every file made is there."""
        if self.dir is None or not self.dir.intact():
            return False
        return all(self._still_made(name) for name in self._made)

    def _still_made(self, name: str) -> bool:
        assert self.dir is not None
        try:
            info = os.stat(name, dir_fd=self.dir.fd, follow_symlinks=False)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._made[name]

    def verify(self) -> None:
        """After binding: raise `StartupError` if the path no longer leads to our directory."""
        if self.dir is None or not self.dir.intact():
            raise StartupError(f"runtime directory '{self.path}' was replaced while in use")

    def release(self, keep_lock: bool = False, keep: frozenset[str] = frozenset()) -> None:
        """Remove the socket files this process made (except `keep`: file names kept
        across an exec), and drop the lock (unless `keep_lock`)."""
        directory = self.dir
        if directory is not None:
            for name in list(self._made):
                if name not in keep and self._still_made(name):
                    directory.unlink(name)
            directory.close()
            self.dir = None
        self._made.clear()
        if self.lock_fd is not None and not keep_lock:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = None

    def remove_tree_sockets(self, tag: int) -> None:
        """Remove the worker sockets of tree `tag` (a successor that died left them)."""
        if self.dir is None:
            return
        for pattern in WORKER_FILES.values():
            name = pattern.format(tag=tag)
            with contextlib.suppress(OSError):
                info = os.stat(name, dir_fd=self.dir.fd, follow_symlinks=False)
                if stat.S_ISSOCK(info.st_mode):
                    self.dir.unlink(name)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    return None
