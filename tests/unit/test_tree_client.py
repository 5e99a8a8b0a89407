"""A worker's tree publish from its app's threads (`procbus.tree`, `TreeClient`).

The test plays the worker's I/O thread: it waits for the client's wake-up, takes
the TREE_PUBLISH frames the client hands it (`flush`), and gives it the master's
TREE_REPLY (`on_reply`). No process, no socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from procbus import protocol, tree
from procbus.bus import Bus, ChannelFailures
from procbus.errors import RemoteError, TreePublishError
from procbus.master.relay import TreeReply, WorkerResult, WorkerStatus
from procbus.protocol import Message, MsgType
from procbus.worker.awaiter import LoopAwaiter
from procbus.worker.runner import ListenerRunner
from procbus.worker.tree_client import TreeClient, serving
from tests.helpers import wait_until


class IOThread:
    """The worker's I/O thread, played by the test: the frames the client hands it."""

    def __init__(self, margin: float = 2.0) -> None:
        self.woken = threading.Event()
        self.client = TreeClient(1, 4, self.woken.set, default_timeout=3.0, margin=margin)
        self.sent: list[Message] = []

    def next_request(self, timeout: float = 5.0) -> Message:
        """Wait for a wake-up and take the next TREE_PUBLISH the client queued."""

        def arrived() -> bool:
            if self.woken.wait(0.01):
                self.woken.clear()
                self.client.flush(lambda frame: self.sent.append(protocol.decode(frame)))
            return bool(self.sent)

        wait_until(arrived, timeout)
        message = self.sent.pop(0)
        assert message.type is MsgType.TREE_PUBLISH
        return message

    def answer(self, request: Message, **answer: Any) -> None:
        """The master's TREE_REPLY to `request`."""
        frame = protocol.encode(MsgType.TREE_REPLY, {"id": request["id"], **answer})
        self.client.on_reply(protocol.decode(frame))


def in_thread(call: Callable[[], Any]) -> concurrent.futures.Future[Any]:
    """Run `call` on a thread of its own (an app thread); its outcome as a future."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(call())
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future


def sample_reply() -> TreeReply:
    reply = TreeReply("cache.clear", 8)
    reply.master.append(None)
    reply.workers[1] = WorkerResult(1, 101, 4, WorkerStatus.OK, [{"dropped": 1}])
    error = RemoteError(2, "KeyError", "'db'", listener="app.clear", traceback="tb")
    reply.workers[2] = WorkerResult(2, 102, 4, WorkerStatus.ERROR, [None], [error])
    return reply


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture
def io() -> Iterator[IOThread]:
    made = IOThread()
    with serving(made.client):
        yield made
    made.client.close("the test ended")


def test_a_publish_is_handed_to_the_io_thread_and_returns_the_masters_reply(
    io: IOThread,
) -> None:
    """Steps: an app thread publishes 'cache.clear' with an argument, a keyword and
    require any; the I/O thread sends it; the master answers with a reply in which
    worker 2's listener failed.
    Expected: the request carries the channel, arguments, the worker's default timeout
    and the options; the caller gets a TreeReply equal to the master's (same dict, met
    by any); raise_for_failures raises ChannelFailures naming worker 2."""
    caller = in_thread(lambda: tree.publish("cache.clear", "k", prefix="p", require="any"))
    request = io.next_request()
    assert (request["channel"], request["args"], request["kwargs"]) == (
        "cache.clear", ["k"], {"prefix": "p"},
    )  # fmt: skip
    assert (request["timeout"], request["options"]) == (3.0, {"require": "any"})
    sent = sample_reply()
    sent.require = "any"
    io.answer(request, reply=sent.to_dict())
    reply = caller.result(5)
    assert isinstance(reply, TreeReply)
    assert reply.to_dict() == sent.to_dict() and reply.ok
    reply.require = "all"
    with pytest.raises(ChannelFailures) as caught:
        reply.raise_for_failures()
    assert [str(e) for e in caught.value.get_instances()] == [
        "worker 2: KeyError: 'db' in listener app.clear"
    ]


def test_a_refusal_raises_the_masters_message(io: IOThread) -> None:
    caller = in_thread(lambda: tree.publish("stop"))
    message = "worker 1 cannot publish 'stop' to the tree: start, stop, exit and graceful ..."
    io.answer(io.next_request(), error={"code": "forbidden", "message": message})
    with pytest.raises(TreePublishError) as caught:
        caller.result(5)
    assert (caught.value.code, str(caught.value)) == ("forbidden", message)


def test_no_answer_within_timeout_and_margin_raises_timeout_error() -> None:
    """Steps: a client with a 0.05 s margin; publish with timeout 0.1; nobody answers;
    then the answer comes late.
    Expected: TimeoutError naming the channel and the wait; the late answer is ignored."""
    io = IOThread(margin=0.05)
    with serving(io.client):
        caller = in_thread(lambda: tree.publish("slow", timeout=0.1))
        request = io.next_request()
        with pytest.raises(TimeoutError) as caught:
            caller.result(5)
        assert str(caught.value) == (
            "no answer from the master to the tree publish on 'slow' within 0.15s"
        )
        io.answer(request, reply=sample_reply().to_dict())  # ignored: nobody waits
    io.client.close("done")


def test_outside_a_procbus_worker_publish_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError) as caught:
        tree.publish("cache.clear")
    assert str(caught.value).startswith("procbus.tree.publish works in a procbus worker only")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda: tree.publish("c", object()),
            TypeError,
            "the tree publish on 'c' cannot be sent: ",
        ),
        (lambda: tree.publish("c", timeout=0), ValueError, "timeout must be a finite number"),
        (lambda: tree.publish("c", require="most"), ValueError, 'require must be "all", '),
        (
            lambda: tree.publish("c", nested(70)),
            ValueError,
            "the tree publish on 'c' holds more than the master accepts from a worker: ",
        ),
    ],
)
def test_what_the_master_would_refuse_unread_raises_at_once_in_the_caller(
    io: IOThread, call: Callable[[], Any], error: type[Exception], message: str
) -> None:
    """Steps: publish an unserializable argument, a timeout of 0, a bad requirement, an
    argument nested deeper than the master accepts. Expected: each raises at once in the
    caller, naming what is wrong; nothing was handed to the I/O thread."""
    with pytest.raises(error) as caught:
        call()
    assert message in str(caught.value)
    assert not io.woken.is_set()


def test_on_the_io_thread_itself_publish_raises_instead_of_waiting_for_itself(
    io: IOThread,
) -> None:
    io.client.io_thread = threading.get_ident()
    with pytest.raises(RuntimeError) as caught:
        tree.publish("cache.clear")
    assert "on the worker's I/O thread" in str(caught.value)


def test_a_closed_client_fails_the_waiting_callers_and_refuses_new_ones(io: IOThread) -> None:
    """Steps: an app thread publishes; the worker stops (close) before the answer; then
    another publish. Expected: the waiting caller gets RuntimeError with the reason; the
    new publish raises it at once."""
    caller = in_thread(lambda: tree.publish("cache.clear"))
    io.next_request()
    io.client.close("worker 1 is stopping")
    with pytest.raises(RuntimeError, match="worker 1 is stopping"):
        caller.result(5)
    with pytest.raises(RuntimeError, match="worker 1 is stopping"):
        tree.publish("cache.clear")


# -- a listener that publishes -----------------------------------------------------


def run_publish(bus: Bus, channel: str) -> Any:
    """Run the listeners of `channel` on a real listener runner; its outcome's first
    listener result or error."""
    finished = threading.Event()
    runner = ListenerRunner(bus, finished.set)
    runner.start()
    body = {"seq": 1, "channel": channel, "args": [], "kwargs": {}, "timeout": 5.0}
    runner.submit([Message(MsgType.PUBLISH, body)])
    assert finished.wait(5)
    (done,) = runner.finished()
    runner.stop()
    assert runner.join(5)
    outcome = done.outcomes[0]
    return outcome.error if outcome.error is not None else outcome.result


def test_a_listener_publishing_to_itself_raises_instead_of_waiting_for_itself(
    io: IOThread,
) -> None:
    """Steps: on the listener thread, a listener publishes to the tree with itself
    included (the default, and to its own id).
    Expected: RuntimeError at once, saying it would wait for its own listeners and
    suggesting include_self=False; nothing was handed to the I/O thread."""
    bus = Bus()
    bus.subscribe("default", lambda: tree.publish("cache.clear"))
    bus.subscribe("own", lambda: tree.publish("cache.clear", to=[1]))
    for channel in ("default", "own"):
        error = run_publish(bus, channel)
        assert isinstance(error, RuntimeError)
        assert "would wait for its own listeners" in str(error)
        assert "include_self=False" in str(error)
    assert not io.woken.is_set()


@pytest.mark.parametrize(
    "options",
    [{"include_self": False}, {"to": [2]}, {"to_generation": 3}],
)
def test_a_listener_publishing_to_other_workers_only_goes_through(
    io: IOThread, options: dict[str, Any]
) -> None:
    """Steps: on the listener thread, a listener publishes leaving this worker out
    (include_self=False, to another worker, to another generation); the master answers.
    Expected: the listener's result is the master's reply."""
    bus = Bus()
    bus.subscribe("relay", lambda: tree.publish("cache.clear", **options).seq)
    outcome = in_thread(lambda: run_publish(bus, "relay"))
    io.answer(io.next_request(), reply=sample_reply().to_dict())
    assert outcome.result(5) == 8


# -- ASGI: await ---------------------------------------------------------------------


class AppLoop:
    """An asyncio loop on a thread of its own, as an ASGI worker's app thread runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Any) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def app_loop() -> Iterator[AppLoop]:
    made = AppLoop()
    try:
        yield made
    finally:
        made.close()


def test_apublish_awaits_the_reply_without_blocking_the_loop(
    io: IOThread, app_loop: AppLoop
) -> None:
    """Steps: on an event loop, a coroutine awaits apublish while another counts loop
    turns; the I/O thread answers once the counter moved.
    Expected: the counter moved while apublish waited; the reply is the master's."""
    ticks = [0]

    async def ticker() -> None:
        while True:
            ticks[0] += 1
            await asyncio.sleep(0.001)

    async def publish() -> TreeReply:
        task = asyncio.ensure_future(ticker())
        try:
            return await tree.apublish("cache.clear", "k")
        finally:
            task.cancel()

    caller = app_loop.run(publish())
    request = io.next_request()
    wait_until(lambda: ticks[0] > 5)
    io.answer(request, reply=sample_reply().to_dict())
    assert caller.result(5).to_dict() == sample_reply().to_dict()


def test_apublish_times_out_and_a_cancelled_one_is_forgotten(app_loop: AppLoop) -> None:
    """Steps: apublish with timeout 0.1 and a 0.05 s margin, unanswered; another
    cancelled while it waits; then answers to both come.
    Expected: TimeoutError for the first, CancelledError for the second; the late
    answers are ignored."""
    io = IOThread(margin=0.05)
    with serving(io.client):
        slow = app_loop.run(tree.apublish("slow", timeout=0.1))
        first = io.next_request()
        with pytest.raises(TimeoutError):
            slow.result(5)
        cancelled = app_loop.run(tree.apublish("other"))
        second = io.next_request()
        cancelled.cancel()
        with pytest.raises(concurrent.futures.CancelledError):
            cancelled.result(5)
        for request in (first, second):
            io.answer(request, reply=sample_reply().to_dict())
    io.client.close("done")


def test_the_blocking_publish_on_an_event_loop_raises_and_points_to_apublish(
    io: IOThread, app_loop: AppLoop
) -> None:
    async def blocking() -> Any:
        return tree.publish("cache.clear")

    with pytest.raises(RuntimeError) as caught:
        app_loop.run(blocking()).result(5)
    assert "await procbus.tree.apublish" in str(caught.value)


def test_an_async_listener_awaiting_a_publish_to_itself_raises_instead_of_waiting(
    io: IOThread, app_loop: AppLoop
) -> None:
    """Steps: an async listener (run on the app's loop by the bus's awaiter, the listener
    thread waiting for it) awaits apublish with itself included.
    Expected: RuntimeError suggesting include_self=False, at once."""
    bus = Bus()
    bus.awaiter = app_loop.run(_make_awaiter()).result(5)

    async def relay() -> Any:
        return await tree.apublish("cache.clear")

    bus.subscribe("relay", relay)
    error = run_publish(bus, "relay")
    assert isinstance(error, RuntimeError) and "include_self=False" in str(error)
    assert not io.woken.is_set()


async def _make_awaiter() -> LoopAwaiter:
    return LoopAwaiter(asyncio.get_running_loop())
