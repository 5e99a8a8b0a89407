"""A Python client of the master's control socket (what ``procbus ctl`` uses).

    from procbus.client import Client

    with Client.for_name("myapp") as client:
        print(client.call("status"))
        client.call("reload", batch=2)           # waits for the job to end

Every call has a deadline: a master that does not answer in time raises
`ControlError` with code ``unreachable``, never a hang.

A ``tcp://`` control endpoint needs CURVE keys (layout in `procbus.keys`)::

    curve = keys.load_client(Path("~/.procbus/keys").expanduser(), "ops")
    with Client("tcp://10.0.0.5:7070", curve=curve) as client:
        client.call("status")

A key the master does not know gets no answer at all (``unreachable``).
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import zmq

from procbus import protocol
from procbus.commands import ErrorCode
from procbus.errors import ProcbusError, ProtocolError
from procbus.paths import check_endpoint, control_endpoint
from procbus.protocol import MsgType

DEFAULT_TIMEOUT = 10.0


class ControlError(ProcbusError):
    """A control call failed: refused, failed in the tree, or no answer."""

    def __init__(self, code: ErrorCode | str, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.code = code if isinstance(code, ErrorCode) else _code(code)
        self.message = message
        self.result = result

    def __str__(self) -> str:
        return self.message


def _code(value: str) -> ErrorCode:
    try:
        return ErrorCode(value)
    except ValueError:
        return ErrorCode.INTERNAL


class Client:
    """Request/reply with one master's control socket."""

    _ids = itertools.count(1)

    def __init__(
        self,
        endpoint: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        context: zmq.Context[Any] | None = None,
        curve: tuple[bytes, bytes, bytes] | None = None,
    ) -> None:
        """`curve`: (client public key, client secret key, server public key), z85."""
        self.endpoint = endpoint
        self.timeout = timeout
        self._own_context = context is None
        self._context: zmq.Context[Any] = context or zmq.Context()
        self._socket: zmq.Socket[bytes] = self._context.socket(zmq.DEALER)
        self._socket.linger = 0
        if curve is not None:
            self._socket.curve_publickey, self._socket.curve_secretkey = curve[0], curve[1]
            self._socket.curve_serverkey = curve[2]
        self._socket.connect(endpoint)

    @classmethod
    def for_name(
        cls, name: str, runtime_dir: str | Path | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Client:
        return cls(control_endpoint(name, runtime_dir), timeout)

    def close(self) -> None:
        self._socket.close(0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """The DEALER socket, for a caller that polls many clients at once (`procbus.fleet`)."""
        return self._socket

    def request(
        self,
        command: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one request and return the raw reply body (``ok``, ``result``, ``error``)."""
        timeout = self.timeout if timeout is None else timeout
        request_id = self.send(command, args, kwargs, wait=wait, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(max(1, int(remaining * 1000))):
                raise self.no_answer(timeout)
            body = self.receive(request_id)
            if body is not None:
                return body

    def send(
        self,
        command: str,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        wait: bool = True,
        timeout: float | None = None,
    ) -> str:
        """Send one request without waiting; return its id (for `receive`).

        Raises `ControlError` (``unreachable``) at once when an ipc:// master's
        socket file is missing or unsafe.
        """
        timeout = self.timeout if timeout is None else timeout
        self._check_reachable()
        request_id = f"{os.getpid()}-{next(self._ids)}"
        body: dict[str, Any] = {
            "id": request_id,
            "command": command,
            "args": list(args or []),
            "kwargs": dict(kwargs or {}),
            "wait": wait,
            "timeout": timeout,
        }
        self._socket.send(protocol.encode(MsgType.CONTROL_REQUEST, body))
        return request_id

    def receive(self, request_id: str) -> dict[str, Any] | None:
        """The reply body to `request_id` among the replies ready now, or None.

        Never blocks: replies to earlier requests (given up on) are read and
        dropped. `ControlError` (``internal``) on a malformed reply.
        """
        while True:
            try:
                frame = self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            try:
                reply = protocol.decode(frame, expect=frozenset({MsgType.CONTROL_REPLY}))
            except ProtocolError as exc:
                raise ControlError(ErrorCode.INTERNAL, f"malformed reply: {exc}") from None
            if reply["id"] == request_id:
                return reply.body

    def no_answer(self, timeout: float) -> ControlError:
        """The error of a request this master did not answer within `timeout` seconds."""
        return ControlError(
            ErrorCode.UNREACHABLE,
            f"no answer from the master at {self.endpoint} within {timeout:g}s",
        )

    def call(
        self,
        command: str,
        *args: Any,
        wait: bool = True,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run `command`; return its result or raise `ControlError`."""
        reply = self.request(command, list(args), kwargs, wait=wait, timeout=timeout)
        if not reply["ok"]:
            error = reply.get("error") or {}
            raise ControlError(
                str(error.get("code", ErrorCode.INTERNAL.value)),
                str(error.get("message", "the master refused the request")),
                reply.get("result"),
            )
        return reply.get("result")

    def _check_reachable(self) -> None:
        if not self.endpoint.startswith("ipc://"):
            return
        path = self.endpoint.removeprefix("ipc://")
        try:
            os.stat(path)
        except FileNotFoundError:
            raise ControlError(
                ErrorCode.UNREACHABLE, f"no master listens at {self.endpoint} (no socket file)"
            ) from None
        except PermissionError:
            raise ControlError(
                ErrorCode.UNREACHABLE,
                f"cannot reach {self.endpoint}: permission denied (the runtime directory "
                "is its owner's only)",
            ) from None
        except OSError as exc:
            raise ControlError(
                ErrorCode.UNREACHABLE, f"cannot reach {self.endpoint}: {exc.strerror}"
            ) from None
        from procbus.privatedir import UnsafeDirectory  # noqa: PLC0415

        try:
            check_endpoint(self.endpoint)
        except UnsafeDirectory as exc:
            raise ControlError(
                ErrorCode.UNREACHABLE, f"not connecting to {self.endpoint}: {exc}"
            ) from None
