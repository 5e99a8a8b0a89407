"""Where a master's sockets are, and what a client checks before it connects.

One module for both sides: the master (`procbus.master.runtime`) makes its
runtime directory and socket files by these names, and ``procbus ctl``,
``watch``, ``top`` and the Python client find them by the same names and
refuse a directory another user could have swapped. Light on imports: the
CLI loads it on every command.

Layout of a runtime directory (``$XDG_RUNTIME_DIR/procbus/NAME``, else
``$TMPDIR/procbus-UID/NAME``)::

    ctl          the name's control socket (ipc://), served by the master holding the lock
    evt          the name's event stream
    wTAG.pub     one tree of workers' publish socket (TAG: the generation that bound it)
    wTAG.rep     its replies socket
    master.lock  flock'ed by the master serving the name
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Final

from procbus.errors import StartupError
from procbus.privatedir import check_directory

MAX_IPC_PATH: Final = 107
"""Bytes of an ipc:// path: sockaddr_un.sun_path is 108 bytes with the trailing NUL."""
CONTROL_FILES: Final = {"control": "ctl", "events": "evt"}
"""The name's sockets."""
WORKER_FILES: Final = {"publish": "w{tag}.pub", "replies": "w{tag}.rep"}
"""One tree of workers' sockets."""
LOCK_FILE: Final = "master.lock"


def default_runtime_dir(name: str) -> Path:
    """``$XDG_RUNTIME_DIR/procbus/NAME``, else ``$TMPDIR/procbus-UID/NAME``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "procbus" / name
    return Path(tempfile.gettempdir()) / f"procbus-{os.getuid()}" / name


def check_name(name: str) -> str:
    """`name` if it can name a master (a file name), else `StartupError`."""
    if not name or "/" in name or name in {".", ".."} or "\0" in name:
        raise StartupError(f"instance name {name!r} must be a non-empty file name (no '/')")
    return name


def control_endpoint(name: str, runtime_dir: str | Path | None = None) -> str:
    """The default control endpoint of the master called `name`."""
    check_name(name)
    directory = Path(runtime_dir) if runtime_dir else default_runtime_dir(name)
    path = os.path.abspath(directory / CONTROL_FILES["control"])
    if len(path) > MAX_IPC_PATH:
        raise StartupError(
            f"runtime directory '{directory}' is too long for ipc sockets "
            f"({len(path)} > {MAX_IPC_PATH} bytes); choose a shorter one"
        )
    return f"ipc://{path}"


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
