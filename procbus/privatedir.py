"""Directories that no other local user can take over: the runtime directory's chain.

A master's sockets live in a directory such as ``/tmp/procbus-UID/NAME``. If
another local user could create, rename or replace any directory on that path,
they could put their own sockets where the master's clients and workers
connect, or make the master change files that are not its own. So every
component of the path is opened one at a time, relative to the one before
(``openat`` with ``O_NOFOLLOW | O_DIRECTORY``), and checked on the open
directory itself (``fstat``), never by a second lookup of the name:

- an *ancestor* (a directory procbus does not create, such as ``/tmp``) must
  belong to root or to the expected owner, and be writable by nobody else
  unless it has the sticky bit (``/tmp``: others may not rename our entries);
- a *managed* directory (one procbus creates or reuses: ``procbus-UID`` and
  ``NAME``) must be a real directory, not a symbolic link, belong to the
  expected owner, and be writable by nobody else (no group or other write).

A directory that fails is refused with `UnsafeDirectory`, naming the path and
what is wrong, before anything is changed there. A managed directory that
passes is then given its exact mode with ``fchmod`` on the open descriptor,
whatever the umask. `PrivateDir` keeps the final directory open: files in it
are made and removed relative to that descriptor, and `PrivateDir.intact`
tells whether the path still leads to it (a swap after the check, or a tmp
cleaner that removed it).

Symbolic links are followed only in ancestors, and only where they are
trusted: the part of the path above the managed directories is resolved
first (``/var/run`` -> ``/run``), then checked component by component.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Final, NamedTuple

from procbus.errors import StartupError

_OPEN_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LOOK_AT_DIR: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
"""For directories we only pass through or look at: no read permission needed
(another user's 0711 directory), and still never through a symbolic link."""
WRITABLE_BY_OTHERS: Final = stat.S_IWGRP | stat.S_IWOTH
TRAVERSE_BY_OTHERS: Final = stat.S_IXGRP | stat.S_IXOTH


class UnsafeDirectory(StartupError):
    """A directory on the way to a runtime directory could be taken over by
    another local user (wrong owner, writable by others, a symbolic link), or
    cannot be created or opened. The message names the path and the problem."""


class DirectoryId(NamedTuple):
    """What identifies a directory for as long as it exists."""

    device: int
    inode: int

    @classmethod
    def of(cls, info: os.stat_result) -> DirectoryId:
        return cls(info.st_dev, info.st_ino)


def _problem(info: os.stat_result, owners: Collection[int], *, managed: bool) -> str | None:
    """What is wrong with a directory for procbus's use, or None."""
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if info.st_uid not in owners:
        expected = " or ".join(f"uid {uid}" for uid in sorted(owners))
        return f"belongs to uid {info.st_uid}, not to {expected}"
    mode = stat.S_IMODE(info.st_mode)
    if mode & WRITABLE_BY_OTHERS and (managed or not mode & stat.S_ISVTX):
        return f"is writable by other users (mode {mode:04o})"
    return None


def _open_component(parent_fd: int, name: str, where: Path, flags: int = _OPEN_DIR) -> int:
    try:
        return os.open(name, flags, dir_fd=parent_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            # O_NOFOLLOW | O_DIRECTORY on a symbolic link fails with either.
            with contextlib.suppress(OSError):
                info = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    raise UnsafeDirectory(f"'{where}' is a symbolic link") from None
            raise UnsafeDirectory(f"'{where}' is not a directory") from None
        raise UnsafeDirectory(f"cannot open '{where}': {exc.strerror or exc}") from None


def _walk_ancestors(base: Path, owners: Collection[int]) -> int:
    """Open `base` (absolute, resolved) checking every component; return its fd."""
    fd = os.open("/", _LOOK_AT_DIR)
    where = Path("/")
    try:
        problem = _problem(os.fstat(fd), {0, *owners}, managed=False)
        if problem is not None:
            raise UnsafeDirectory(f"'/' {problem}")
        for part in base.parts[1:]:
            where = where / part
            try:
                child = _open_component(fd, part, where, _LOOK_AT_DIR)
            except FileNotFoundError:
                raise UnsafeDirectory(f"'{where}' does not exist") from None
            os.close(fd)
            fd = child
            problem = _problem(os.fstat(fd), {0, *owners}, managed=False)
            if problem is not None:
                raise UnsafeDirectory(f"'{where}' {problem}")
    except BaseException:
        os.close(fd)
        raise
    return fd


class PrivateDir:
    """An open, checked directory and the path that leads to it.

    (Plain classes here, no dataclasses: ``procbus ctl`` imports this module.)
    """

    def __init__(self, path: Path, fd: int, identity: DirectoryId) -> None:
        self.path = path
        self.fd = fd
        self.identity = identity

    def __repr__(self) -> str:
        return f"PrivateDir(path={self.path!r}, fd={self.fd}, identity={self.identity!r})"

    def intact(self) -> bool:
        """True while `path` still names this very directory."""
        try:
            return DirectoryId.of(os.lstat(self.path)) == self.identity
        except OSError:
            return False

    def unlink(self, name: str) -> None:
        """Remove the entry `name` of this directory (never following a link); no error if gone."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(name, dir_fd=self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def open_private(
    path: Path,
    *,
    managed: int,
    mode: int = 0o700,
    create: bool = True,
    owner: int | None = None,
) -> PrivateDir:
    """Open (creating if `create`) the directory `path`, checking its whole chain.

    The last `managed` components of `path` are procbus's own: created mode
    0700 when missing, then the last one is set to exactly `mode` and those
    before it only gain the traverse bits `mode` has (so that another master
    sharing a parent does not lose access). The components above them are
    ancestors. `owner` is the uid every managed directory must belong to (the
    caller's by default).
    """
    owner = os.getuid() if owner is None else owner
    path = Path(os.path.abspath(path))
    if managed < 1 or managed >= len(path.parts):
        raise ValueError(f"{managed} managed components in '{path}'")
    base = Path(*path.parts[:-managed])
    try:
        resolved = Path(os.path.realpath(base))
    except OSError as exc:
        raise UnsafeDirectory(f"cannot resolve '{base}': {exc.strerror or exc}") from None
    fd = _walk_ancestors(resolved, {owner})
    where = base
    try:
        names = path.parts[-managed:]
        for index, name in enumerate(names):
            where = where / name
            last = index == len(names) - 1
            try:
                child = _open_component(fd, name, where)
            except FileNotFoundError:
                if not create:
                    raise UnsafeDirectory(f"'{where}' does not exist") from None
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass  # created meanwhile: judged below like any other
                except OSError as exc:
                    raise UnsafeDirectory(
                        f"cannot create '{where}': {exc.strerror or exc}"
                    ) from None
                child = _open_component(fd, name, where)
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            problem = _problem(info, {owner}, managed=True)
            if problem is not None:
                raise UnsafeDirectory(f"'{where}' {problem}")
            current = stat.S_IMODE(info.st_mode)
            wanted = mode if last else current | (mode & TRAVERSE_BY_OTHERS)
            if current != wanted and owner == os.getuid():
                os.fchmod(fd, wanted)
        return PrivateDir(path, fd, DirectoryId.of(os.fstat(fd)))
    except BaseException:
        os.close(fd)
        raise


def check_directory(path: Path, owners: Collection[int] | None = None) -> DirectoryId:
    """Check, without changing anything, that `path` is a directory nobody else can swap.

    For clients (``procbus ctl``, a worker before it connects): `path` must
    belong to one of `owners` (None: whoever owns it, for a path the caller
    named explicitly) and be writable by nobody else; every ancestor must
    belong to root, the caller or that owner, and be writable by nobody else
    unless sticky. Returns the directory's identity.
    """
    path = Path(os.path.abspath(path))
    try:
        info = os.lstat(path)
    except OSError as exc:
        raise UnsafeDirectory(f"cannot reach '{path}': {exc.strerror or exc}") from None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeDirectory(f"'{path}' is a symbolic link")
    allowed = {info.st_uid} if owners is None else set(owners)
    parent = _walk_ancestors(Path(os.path.realpath(path.parent)), {os.getuid(), *allowed})
    try:
        fd = _open_component(parent, path.name, path, _LOOK_AT_DIR)
    except FileNotFoundError:
        raise UnsafeDirectory(f"'{path}' does not exist") from None
    finally:
        os.close(parent)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    problem = _problem(info, allowed, managed=True)
    if problem is not None:
        raise UnsafeDirectory(f"'{path}' {problem}")
    return DirectoryId.of(info)


def traverse_problem(path: Path, uid: int, gids: Collection[int]) -> str | None:
    """Why a process with `uid` and groups `gids` cannot enter `path`, or None.

    Checked with the permission bits of every directory on the way (root
    needs none), so that a master can refuse, at start, workers that would
    run as a user unable to reach its sockets.
    """
    if uid == 0:
        return None
    where = Path("/")
    for part in Path(os.path.abspath(path)).parts:
        where = where / part
        try:
            info = os.stat(where)
        except OSError as exc:
            return f"'{where}': {exc.strerror or exc}"
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in gids:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            mode = stat.S_IMODE(info.st_mode)
            return f"'{where}' (mode {mode:04o}, uid {info.st_uid}) cannot be entered by uid {uid}"
    return None
