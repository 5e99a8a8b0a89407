"""The exceptions procbus raises, one small documented hierarchy.

`ChannelFailures` (wspbus's publish error) lives in `procbus.bus`; the
exceptions here are procbus's own.
"""

from __future__ import annotations


class ProcbusError(Exception):
    """Base class of every error procbus raises on purpose."""


class ProtocolError(ProcbusError):
    """A message read from a socket is malformed: bad framing, version, type or body.

    The receiver drops the message (worker side) or answers with an error
    (control side); it never crashes on one.
    """


class ConfigError(ProcbusError):
    """A setting has a bad value, type or name (exit status 2 on the command line)."""


class StartupError(ProcbusError):
    """The runtime cannot start: an unusable runtime directory, a master already
    running under the same name, an app that does not import (exit status 1)."""


class RemoteError(ProcbusError):
    """An exception raised by a listener in another process of the tree.

    Rebuilt on the master from a worker's reply: the original type name,
    message, listener name and formatted traceback, and the worker it came from.
    """

    def __init__(
        self,
        worker: int | None,
        type_name: str,
        message: str,
        listener: str = "",
        traceback: str = "",
    ) -> None:
        super().__init__(worker, type_name, message)
        self.worker = worker
        self.type_name = type_name
        self.message = message
        self.listener = listener
        self.traceback = traceback

    def __str__(self) -> str:
        where = f"worker {self.worker}" if self.worker is not None else "remote"
        by = f" in listener {self.listener}" if self.listener else ""
        return f"{where}: {self.type_name}: {self.message}{by}"

    def __repr__(self) -> str:
        return f"RemoteError({self})"


class QuorumError(ProcbusError):
    """A tree publish's requirement (``require="any"`` or a number) was not met.

    One of the exceptions in the `ChannelFailures` that
    `TreeReply.raise_for_failures` raises; its message says why (too many
    targets failed, or fewer targets than required).
    """


class TreePublishError(ProcbusError):
    """The master refused a worker's tree publish (`procbus.tree.publish`), or could not
    send its reply back.

    `code` is the refusal's stable error code (``procbus.commands.ErrorCode``'s
    value: ``forbidden`` for a channel a worker cannot publish, ``bad_arguments``
    for a bad option, timeout or target, ``unavailable`` when the worker has too
    many tree publishes in flight or the master is exiting, ``failed`` when the
    reply cannot travel back); the message is the master's one line.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
