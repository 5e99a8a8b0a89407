"""One path into the tree: a signal, a ``procbus ctl`` request and the Python API reach
a real `Master` through the same function.

The master here is built but never opened: it binds nothing and forks nothing
(its pool is not started). The control server is a real `ControlServer` on an
``ipc://`` socket in a short temporary directory, read by the master's own loop,
so the peer is identified the way it is in production (``SO_PEERCRED``); the
client is a DEALER in this process, read by the same loop.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq

from procbus import protocol
from procbus.bus import Bus
from procbus.master import Master
from procbus.master.control_server import ControlServer, ControlSettings
from procbus.master.jobs import Job, JobState
from procbus.protocol import MsgType
from tests.component.fakes import Recorder
from tests.helpers import Sockets

ME: str = f"uid {os.getuid()} pid {os.getpid()}"
"""How the master describes this process as a control peer (from SO_PEERCRED)."""


@pytest.fixture
def master(short_tmp: Path) -> Iterator[Master]:
    made = Master(
        "tests.tree.apps:echo", 2, name="component", runtime_dir=short_tmp / "rt", bus=Bus()
    )
    try:
        yield made
    finally:
        made.close()
        made.loop.close()


@dataclass
class Control:
    """A control server on the master's loop, a client, and what the master emitted."""

    master: Master
    server: ControlServer
    client: zmq.Socket[bytes]
    recorder: Recorder
    replies: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def send(self, command: str, *args: Any, wait: bool = True, **kwargs: Any) -> str:
        request_id = f"r{next(self._ids)}"
        body = {"id": request_id, "command": command, "args": list(args), "kwargs": kwargs}
        self.client.send(protocol.encode(MsgType.CONTROL_REQUEST, {**body, "wait": wait}))
        return request_id

    def reply(self, request_id: str) -> dict[str, Any]:
        """Run the master's loop until the reply to `request_id` is in."""
        assert self.master.loop.run_until(lambda: request_id in self.replies, 10.0)
        return self.replies.pop(request_id)

    def ask(self, command: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.reply(self.send(command, *args, **kwargs))

    def read_replies(self) -> None:
        while self.client.poll(0):
            reply = protocol.decode(self.client.recv(), expect=frozenset({MsgType.CONTROL_REPLY}))
            self.replies[reply["id"]] = reply.body

    def audits(self, command: str | None = None) -> list[dict[str, Any]]:
        return [a for a in self.recorder.named("command") if command in (None, a["command"])]


def serve(master: Master, sockets: Sockets, endpoint: str) -> Control:
    """A control server for `master` bound at `endpoint`, and a client connected to it."""
    router = sockets.socket(zmq.ROUTER)
    router.bind(endpoint)
    client = sockets.socket(zmq.DEALER)
    client.connect(endpoint)
    recorder = Recorder()
    master.event_stream.observers.append(lambda event, data: recorder.emit(event, **data))
    control = Control(
        master, ControlServer(master.commands, router, ControlSettings()), client, recorder
    )
    master.loop.add_reader(router, control.server.on_readable)
    master.loop.add_reader(client, control.read_replies)
    return control


@pytest.fixture
def control(master: Master, sockets: Sockets, short_tmp: Path) -> Control:
    return serve(master, sockets, f"ipc://{short_tmp}/ctl")


def test_sighup_ctl_reload_and_the_api_are_audited_alike_and_join_one_reload_job(
    control: Control, master: Master
) -> None:
    """Steps: in one turn of the master's loop, SIGHUP is delivered (as the loop delivers
    it), ``ctl reload`` arrives on the control socket, and a listener calls
    `Master.reload()`; then the master runs its queued jobs.
    Expected: three 'command' audit events, identical but for the peer (the signal,
    this process by its uid and pid, the Python API): reload, role admin, allowed;
    one reload job, queued once, which the API call returned and whose document the
    ctl client gets when it ends."""
    loop = master.loop
    request = control.send("reload")
    api: list[Job] = []
    loop.call_later(0, lambda: master.commands.run_signal(signal.SIGHUP))
    loop.call_later(0, lambda: api.append(master.reload()))
    assert loop.run_until(lambda: len(control.audits("reload")) == 3, 10.0)
    audits = control.audits("reload")
    assert sorted(a.pop("peer") for a in audits) == sorted(["signal SIGHUP", ME, "the Python API"])
    assert audits == [{"command": "reload", "role": "admin", "allowed": True, "reason": None}] * 3
    (job,) = api
    assert [j["job"] for j in master.jobs.listing()] == [job.id]
    assert len(control.recorder.named("job_queued")) == 1
    master.jobs.run_queued(stop=lambda: False)
    assert job.state is JobState.DONE
    reply = control.reply(request)
    assert reply["ok"] is True
    assert reply["result"] == job.to_dict()


def test_ctl_reload_without_waiting_gets_the_queued_job_a_signal_then_joins(
    control: Control, master: Master
) -> None:
    """Steps: ``ctl reload --no-wait``; then SIGHUP (from the loop, as ever); then the
    master runs its jobs.
    Expected: the client is answered at once with the job, queued; the signal joined
    that job (one job listed), which then ran to its end."""
    queued = control.ask("reload", wait=False)
    assert queued["ok"] is True and queued["result"]["state"] == "queued"
    master.loop.call_later(0, lambda: master.commands.run_signal(signal.SIGHUP))
    master.loop.run_once(0)
    assert len(control.audits("reload")) == 2
    listing = master.jobs.listing()
    assert [j["job"] for j in listing] == [queued["result"]["job"]]
    master.jobs.run_queued(stop=lambda: False)
    assert master.jobs.listing()[0]["state"] == "done"


def test_the_api_from_top_level_code_runs_its_job_at_once(
    control: Control, master: Master
) -> None:
    """Steps: a script (not a loop callback, the master not running) calls reload().
    Expected: the job has run when the call returns; it was audited as the Python API."""
    job = master.reload()
    assert job.state is JobState.DONE
    (audit,) = control.audits("reload")
    assert audit["peer"] == "the Python API"


def test_an_exiting_master_refuses_ctl_admin_commands_but_answers_status(
    control: Control, master: Master
) -> None:
    """Steps: the master is asked to exit (from its loop); then ctl asks for reload,
    status, and exit.
    Expected: reload is 'unavailable: the master is exiting' and queues nothing;
    status and exit are answered."""
    master.request_exit()
    refused = control.ask("reload")
    assert refused["ok"] is False
    assert refused["error"] == {"code": "unavailable", "message": "the master is exiting"}
    assert master.jobs.listing() == []
    status = control.ask("status")
    assert status["ok"] is True and status["result"]["master"]["pid"] == os.getpid()
    assert control.ask("exit")["ok"] is True


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (("frobnicate", [], {}), "unknown_command"),
        (("scale", ["many"], {}), "bad_arguments"),
        (("reload", [], {"batch": -1}), "bad_arguments"),
        (("kill", [99], {}), "not_found"),
    ],
)
def test_ctl_requests_the_master_cannot_run_get_their_error_codes(
    control: Control, request_: tuple[str, list[Any], dict[str, Any]], code: str
) -> None:
    """Steps: ctl sends an unknown command, bad arguments, or kill of no worker.
    Expected: a reply with ok false and the matching error code."""
    name, args, kwargs = request_
    reply = control.ask(name, *args, **kwargs)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code


def test_a_malformed_control_message_is_answered_bad_request_and_counted(
    control: Control,
) -> None:
    """Steps: the client sends bytes that are no control request, then a ping.
    Expected: an error reply 'bad_request' (with no id to match), counted; the ping is
    answered."""
    control.client.send(b"\x00garbage")
    assert control.master.loop.run_until(lambda: "" in control.replies, 10.0)
    assert control.replies.pop("")["error"]["code"] == "bad_request"
    assert control.server.bad_requests == 1
    assert control.ask("ping")["result"]["pid"] == os.getpid()


def test_a_peer_without_credentials_is_refused_even_ping_and_audited(
    master: Master, sockets: Sockets
) -> None:
    """Steps: serve the control socket on ``inproc://`` (no peer credentials at all, no
    key) and ping.
    Expected: 'forbidden'; the audit names an unauthenticated peer with no role."""
    control = serve(master, sockets, "inproc://control")
    reply = control.ask("ping")
    assert reply["error"]["code"] == "forbidden"
    (audit,) = control.audits("ping")
    assert audit["peer"] == "unauthenticated peer ''"
    assert (audit["role"], audit["allowed"], audit["reason"]) == (None, False, "forbidden")
