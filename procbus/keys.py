"""CURVE keys for a TCP control endpoint: ``procbus keys generate`` and loading.

An ``ipc://`` control socket knows its caller from the kernel (peer
credentials); a ``tcp://`` one knows it only by a CURVE key. One directory
(the ``curve_keys`` setting) holds everything, mode 0700, every file 0600::

    DIR/
      server.key               the master's public key: give it to every client
      server.key_secret        the master's key pair: never leaves the master's host
      clients/
        admin/NAME.key         public keys of the clients allowed every command
        read/NAME.key          public keys of the read-only clients
      secret/
        NAME.key_secret        client NAME's key pair, as generated: hand it over

The role of a client is the folder its public key is in: moving the file
changes the role, deleting it revokes the key (the master reads the folders
when it starts). A client needs ``server.key`` and its own
``secret/NAME.key_secret`` in the same places under a directory of its own;
``procbus ctl --curve-keys DIR --curve-client NAME`` reads them from there.
The files are pyzmq's (and czmq's) certificate format, so
`zmq.auth.load_certificate` reads them too.

A key's id, shown in audit lines and events, is its z85 public key (40
characters); a secret key is never logged.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TextIO

import zmq.auth

from procbus.commands import Role
from procbus.errors import ConfigError

SERVER: Final = "server"
CLIENTS: Final = "clients"
SECRETS: Final = "secret"
PUBLIC_SUFFIX: Final = ".key"
SECRET_SUFFIX: Final = ".key_secret"

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


@dataclass(frozen=True)
class ClientKey:
    """An allowed client: its name (the file's), role (the folder's) and key id."""

    name: str
    role: Role
    key_id: str
    """The z85 public key."""


@dataclass(frozen=True)
class ServerKeys:
    """What a master with a TCP control endpoint loads from ``curve_keys``."""

    public: bytes
    secret: bytes = field(repr=False)
    clients: tuple[ClientKey, ...]


def check_name(name: str) -> str:
    """`name` if it can name a client key file, else `ConfigError`."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"client name {name!r} must be 1-64 letters, digits, '.', '_', '@' or '-' "
            "(no '/'), starting with a letter or digit"
        )
    return name


def check_role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ConfigError(
            f"role {role!r} must be one of {', '.join(r.value for r in Role)}"
        ) from None


# -- generating ---------------------------------------------------------------


@contextlib.contextmanager
def _private_files() -> Iterator[None]:
    """Create files and directories readable by their owner only."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _new_pair(directory: Path, name: str) -> tuple[Path, Path]:
    public, secret = zmq.auth.create_certificates(directory, name)
    for path in (public, secret):
        os.chmod(path, 0o600)
    return Path(public), Path(secret)


def client_files(directory: Path, name: str, role: Role) -> tuple[Path, Path]:
    """(allowed public key, key pair to hand over) of client `name`."""
    return (
        directory / CLIENTS / role.value / (name + PUBLIC_SUFFIX),
        directory / SECRETS / (name + SECRET_SUFFIX),
    )


def generate(directory: Path, client: str | None = None, role: Role = Role.READ) -> list[str]:
    """Create the server key pair if missing and, with `client`, a client key pair.

    Returns what was done, one line each. Raises `ConfigError` for a client
    name that exists already (in either role) and `OSError` when the
    directory cannot be written.
    """
    done: list[str] = []
    with _private_files():
        _private_dir(directory)
        server_public = directory / (SERVER + PUBLIC_SUFFIX)
        server_secret = directory / (SERVER + SECRET_SUFFIX)
        if server_secret.exists():
            done.append(f"server key pair exists: {server_secret}")
        else:
            _new_pair(directory, SERVER)
            done.append(
                f"server key pair: {server_secret} (stays on the master), "
                f"{server_public} (give to clients)"
            )
        if client is None:
            return done
        for other in Role:
            existing = client_files(directory, client, other)[0]
            if existing.exists():
                raise ConfigError(
                    f"client {client!r} exists already ({existing}); remove it first"
                )
        public, secret = client_files(directory, client, role)
        if secret.exists():
            raise ConfigError(f"client {client!r} exists already ({secret}); remove it first")
        _private_dir(directory / CLIENTS)
        _private_dir(public.parent)
        _private_dir(secret.parent)
        generated, _ = _new_pair(secret.parent, client)
        os.replace(generated, public)
        done.append(
            f"client {client} ({role.value}): {public} (allowed by the master), "
            f"{secret} (give to the client with {server_public})"
        )
    return done


# -- loading ------------------------------------------------------------------


def _load(path: Path, *, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except OSError:
        raise ConfigError(f"{path}: no such key file") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not a key file: {exc}") from None
    if secret and secret_key is None:
        raise ConfigError(f"{path}: has no secret key")
    return public, secret_key


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: a secret key readable by others (mode {mode:04o}); chmod 600 it"
        )


def _check_trusted(path: Path) -> None:
    """`path` may decide who controls the master: only its owner or root may change it."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    owners = {0, os.getuid()}
    if info.st_uid not in owners:
        raise ConfigError(
            f"{path}: belongs to uid {info.st_uid}, not to uid {os.getuid()} or root; "
            "another user could add a key"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(
            f"{path}: writable by other users (mode {mode:04o}); another user could add a key"
        )


def load_server(directory: Path) -> ServerKeys:
    """The master's key pair and the allowed clients, or `ConfigError`.

    The directory, ``clients/``, each role folder and each key file must
    belong to the master's uid or root and be writable by nobody else:
    whoever can write there chooses who may control the master.
    """
    path = directory / (SERVER + SECRET_SUFFIX)
    public, secret = _load(path, secret=True)
    _check_private(path)
    for trusted in (directory, path):
        _check_trusted(trusted)
    assert secret is not None
    clients: dict[str, ClientKey] = {}
    if (directory / CLIENTS).is_dir():
        _check_trusted(directory / CLIENTS)
    for role in Role:
        folder = directory / CLIENTS / role.value
        if not folder.is_dir():
            continue
        _check_trusted(folder)
        for key_file in sorted(folder.glob("*" + PUBLIC_SUFFIX)):
            _check_trusted(key_file)
            key_id = _load(key_file, secret=False)[0].decode("ascii")
            client = ClientKey(key_file.name.removesuffix(PUBLIC_SUFFIX), role, key_id)
            if key_id in clients and clients[key_id].role is not role:
                raise ConfigError(
                    f"{key_file}: the same key is also {clients[key_id].name!r} "
                    f"with role {clients[key_id].role.value}; keep one"
                )
            clients[key_id] = client
    return ServerKeys(public, secret, tuple(clients.values()))


def load_client(directory: Path, name: str | None = None) -> tuple[bytes, bytes, bytes]:
    """(client public, client secret, server public) for `Client(curve=...)`.

    `name` may be left out when ``DIR/secret`` holds exactly one key pair.
    """
    if name is None:
        pairs = sorted((directory / SECRETS).glob("*" + SECRET_SUFFIX))
        if len(pairs) != 1:
            raise ConfigError(
                f"{directory / SECRETS}: {len(pairs)} client key pairs; name one"
                " (--curve-client NAME)"
            )
        path = pairs[0]
    else:
        path = directory / SECRETS / (check_name(name) + SECRET_SUFFIX)
    public, secret = _load(path, secret=True)
    _check_private(path)
    server, _ = _load(directory / (SERVER + PUBLIC_SUFFIX), secret=False)
    assert secret is not None
    return public, secret, server


# -- the command line -----------------------------------------------------------


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run a parsed ``procbus keys`` command line; return the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        if args.role is not None and args.client is None:
            raise ConfigError("--role needs --client NAME")
        role = check_role(args.role) if args.role is not None else Role.READ
        client = check_name(args.client) if args.client is not None else None
    except ConfigError as exc:
        print(f"procbus keys: {exc}", file=err)
        return EXIT_USAGE
    try:
        done = generate(Path(args.directory), client, role)
    except ConfigError as exc:
        print(f"procbus keys: {exc}", file=err)
        return EXIT_FAILED
    except OSError as exc:
        where = exc.filename or args.directory
        print(f"procbus keys: cannot write keys in {where}: {exc.strerror or exc}", file=err)
        return EXIT_FAILED
    for line in done:
        print(line, file=out)
    return EXIT_OK
