"""The tree from a worker's code: publish on every process and get every answer.

The request that changes a price is served by one worker; every worker's
cache must drop it::

    from procbus import bus, tree

    @bus.subscribe("cache.clear")          # in every worker (the app module)
    def drop(key):
        return CACHE.pop(key, None) is not None

    def update_price(key, price):          # in one worker, serving a request
        save(key, price)
        reply = tree.publish("cache.clear", key, timeout=5)
        reply.raise_for_failures()         # ChannelFailures naming each failed worker

In an ASGI app, ``await tree.apublish(...)`` (the same arguments) waits
without blocking the event loop.

The master runs the publish exactly as its own tree publish (`Master.publish`):
its own listeners, then every subscribed worker, this one included unless
``include_self=False``, under the same deadline (``timeout``: by default the
master's ``publish_timeout``) and the same options (``require``, ``to``,
``to_generation``, ``retain``, `procbus.publishing`). The answer is the same
`TreeReply` a caller in the master gets: every worker's status, results and
errors; ``ok`` and ``raise_for_failures`` follow the requirement.

- The master refuses, with `procbus.errors.TreePublishError` and its one-line
  message: ``start``, ``stop``, ``exit`` and ``graceful`` (they stay with the
  master and ``procbus ctl``), ``log``, ``main`` and ``procbus.metrics``, a bad
  option or target, more than 64 tree publishes of one worker in flight.
- No answer within the timeout plus a margin (the master gone, say):
  ``TimeoutError``. Outside a procbus worker: ``RuntimeError``.
- A listener of a publish from the master that publishes with itself included
  would wait for its own listeners, which run once it returns:
  ``RuntimeError`` at once; pass ``include_self=False``. Likewise the blocking
  form on an event loop's thread (use ``apublish``), and publishing while the
  app is imported or from a ``start``/``stop``/``exit`` listener.

The event stream shows each worker's publish (``worker_publish``: the worker,
the channel, allowed or why not; never argument values).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from procbus.master.relay import TreeReply
from procbus.publishing import PublishOptions, Require
from procbus.worker.tree_client import current

__all__ = ["TreeReply", "apublish", "publish"]


def publish(
    channel: str,
    *args: Any,
    timeout: float | None = None,
    require: Require = "all",
    to: Iterable[int] | None = None,
    to_generation: int | None = None,
    include_self: bool = True,
    retain: bool = False,
    clear: bool = False,
    **kwargs: Any,
) -> TreeReply:
    """Publish `channel` on the whole tree from this worker; the tree's `TreeReply`.

    Blocks the calling thread until the requirement is decided (at most `timeout`
    and a margin). See the module docstring.
    """
    options = _options(
        require, to, to_generation, include_self=include_self, retain=retain, clear=clear
    )
    return current().publish(channel, args, kwargs, timeout, options)


async def apublish(
    channel: str,
    *args: Any,
    timeout: float | None = None,
    require: Require = "all",
    to: Iterable[int] | None = None,
    to_generation: int | None = None,
    include_self: bool = True,
    retain: bool = False,
    clear: bool = False,
    **kwargs: Any,
) -> TreeReply:
    """`publish`, awaited: only the calling task waits, not the event loop."""
    options = _options(
        require, to, to_generation, include_self=include_self, retain=retain, clear=clear
    )
    return await current().apublish(channel, args, kwargs, timeout, options)


def _options(
    require: Require,
    to: Iterable[int] | None,
    to_generation: int | None,
    *,
    include_self: bool,
    retain: bool,
    clear: bool,
) -> PublishOptions:
    targets = None if to is None else tuple(to)
    return PublishOptions(require, targets, to_generation, retain, clear, include_self)
