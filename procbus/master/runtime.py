"""The master's private runtime directory: endpoints, lock, state files.

Every ZeroMQ endpoint of a master is an ``ipc://`` socket file in one directory
that only its owner can enter (mode 0700). A lock file in it (``flock``) says
that a master runs under this name: a second master fails at once with a
one-line error and leaves the running one untouched.
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

# sockaddr_un.sun_path is 108 bytes with the trailing NUL.
MAX_IPC_PATH: Final = 107

ENDPOINT_FILES: Final = {
    "publish": "pub",
    "replies": "rep",
    "control": "ctl",
    "events": "evt",
}


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


def _make_private_dir(path: Path) -> None:
    """Create `path` (and parents) mode 0700, or check an existing one is ours."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(
            f"cannot create runtime directory '{path}': {exc.strerror or exc}"
        ) from None
    info = path.stat()
    if info.st_uid != os.getuid():
        raise StartupError(
            f"runtime directory '{path}' belongs to uid {info.st_uid}, not to us ({os.getuid()})"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    if not os.access(path, os.W_OK | os.X_OK):
        raise StartupError(f"runtime directory '{path}' is not writable")


class RuntimeDir:
    """A master's runtime directory and the lock that proves it is in use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock_fd: int | None = None

    @classmethod
    def for_name(cls, name: str, base: Path | None = None) -> RuntimeDir:
        check_name(name)
        return cls(base if base is not None else default_runtime_dir(name))

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

    def acquire(self) -> None:
        """Create the directory and take its lock, or raise `StartupError`."""
        _make_private_dir(self.path)
        if self.lock_fd is not None:  # adopted across execv: already ours
            self._clear_endpoints()
            return
        lock_path = self.path / "master.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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
        self._clear_endpoints()

    def _clear_endpoints(self) -> None:
        for role in ENDPOINT_FILES:
            self.endpoint(role)  # fail early on a path that is too long
            with contextlib.suppress(FileNotFoundError):
                (self.path / ENDPOINT_FILES[role]).unlink()

    def adopt_lock(self, fd: int) -> None:
        """Take over a lock fd inherited across ``execv`` (`acquire` then keeps it)."""
        os.fstat(fd)  # an OSError here: the fd is not open
        os.set_inheritable(fd, False)
        self.lock_fd = fd

    def release(self, keep_lock: bool = False) -> None:
        """Remove the socket files and drop the lock (unless `keep_lock`)."""
        for filename in ENDPOINT_FILES.values():
            with contextlib.suppress(OSError):
                (self.path / filename).unlink()
        if self.lock_fd is not None and not keep_lock:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = None


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or "0") or None
    return None
