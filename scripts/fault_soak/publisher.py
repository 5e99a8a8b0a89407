"""Tree publishes during the soak: ``demo.message`` to every worker, one at a time.

A thread publishes through `procbus.client.Client` on the named control
socket (so it follows the master across restarts and upgrades), every
`interval` seconds, and records each reply: the tree's answer, with a status
per worker, or the control error when the master did not answer. After an
error the client is replaced, so that a request queued on a dead connection
cannot reach the next master late.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Final

from fault_soak.journal import PublishRecord
from fault_soak.tree import Tree
from procbus.client import Client, ControlError

CHANNEL: Final = "demo.message"


class Publisher:
    def __init__(self, tree: Tree, interval: float, timeout: float, seed: int) -> None:
        self.tree = tree
        self.interval = interval
        self.timeout = timeout
        self.rng = random.Random(seed)
        self.records: list[PublishRecord] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(self.timeout + 2)

    def _run(self) -> None:
        client: Client | None = None
        number = 0
        try:
            while not self.stopping.is_set():
                number += 1
                if client is None:
                    client = self.tree.client(self.timeout)
                start = time.monotonic()
                try:
                    result = client.call("publish", CHANNEL, f"soak {number}")
                    self.records.append(PublishRecord(number, start, time.monotonic(), result))
                except ControlError as exc:
                    self.records.append(
                        PublishRecord(
                            number, start, time.monotonic(), None, exc.code.value, exc.message
                        )
                    )
                    client.close()
                    client = None
                self.stopping.wait(self.interval * self.rng.uniform(0.5, 1.5))
        finally:
            if client is not None:
                client.close()
