"""A worker's listeners run on a thread of their own, one publish at a time.

The worker's main thread runs its I/O loop: it reads publishes, sends replies
and heartbeats, and must never block for long, or the master, hearing no
heartbeat, takes the worker for hung and aborts it. A listener may take as
long as it likes (a reload, a cache warm-up, a drain): past the publish's
deadline the master reports it as a timeout, but the worker lives on. So the
listeners run on one long-lived thread, one publish after the other in the
order they arrived, and for each publish every listener in priority order, as
on any wspbus.

ZeroMQ sockets are not thread-safe: the runner touches none. It hands each
outcome back through a queue and wakes the loop, which sends the reply.

While a publish's listeners run, `publish_deadline` says until when the
master waits for their answer (the publish's timeout from the moment the loop
read it): an ``async def`` listener, run on an ASGI app's event loop, is given
up there instead of holding the runner for ever.

The publishes waiting for the runner are bounded (`MAX_BACKLOG`): behind a
listener that never returns, a further publish is refused at once (the loop
answers it with an error) instead of memory growing without end. A new
worker's retained publishes (`procbus.worker.catchup`) run here too, in order
with the others, and are never refused: the master's store bounds them.

`in_listener` says whether code runs for one of the master's publishes (on
this thread, or in an async listener's coroutine on the app's loop): a
listener that publishes to the tree and waits for this worker's own answer
would wait for itself (`procbus.worker.tree_client` refuses it).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

from procbus.bus import Bus, ListenerOutcome
from procbus.protocol import Message

MAX_BACKLOG: Final = 1000
"""Publishes a worker holds at once (the one running and those waiting)."""

_running = threading.local()


class _Listening:
    """The publish whose listeners run now; `active` until they returned."""

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True


_listening: ContextVar[_Listening | None] = ContextVar("procbus_listening", default=None)
"""A context variable, not a thread-local: an async listener's coroutine runs in a task
whose context is copied from the runner thread's (``run_coroutine_threadsafe``), so it
sees it too; a task it spawns that outlives the publish sees it inactive."""


def in_listener() -> bool:
    """Whether this code runs for the listeners of a publish from the master: on the
    runner thread, or in an async listener's coroutine, while that publish runs."""
    listening = _listening.get()
    return listening is not None and listening.active


def publish_deadline() -> float | None:
    """When the master stops waiting for the publish whose listeners run on this
    thread (`time.monotonic`), or None outside the runner's publishes."""
    deadline: float | None = getattr(_running, "deadline", None)
    return deadline


@dataclass(frozen=True, slots=True)
class Finished:
    """The listeners of publish `seq` ran: what each one did."""

    seq: int
    outcomes: list[ListenerOutcome]
    raised: BaseException | None = None
    """``SystemExit`` or ``KeyboardInterrupt`` from a listener: the worker ends."""
    retained: bool = False
    """A retained publish of the worker's catch-up: nobody waits for its answer."""


class ListenerRunner:
    """One thread that runs the worker's listeners for the master's publishes.

    `submit`, `finished` and `stop` are for the I/O thread only; the runner
    thread calls `wake` after each publish whose outcome waits in `finished`.
    """

    def __init__(self, bus: Bus, wake: Callable[[], None], max_backlog: int = MAX_BACKLOG) -> None:
        if max_backlog < 1:
            raise ValueError(f"max_backlog must be at least 1, got {max_backlog}")
        self.max_backlog = max_backlog
        self.backlog = 0
        """Publishes submitted whose outcome was not collected yet."""
        self._bus = bus
        self._wake = wake
        self._inbox: queue.SimpleQueue[tuple[float, Sequence[Message], bool] | None] = (
            queue.SimpleQueue()
        )
        self._outbox: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self._stopping = False
        self._woken = False
        """Set by the runner thread when it wakes the loop, cleared by `finished`:
        outcomes that finish meanwhile ride on the same wake-up."""
        # A daemon: a quick stop (QUIT, the master gone) does not wait for a
        # listener that may never return.
        self._thread = threading.Thread(target=self._run, name="listeners", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, messages: Sequence[Message], *, retained: bool = False) -> Sequence[Message]:
        """Queue `messages` (PUBLISHes, in order) for the listeners, in one hand-off.

        Returns those refused because the backlog is full (the last ones); `retained`
        publishes (a catch-up's) are all accepted.
        """
        room = len(messages) if retained else max(0, self.max_backlog - self.backlog)
        accepted, refused = messages[:room], messages[room:]
        if accepted:
            self.backlog += len(accepted)
            self._inbox.put((time.monotonic(), accepted, retained))
        return refused

    def finished(self) -> list[Finished]:
        """The publishes whose listeners ran since the last call, in order."""
        found: list[Finished] = []
        self._woken = False  # before reading: a later outcome wakes the loop again
        while True:
            try:
                found.append(self._outbox.get_nowait())
            except queue.Empty:
                break
        self.backlog -= len(found)
        return found

    def stop(self) -> None:
        """Start no further publish: the one running finishes, those waiting are dropped.

        A graceful stop calls this once every publish the master sent before it
        drained the worker was answered (`procbus.worker.drain`): nothing waits
        then, unless the drain ran out of time.
        """
        self._stopping = True
        self._inbox.put(None)

    def join(self, timeout: float | None) -> bool:
        """Wait for the runner thread to end (after `stop`); True if it did."""
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while (batch := self._inbox.get()) is not None:
            received, messages, retained = batch
            for message in messages:
                if self._stopping:
                    break
                seq: int = message["seq"]
                _running.deadline = received + message["timeout"]
                listening = _Listening()
                token = _listening.set(listening)
                try:
                    outcomes = self._bus.run_listeners(
                        message["channel"], *message["args"], **message["kwargs"]
                    )
                except BaseException as exc:  # SystemExit, KeyboardInterrupt
                    self._hand_back(Finished(seq, [], exc, retained))
                    return
                finally:
                    _running.deadline = None
                    listening.active = False
                    _listening.reset(token)
                self._hand_back(Finished(seq, outcomes, retained=retained))

    def _hand_back(self, done: Finished) -> None:
        self._outbox.put(done)
        if not self._woken:
            self._woken = True
            self._wake()
