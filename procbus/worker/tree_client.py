"""A worker's end of `procbus.tree`: tree publishes from the app's threads.

An app thread (a WSGI request, an ASGI app's event loop, a listener) calls
`procbus.tree.publish`; the publish must leave on the worker's DEALER, which
belongs to the I/O thread (ZeroMQ sockets are not thread-safe). So the
caller encodes its TREE_PUBLISH (an argument msgpack cannot carry, or more
than the master accepts from a worker, raises there and then), queues it
with a future under a number of its own, and wakes the I/O loop through the
worker's wake-up pipe. The loop sends what is queued (`TreeClient.flush`) and
resolves the future when the master's TREE_REPLY comes (`TreeClient.on_reply`).
The caller waits on the future for the publish's timeout plus `ANSWER_MARGIN`
(the master's own listeners run before the workers', and the reply travels
back); a synchronous caller blocks its thread, an ``await``-ing one only its
task (``asyncio.wrap_future``).

Waits that could never end well are refused at once instead:

- on the I/O thread itself (while the app is imported, in a ``start``,
  ``stop`` or ``exit`` listener): its answer would come through that thread;
- in a listener of a publish from the master (`runner.in_listener`: the
  listener thread, or an async listener's coroutine) when this worker is a
  target too: its own part would wait until this listener returns, that is
  until the deadline. ``include_self=False`` (or ``to`` other workers) is the
  way out;
- the blocking `publish` on a thread that runs an event loop (an ``async
  def`` request handler): it would stall every request of the worker and any
  async listener of the publish; `apublish` is the form to await.

When the worker stops, the callers still waiting get a ``RuntimeError`` and
later calls raise at once (`TreeClient.close`). `serving` makes a client the
one `current()` returns while its worker runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from procbus import protocol
from procbus.errors import ProtocolError, TreePublishError
from procbus.master.relay import TreeReply
from procbus.protocol import Message, MsgType
from procbus.publishing import PublishOptions
from procbus.worker.runner import in_listener

ANSWER_MARGIN: Final = 2.0
"""Seconds a caller waits beyond the publish's timeout for the master's answer."""


@dataclass(frozen=True, slots=True)
class Pending:
    """A publish handed to the I/O thread: its number, its future and how long to wait."""

    id: int
    channel: str
    future: concurrent.futures.Future[TreeReply]
    wait: float


class TreeClient:
    """Tree publishes for one worker (see the module docstring).

    `publish`, `apublish` and `start` are for any thread; `flush`, `on_reply` and
    `close` for the worker's I/O thread.
    """

    def __init__(
        self,
        worker_id: int,
        generation: int,
        wake: Callable[[], None],
        default_timeout: float,
        *,
        margin: float = ANSWER_MARGIN,
    ) -> None:
        self.worker_id = worker_id
        self.generation = generation
        self.default_timeout = default_timeout
        """The master's ``publish_timeout`` when this worker was forked."""
        self.margin = margin
        self.io_thread: int | None = None
        """The I/O thread's ident, once the worker knows it."""
        self.pid = os.getpid()
        self._wake = wake
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._outbox: list[bytes] = []
        self._waiting: dict[int, concurrent.futures.Future[TreeReply]] = {}
        self._closed: str | None = None

    # -- any thread -------------------------------------------------------------

    def publish(
        self,
        channel: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        options: PublishOptions,
    ) -> TreeReply:
        """Publish on the tree and wait for the reply (`procbus.tree.publish`)."""
        if _runs_an_event_loop():
            raise RuntimeError(
                f"procbus.tree.publish on {channel!r} would block this thread's event loop "
                "(and every request on it): use await procbus.tree.apublish(...)"
            )
        pending = self.start(channel, args, kwargs, timeout, options)
        try:
            return pending.future.result(pending.wait)
        except concurrent.futures.TimeoutError:
            raise self._timed_out(pending) from None

    async def apublish(
        self,
        channel: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        options: PublishOptions,
    ) -> TreeReply:
        """Publish on the tree and await the reply (`procbus.tree.apublish`)."""
        pending = self.start(channel, args, kwargs, timeout, options)
        try:
            async with asyncio.timeout(pending.wait):  # no task of its own, as wait_for has
                return await asyncio.wrap_future(pending.future)
        except TimeoutError:
            raise self._timed_out(pending) from None
        finally:
            self._forget(pending.id)

    def start(
        self,
        channel: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
        options: PublishOptions,
    ) -> Pending:
        """Hand a publish to the I/O thread: its future, and how long to wait for it.

        Raises at once what could only end in an error or a wait for nothing (see the
        module docstring): ``RuntimeError``, ``TypeError`` for an argument msgpack cannot
        carry, ``ValueError`` for a bad timeout or one the master would drop unread.
        """
        self._check_caller(channel, options)
        timeout = self.default_timeout if timeout is None else timeout
        if isinstance(timeout, bool) or not (
            isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0
        ):
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        request_id = next(self._numbers)
        body = {"id": request_id, "channel": channel, "args": list(args), "kwargs": kwargs}
        body |= {"timeout": float(timeout), "options": options.wire()}
        try:
            frame = protocol.encode(MsgType.TREE_PUBLISH, body)
        except TypeError as exc:
            raise TypeError(f"the tree publish on {channel!r} cannot be sent: {exc}") from None
        problem = protocol.beyond_limits(frame, protocol.WORKER_LIMITS)
        if problem is not None:
            raise ValueError(
                f"the tree publish on {channel!r} holds more than the master accepts "
                f"from a worker: {problem}"
            )
        future: concurrent.futures.Future[TreeReply] = concurrent.futures.Future()
        with self._lock:
            if self._closed is not None:
                raise RuntimeError(self._closed)
            self._waiting[request_id] = future
            self._outbox.append(frame)
        self._wake()
        return Pending(request_id, channel, future, timeout + self.margin)

    def _check_caller(self, channel: str, options: PublishOptions) -> None:
        if not isinstance(channel, str):
            raise TypeError(f"a channel is a string, got {channel!r:.80}")
        if self._closed is not None:
            raise RuntimeError(self._closed)
        if self.pid != os.getpid():
            raise RuntimeError(
                "procbus.tree.publish works in a procbus worker only, not in a process it forked"
            )
        if threading.get_ident() == self.io_thread:
            raise RuntimeError(
                f"procbus.tree.publish on {channel!r} cannot run on the worker's I/O thread "
                "(while the app is imported, or in a start, stop or exit listener): the "
                "answer comes through that thread; publish once the app runs"
            )
        if in_listener() and self._targets_itself(options):
            raise RuntimeError(
                f"a listener of worker {self.worker_id} publishing {channel!r} to the tree "
                "would wait for its own listeners, which run once it returns: pass "
                "include_self=False (or publish from another thread)"
            )

    def _targets_itself(self, options: PublishOptions) -> bool:
        return (
            options.include_self
            and (options.to is None or self.worker_id in options.to)
            and (options.to_generation is None or options.to_generation == self.generation)
        )

    def _timed_out(self, pending: Pending) -> TimeoutError:
        self._forget(pending.id)
        return TimeoutError(
            f"no answer from the master to the tree publish on {pending.channel!r} "
            f"within {pending.wait:g}s"
        )

    def _forget(self, request_id: int) -> None:
        with self._lock:
            self._waiting.pop(request_id, None)

    # -- the I/O thread -----------------------------------------------------------

    def flush(self, send: Callable[[bytes], None]) -> None:
        """Send the publishes queued since the last call."""
        with self._lock:
            frames, self._outbox = self._outbox, []
        for frame in frames:
            send(frame)

    def on_reply(self, message: Message) -> None:
        """The master's TREE_REPLY: resolve its caller's future (if it still waits)."""
        with self._lock:
            future = self._waiting.pop(message["id"], None)
        if future is None or future.done():  # timed out, or cancelled
            return
        error = message.get("error")
        try:
            if error is not None:
                future.set_exception(TreePublishError(error["code"], error["message"]))
            else:
                future.set_result(TreeReply.from_dict(message["reply"]))
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            return
        except ProtocolError as exc:
            future.set_exception(exc)

    def close(self, reason: str) -> None:
        """No more publishes: the callers still waiting get ``RuntimeError(reason)``."""
        with self._lock:
            self._closed = reason
            waiting, self._waiting = self._waiting, {}
            self._outbox.clear()
        for future in waiting.values():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(RuntimeError(reason))


def _runs_an_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_current: TreeClient | None = None


def current() -> TreeClient:
    """The client of the worker running in this process; ``RuntimeError`` elsewhere."""
    client = _current
    if client is None:
        raise RuntimeError(
            "procbus.tree.publish works in a procbus worker only (in the master, use "
            "Master.publish or procbus ctl publish)"
        )
    return client


@contextlib.contextmanager
def serving(client: TreeClient) -> Iterator[TreeClient]:
    """Make `client` the one `current` returns while its worker runs."""
    global _current
    _current = client
    try:
        yield client
    finally:
        if _current is client:
            _current = None
