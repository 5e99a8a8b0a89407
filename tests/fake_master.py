"""A master's two worker sockets, driven by hand: for tests of the worker's side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq

from procbus import protocol
from procbus.protocol import MsgType
from procbus.worker.link import WorkerLink
from tests.helpers import wait_until


class FakeMaster:
    """The master's two sockets, bound on ipc in a temporary directory."""

    def __init__(self, context: zmq.Context[Any], directory: Path) -> None:
        self.xpub = context.socket(zmq.XPUB)
        self.router = context.socket(zmq.ROUTER)
        for sock in (self.xpub, self.router):
            sock.linger = 0
        self.publish_endpoint = f"ipc://{directory}/pub"
        self.reply_endpoint = f"ipc://{directory}/rep"
        self.xpub.bind(self.publish_endpoint)
        self.router.bind(self.reply_endpoint)

    def publish(
        self, seq: int, channel: str = "ch", *args: Any, to: list[bytes] | None = None
    ) -> None:
        """Publish `seq` on the broadcast topic; with `to`, for those worker topics only."""
        template = protocol.PublishTemplate(channel, list(args), {}, 1.0)
        self.send_frame(template.frame(seq, to))

    def send_frame(self, frame: bytes) -> None:
        self.xpub.send_multipart([protocol.BROADCAST_TOPIC, frame])

    def drain(self, topic: bytes, last_seq: int) -> None:
        self.xpub.send_multipart([topic, protocol.encode(MsgType.DRAIN, {"last_seq": last_seq})])

    def welcome(self, identity: bytes, next_seq: int) -> None:
        self.router.send_multipart(
            [identity, protocol.encode(MsgType.WELCOME, {"next_seq": next_seq})]
        )

    def retained(self, identity: bytes, frames: list[bytes], more: bool = False) -> None:
        """Send the worker `identity` retained publishes (PUBLISH frames)."""
        body = {"frames": frames, "more": more}
        self.router.send_multipart([identity, protocol.encode(MsgType.RETAINED, body)])

    def receive_frame(self) -> bytes:
        assert self.router.poll(5000), "no message from the worker"
        _identity, frame = self.router.recv_multipart()
        return frame

    def receive(self) -> protocol.Message:
        return protocol.decode(self.receive_frame())

    def close(self) -> None:
        self.xpub.close(0)
        self.router.close(0)

    def wait_subscribed(self, link: WorkerLink, nudge: bool = True) -> None:
        """Until the worker's own topic arrives on XPUB: its subscription is in place.

        After a reconnect the SUB socket sends its subscriptions again once its
        thread looks at it: with `nudge`, the caller's thread does (the worker's
        loop polls it all the time; a test that runs that loop must not).
        """
        expected = b"\x01" + link.topic

        def subscribed() -> bool:
            if nudge:
                link.sub.poll(0)
            return bool(self.xpub.poll(10)) and self.xpub.recv() == expected

        wait_until(subscribed, 5)
