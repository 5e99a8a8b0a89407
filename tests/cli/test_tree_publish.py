"""`procbus run` with apps that publish to the tree from a worker (`procbus.tree`).

Each test runs once with a WSGI app (``tree.publish`` on a request thread) and once
with its ASGI twin (``await tree.apublish`` on the app's event loop):
`tests.cli.tree_apps`.
"""

from __future__ import annotations

import http.client
import json
from typing import Any, Final

import pytest

from tests.cli.hosting import RunProcess, running
from tests.helpers import wait_until
from tests.processes import Events

pytestmark = pytest.mark.slow

APPS: Final = {
    "wsgi": "tests.cli.tree_apps:publisher",
    "asgi": "tests.cli.tree_apps:publisher_asgi",
}
each_interface = pytest.mark.parametrize("interface", sorted(APPS))


def call(proc: RunProcess, method: str, path: str) -> tuple[int, dict[str, Any]]:
    """One request on a new connection; the status and the JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", proc.port(), timeout=20)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def serve(interface: str, workers: int = 3) -> Any:
    return running(APPS[interface], "-b", "127.0.0.1:0", workers=workers)


@each_interface
def test_a_publish_from_a_worker_reaches_every_worker_and_returns_their_answers(
    interface: str,
) -> None:
    """Steps: 3 workers; a request makes the worker serving it publish 'cache.clear'
    with a key; then again with include_self=0; an event watcher runs meanwhile.
    Expected: the first reply is ok with all 3 workers, the caller included, each
    answering the key with its own id and pid; the second lists the 2 others only; a
    worker_publish event names the caller and the channel, and no event holds the
    key."""
    with serve(interface) as proc:
        events = Events(proc)
        try:
            pids = {w["id"]: w["pid"] for w in proc.workers()}
            status, body = call(proc, "GET", "/publish?channel=cache.clear&key=price:42")
            assert status == 200, body
            caller, reply = body["worker"], body["reply"]
            assert body["ok"] and sorted(reply["workers"]) == ["1", "2", "3"]
            for worker_id, result in reply["workers"].items():
                answer = {"worker": int(worker_id), "pid": pids[int(worker_id)], "key": "price:42"}
                assert (result["status"], result["results"]) == ("ok", [answer])
            event = events.find("worker_publish", worker=caller, channel="cache.clear")
            assert event is not None and event["allowed"] is True
            status, body = call(proc, "GET", "/publish?channel=cache.clear&key=k&include_self=0")
            assert status == 200 and body["ok"], body
            others = sorted(str(w) for w in pids if w != body["worker"])
            assert sorted(body["reply"]["workers"]) == others
            assert "price:42" not in repr(events.seen)
        finally:
            events.close()


@each_interface
def test_a_forbidden_channel_is_a_one_line_error_in_the_app(interface: str) -> None:
    """Steps: 2 workers; a request makes its worker publish 'stop', then 'graceful'.
    Expected: each raises TreePublishError in the app, code forbidden, one line naming
    the worker and the channel; both workers still run, none was restarted."""
    with serve(interface, workers=2) as proc:
        before = {w["id"]: w["pid"] for w in proc.workers()}
        for channel in ("stop", "graceful"):
            status, body = call(proc, "GET", f"/publish?channel={channel}")
            assert status == 400, body
            assert (body["error"], body["code"]) == ("TreePublishError", "forbidden")
            expected = f"worker {body['worker']} cannot publish {channel!r} to the tree: "
            assert body["message"].startswith(expected) and "\n" not in body["message"]
        assert {w["id"]: w["pid"] for w in proc.wait_running(2)} == before


@each_interface
def test_a_listener_publishing_to_itself_is_refused_and_to_the_others_answered(
    interface: str,
) -> None:
    """Steps: 3 workers; ctl publish to worker 1 a channel whose listener publishes to
    the tree with itself included (sync in WSGI, async in ASGI); then one whose listener
    leaves itself out.
    Expected: the first comes back at once with worker 1's RuntimeError suggesting
    include_self=False (no timeout); the second with the ids of workers 2 and 3."""
    channel = "relay" if interface == "wsgi" else "arelay"
    with serve(interface) as proc:
        result = proc.call("publish", channel, to="1", timeout=20)
        (error,) = result["workers"]["1"]["errors"]
        assert result["workers"]["1"]["status"] == "error"
        assert error["type"] == "RuntimeError" and "include_self=False" in error["message"]
        result = proc.call("publish", "relay.others", to="1", timeout=20)
        assert result["workers"]["1"]["results"] == [[2, 3]]


def test_the_asgi_example_drops_an_item_from_every_workers_cache() -> None:
    """Steps: the ASGI example with 2 workers; GET /items/42 until both workers cached
    it (new connections land on either; an item says which pid computed it); DELETE
    /items/42.
    Expected: 200, ok, both workers answered the publish their worker made, each having
    dropped the item it cached (1 each); a second DELETE finds nothing left (0 each)."""
    with running("examples.asgi_app:app", "-b", "127.0.0.1:0", workers=2) as proc:
        pids = {w["pid"] for w in proc.workers()}
        cached: set[int] = set()

        def both_cached() -> bool:
            status, body = call(proc, "GET", "/items/42")
            assert status == 200, body
            cached.add(body["computed_by"])
            return cached == pids

        wait_until(both_cached, 20)
        for dropped in (1, 0):
            status, body = call(proc, "DELETE", "/items/42")
            assert (status, body["ok"]) == (200, True), body
            assert {w: r[0]["dropped"] for w, r in body["workers"].items()} == {
                "1": dropped,
                "2": dropped,
            }
