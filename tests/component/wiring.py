"""The master's worker side on ``inproc://`` sockets: a hub, a real pool of fake
processes and a tree publisher, wired as the master wires them (`wire`), and worker
1's sockets, through which a test speaks for it as `procbus.worker.link` would."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import zmq

from procbus import protocol
from procbus.bus import Bus
from procbus.master.hub import Hub
from procbus.master.loop import EventLoop
from procbus.master.planner import WorkerProc, WorkerState
from procbus.master.pool import Pool
from procbus.master.publisher import TreePublisher
from procbus.master.retainer import Retainer
from procbus.protocol import MsgType
from tests.component.fakes import FakeProcesses, Fate, Recorder, fake_pool
from tests.helpers import FakeClock, Sockets, keep_time_moving


@dataclass
class Wired:
    """The master's side (hub, pool, publisher) and worker 1's sockets."""

    loop: EventLoop
    pool: Pool
    hub: Hub
    publisher: TreePublisher
    worker: WorkerProc
    sockets: Sockets
    processes: FakeProcesses

    @property
    def retainer(self) -> Retainer:
        return self.publisher.retainer

    def dealer(self, identity: bytes) -> zmq.Socket[bytes]:
        """A DEALER to the hub's ROUTER that names itself `identity`."""
        dealer = self.sockets.socket(zmq.DEALER, identity=identity)
        dealer.connect("inproc://replies")
        return dealer

    def hello(self, **changes: Any) -> bytes:
        """Worker 1's hello, with `changes`."""
        worker = self.worker
        body = {"worker": 1, "generation": 1, "pid": worker.pid, "topic": worker.topic}
        return protocol.encode(MsgType.HELLO, {**body, **changes})

    def settle(self, predicate: Any) -> None:
        assert self.loop.run_until(predicate, 5.0)

    def say_hello(self) -> zmq.Socket[bytes]:
        """Worker 1 says hello (it starts): its DEALER."""
        dealer = self.dealer(self.worker.topic)
        dealer.send(self.hello())
        self.settle(lambda: self.worker.hello)
        return dealer

    def run(self, dealer: zmq.Socket[bytes]) -> zmq.Socket[bytes]:
        """Worker 1, which said hello on `dealer`, subscribes and runs: its SUB."""
        sub = self.sockets.socket(zmq.SUB)
        sub.connect("inproc://publish")
        sub.subscribe(protocol.BROADCAST_TOPIC)
        sub.subscribe(self.worker.topic)
        self.settle(lambda: self.worker.subscribed)
        dealer.send(protocol.encode(MsgType.STATE, {"state": "running"}))
        self.settle(lambda: self.worker.state is WorkerState.RUNNING)
        return sub

    def run_worker(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes]]:
        """Worker 1 says hello, subscribes and runs: (its DEALER, its SUB)."""
        dealer = self.say_hello()
        return dealer, self.run(dealer)


BOOT_FAILED = 4
"""The exit status of a worker that could not boot, for the wired pool."""


@contextlib.contextmanager
def wire(
    loop: EventLoop,
    clock: FakeClock,
    sockets: Sockets,
    processes: FakeProcesses,
    recorder: Recorder,
    *,
    feed: bool = False,
) -> Iterator[Wired]:
    """One worker slot whose process (worker 1) says nothing by itself; with `feed`,
    the hub sends new workers the retained publishes, as the master's does."""
    xpub = sockets.socket(zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)
    xpub.bind("inproc://publish")
    router = sockets.socket(zmq.ROUTER)
    router.bind("inproc://replies")
    processes.plan(1, 1, Fate.HANG)
    pool = fake_pool(loop, processes, recorder.emit, target=1, boot_failed_status=BOOT_FAILED)
    hub = Hub(xpub, router, loop, pool)
    pool.on_ready, pool.on_gone = hub.welcome, hub.worker_gone
    pool.last_words = hub.await_last_words
    pool.on_drain = hub.drain
    loop.add_reader(xpub, hub.on_xpub)
    loop.add_reader(router, hub.on_router)
    publisher = TreePublisher(
        Bus(), pool, loop, deadline=lambda: 5.0, emit=recorder.emit, request_exit=lambda: None
    )
    publisher.hub = hub
    if not feed:
        hub.feed = None
    keep_time_moving(loop, clock, 0.001)
    pool.activate()
    (worker,) = pool.by_pid.values()
    try:
        yield Wired(loop, pool, hub, publisher, worker, sockets, processes)
    finally:
        loop.remove_reader(xpub)
        loop.remove_reader(router)


def received(sock: zmq.Socket[bytes]) -> protocol.Message:
    assert sock.poll(1000), "nothing received"
    return protocol.decode(sock.recv_multipart()[-1])
