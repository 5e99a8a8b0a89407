"""The command path (`procbus.master.control.Commands`) over a fake tree: roles, the
audit, the error codes, which long commands join a job already asked for, and when
an answer comes.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from typing import Any

import pytest

from procbus.commands import SIGNAL_COMMANDS, ErrorCode, Role
from procbus.master.control import API, COALESCING, Answer, Commands, Peer
from procbus.master.jobs import Job, JobFailed, Jobs
from procbus.master.planner import WorkerProc
from procbus.master.relay import TreeReply
from procbus.publishing import DEFAULT, PublishOptions
from tests.component.fakes import Recorder

ADMIN = Peer(Role.ADMIN, "uid 1000 pid 7")
READER = Peer(Role.READ, "uid 1001 pid 8")
NOBODY = Peer(None, "unauthenticated peer ''")


class FakeTarget:
    """A `CommandTarget`: a job queue whose bodies return their arguments, publishes
    answered by `answer_publish`, and one worker (id 1)."""

    def __init__(self) -> None:
        self.pid = 4242
        self.generation = 3
        self.exiting = False
        self.target_workers = 2
        self.recorder = Recorder()
        self.jobs = Jobs(lambda: None, self.recorder.emit)
        self.fail_jobs = False
        self.published: list[tuple[str, list[Any], dict[str, Any], float | None]] = []
        self.options: list[PublishOptions] = []
        self.publishers: list[str] = []
        self._pending: list[tuple[str, Callable[[TreeReply], None]]] = []
        self.exit_requests: list[bool] = []
        self.status_error: Exception | None = None

    def emit(self, event: str, **data: Any) -> None:
        self.recorder.emit(event, **data)

    def status(self) -> dict[str, Any]:
        if self.status_error is not None:
            raise self.status_error
        return {"master": {"pid": self.pid}, "workers": []}

    def stats(self) -> dict[str, Any]:
        return {"master": {}, "workers": []}

    def job_listing(self) -> list[dict[str, Any]]:
        return self.jobs.listing()

    def start_job(self, kind: str, args: dict[str, Any], coalesce: bool) -> Job:
        def body(job: Job) -> dict[str, Any]:
            if self.fail_jobs:
                raise JobFailed(f"{kind} failed", {"kind": kind})
            return {"kind": kind, **args}

        return self.jobs.start(kind, body, args, coalesce=coalesce)

    def publish_async(
        self,
        channel: str,
        args: list[Any],
        kwargs: dict[str, Any],
        *,
        timeout: float | None,
        on_done: Callable[[TreeReply], None],
        options: PublishOptions = DEFAULT,
        publisher: str = "master code",
    ) -> None:
        self.published.append((channel, args, kwargs, timeout))
        self.options.append(options)
        self.publishers.append(publisher)
        self._pending.append((channel, on_done))

    def answer_publish(self) -> None:
        """The tree answers the oldest publish in flight."""
        channel, on_done = self._pending.pop(0)
        on_done(TreeReply(channel, 1, master=["master answered"]))

    def request_exit(self, fast: bool = False) -> None:
        self.exit_requests.append(fast)

    def retained(self) -> list[dict[str, Any]]:
        return [{"channel": "flags", "time": 1.0, "age": 2.0, "seq": 3, "size": 40,
                 "publisher": "master code"}]  # fmt: skip

    def kill_worker(self, worker_id: int, signum: int) -> WorkerProc:
        if worker_id != 1:
            raise LookupError(f"no worker {worker_id}")
        return WorkerProc(1, 1, 5001, 0.0)

    def audits(self) -> list[dict[str, Any]]:
        return self.recorder.named("command")

    def run_jobs(self) -> None:
        self.jobs.run_queued(stop=lambda: False)


@pytest.fixture
def target() -> FakeTarget:
    return FakeTarget()


@pytest.fixture
def commands(target: FakeTarget) -> Commands:
    return Commands(target)


def error_code(answer: Answer) -> ErrorCode | None:
    assert answer.done
    return answer.error[0] if answer.error else None


# -- who may ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", sorted(SIGNAL_COMMANDS))
def test_each_signal_runs_its_command_as_an_admin_named_after_the_signal(
    commands: Commands, target: FakeTarget, signum: int
) -> None:
    """Steps: deliver each signal of the table to the command path.
    Expected: a 'signal' event naming the signal and its command, then the command's
    audit event: that command, peer 'signal SIGNAME', role admin, allowed."""
    command, options = SIGNAL_COMMANDS[signum]
    name = signal.Signals(signum).name
    commands.run_signal(signum)
    assert target.recorder.events[0] == ("signal", {"signal": name, "command": command})
    assert target.audits()[0] == {
        "command": command,
        "peer": f"signal {name}",
        "role": "admin",
        "allowed": True,
        "reason": None,
    }
    if command == "exit":
        assert target.exit_requests == [bool(options.get("fast", False))]


def test_sighup_a_ctl_reload_and_the_api_are_audited_alike_and_join_one_job(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: SIGHUP, then ``reload`` from an admin peer, then from the Python API; run
    the queued jobs.
    Expected: three audit events that differ only by peer; one reload job, which every
    answer carries and which answers all three with the same document."""
    commands.run_signal(signal.SIGHUP)
    by_ctl = commands.run("reload", [], {}, ADMIN)
    by_api = commands.run("reload", [], {}, API)
    audits = target.audits()
    assert [a.pop("peer") for a in audits] == [
        "signal SIGHUP",
        ADMIN.description,
        "the Python API",
    ]
    assert audits == [audits[0]] * 3
    assert len(target.jobs.listing()) == 1
    target.run_jobs()
    assert by_ctl.job is by_api.job is not None
    assert by_ctl.ok and by_api.ok
    assert by_ctl.result == by_api.result == by_ctl.job.to_dict()


def test_a_read_peer_may_read_but_is_refused_an_admin_command_and_that_is_audited(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: a read peer asks for status, then reload.
    Expected: status answered; reload refused with 'forbidden', naming the role needed
    and the peer's; both audited, the refusal with reason 'forbidden'; no job."""
    assert commands.run("status", peer=READER).ok
    refused = commands.run("reload", peer=READER)
    assert error_code(refused) is ErrorCode.FORBIDDEN
    assert refused.error is not None
    assert refused.error[1] == f"reload needs the admin role; {READER.description} has read"
    assert target.audits() == [
        {"command": "status", "peer": READER.description, "role": "read", "allowed": True,
         "reason": None},
        {"command": "reload", "peer": READER.description, "role": "read", "allowed": False,
         "reason": "forbidden"},
    ]  # fmt: skip
    assert target.jobs.listing() == []


def test_a_peer_without_a_role_may_not_even_ping(commands: Commands, target: FakeTarget) -> None:
    """Steps: a peer with no role asks for ping.
    Expected: forbidden ('... has none'), audited with role None."""
    refused = commands.run("ping", peer=NOBODY)
    assert error_code(refused) is ErrorCode.FORBIDDEN
    assert refused.error is not None and refused.error[1].endswith("has none")
    assert target.audits()[0]["role"] is None
    assert target.audits()[0]["allowed"] is False


def test_an_exiting_master_refuses_admin_commands_but_answers_reads_and_exit(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: the master is exiting; ask for reload, scale 3, publish, status, and exit.
    Expected: the admin commands are 'unavailable' and start nothing; status is answered;
    exit is accepted again."""
    target.exiting = True
    for name, args in (("reload", []), ("scale", [3]), ("publish", ["deploy"])):
        answer = commands.run(name, args, peer=ADMIN)
        assert error_code(answer) is ErrorCode.UNAVAILABLE, name
        assert answer.error is not None and answer.error[1] == "the master is exiting"
    assert target.jobs.listing() == [] and target.published == []
    assert commands.run("status", peer=ADMIN).ok
    assert commands.run("exit", peer=ADMIN).ok
    assert target.exit_requests == [False]


# -- what is asked -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (("nope", [], {}), ErrorCode.UNKNOWN_COMMAND),
        ((7, [], {}), ErrorCode.UNKNOWN_COMMAND),
        (("scale", [], {}), ErrorCode.BAD_ARGUMENTS),
        (("scale", [-1], {}), ErrorCode.BAD_ARGUMENTS),
        (("scale", ["3"], {}), ErrorCode.BAD_ARGUMENTS),
        (("reload", [], {"batch": -1}), ErrorCode.BAD_ARGUMENTS),
        (("reload", [], {"bogus": 1}), ErrorCode.BAD_ARGUMENTS),
        (("ping", ["extra"], {}), ErrorCode.BAD_ARGUMENTS),
        (("reload", "not a list", {}), ErrorCode.BAD_ARGUMENTS),
    ],
)
def test_a_request_the_table_refuses_gets_its_code_and_is_audited_as_refused(
    commands: Commands, target: FakeTarget, request_: tuple[Any, Any, Any], code: ErrorCode
) -> None:
    """Steps: an admin sends an unknown command or bad arguments (name, args, kwargs).
    Expected: the matching error code; an audit event, not allowed, whose reason is that
    code; nothing started."""
    name, args, kwargs = request_
    answer = commands.run(name, args, kwargs, ADMIN)
    assert error_code(answer) is code
    (audit,) = target.audits()
    assert (audit["allowed"], audit["reason"]) == (False, code.value)
    assert audit["command"] == (name if isinstance(name, str) else None)
    assert target.jobs.listing() == []


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf])
def test_a_timeout_that_is_not_a_positive_finite_number_is_refused(
    commands: Commands, timeout: float
) -> None:
    """Steps: ping with a timeout of 0, -1, NaN or infinity.
    Expected: bad_arguments, naming the value."""
    answer = commands.run("ping", peer=ADMIN, timeout=timeout)
    assert error_code(answer) is ErrorCode.BAD_ARGUMENTS
    assert answer.error is not None and repr(timeout) in answer.error[1]


def test_kill_of_an_unknown_worker_or_with_an_unknown_signal_is_refused(
    commands: Commands,
) -> None:
    """Steps: kill worker 9; kill worker 1 with signal NOPE; kill worker 1 with HUP.
    Expected: not_found naming the worker; bad_arguments naming the signal; the last is
    done and says which worker, pid and signal."""
    missing = commands.run("kill", [9], peer=ADMIN)
    assert error_code(missing) is ErrorCode.NOT_FOUND
    assert missing.error == (ErrorCode.NOT_FOUND, "no worker 9")
    bad = commands.run("kill", [1], {"signal": "NOPE"}, ADMIN)
    assert error_code(bad) is ErrorCode.BAD_ARGUMENTS
    assert bad.error is not None and "NOPE" in bad.error[1]
    done = commands.run("kill", [1], {"signal": "HUP"}, ADMIN)
    assert done.result == {"worker": 1, "pid": 5001, "signal": "SIGHUP"}


def test_a_handler_that_fails_unexpectedly_answers_internal_with_the_error(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: status raises RuntimeError inside the master.
    Expected: the answer is 'internal', naming the exception type and message."""
    target.status_error = RuntimeError("snapshot broke")
    answer = commands.run("status", peer=ADMIN)
    assert answer.error == (ErrorCode.INTERNAL, "RuntimeError: snapshot broke")


def test_the_audit_of_a_publish_names_its_channel_never_its_arguments(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: publish on 'deploy' with a secret argument and keyword.
    Expected: the audit event names the channel; the secret appears nowhere in it; the
    publish went out with its arguments."""
    commands.run("publish", ["deploy", "s3cret"], {"kw": {"token": "s3cret"}}, ADMIN)
    (audit,) = target.audits()
    assert audit["channel"] == "deploy"
    assert "s3cret" not in repr(audit)
    assert target.published == [("deploy", ["s3cret"], {"token": "s3cret"}, None)]


def test_publish_options_reach_the_tree_and_bad_ones_are_refused_before_anything_runs(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: publish with --require 2 --to 1,3; then with --require most, then with
    --retain --to 1. Expected: the first goes out with those options; each bad one is
    bad_arguments naming the value, and nothing more went out."""
    commands.run("publish", ["flush"], {"require": "2", "to": "1,3"}, ADMIN)
    assert target.options == [PublishOptions(require=2, to=(1, 3))]
    answer = commands.run("publish", ["flush"], {"require": "most"}, ADMIN)
    assert answer.error is not None
    assert answer.error[0] is ErrorCode.BAD_ARGUMENTS
    assert "got 'most'" in answer.error[1]
    answer = commands.run("publish", ["flags"], {"retain": True, "to": "1"}, ADMIN)
    assert answer.error is not None and "takes no to" in answer.error[1]
    assert len(target.published) == 1


def test_a_retained_publish_from_ctl_says_which_peer_published_it(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: an admin peer publishes 'flags' with --retain.
    Expected: it goes out retained, the publisher named as that ctl peer."""
    commands.run("publish", ["flags", "on"], {"retain": True}, ADMIN)
    assert target.options == [PublishOptions(retain=True)]
    assert target.publishers == ["ctl uid 1000 pid 7"]


def test_a_read_peer_lists_the_retained_publishes(commands: Commands, target: FakeTarget) -> None:
    """Steps: a read-only peer runs ``retained``.
    Expected: answered at once with the master's listing; audited as allowed."""
    answer = commands.run("retained", [], {}, READER)
    assert answer.ok
    assert answer.result == {"retained": target.retained()}
    assert target.audits()[-1]["allowed"] is True


def test_a_publish_is_answered_when_the_tree_answered_within_the_callers_timeout(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: graceful with a 2 s timeout; the tree answers later.
    Expected: the publish's deadline leaves time for the reply (< 2 s); no answer until
    the tree answered; then the tree's reply, ok."""
    answer = commands.run("graceful", peer=ADMIN, timeout=2.0)
    (_, _, _, deadline) = target.published[0]
    assert deadline is not None and 0 < deadline < 2.0
    assert not answer.done
    target.answer_publish()
    assert answer.ok
    assert answer.result["channel"] == "graceful"
    assert answer.result["master"] == ["master answered"]


# -- long commands -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("reload", [], {}),
        ("restart", [], {}),
        ("upgrade", [], {}),
        ("scale", [3], {}),
        ("incr", [], {}),
        ("decr", [], {}),
        ("stop", [], {}),
        ("start", [], {}),
    ],
)
def test_reload_restart_and_upgrade_join_a_job_asked_before_other_long_commands_do_not(
    commands: Commands, target: FakeTarget, name: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """Steps: ask for the same long command twice before the queue runs.
    Expected: reload, restart and upgrade give both callers one job; scale, incr, decr,
    stop and start queue a second job."""
    first = commands.run(name, args, kwargs, ADMIN)
    second = commands.run(name, args, kwargs, ADMIN)
    assert first.job is not None and second.job is not None
    joins = name in ("reload", "restart", "upgrade")
    assert (first.job is second.job) is joins
    assert len(target.jobs.listing()) == (1 if joins else 2)
    assert joins is (name in COALESCING)


def test_incr_and_decr_scale_from_the_current_target_and_never_below_zero(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: target 2; incr 3; decr 5; decr.
    Expected: scale jobs to 5, to 0 (not -3), and to 1."""
    workers = [
        commands.run(name, args, peer=ADMIN).job
        for name, args in (("incr", [3]), ("decr", [5]), ("decr", []))
    ]
    assert [job.args for job in workers if job] == [{"workers": 5}, {"workers": 0}, {"workers": 1}]
    assert {job.kind for job in workers if job} == {"scale"}


def test_a_long_command_is_answered_when_its_job_ends(
    commands: Commands, target: FakeTarget
) -> None:
    """Steps: reload; run the queue. Then, with jobs that fail, scale 3; run the queue.
    Expected: no answer until the job ran; then the reload's job document, ok; the failed
    scale answers 'failed' with the job's error, and its document as the result."""
    reload = commands.run("reload", peer=ADMIN)
    assert not reload.done
    target.run_jobs()
    assert reload.ok and reload.result["state"] == "done"
    assert reload.result["result"] == {"kind": "reload"}
    target.fail_jobs = True
    scale = commands.run("scale", [3], peer=ADMIN)
    target.run_jobs()
    assert scale.error == (ErrorCode.FAILED, "scale failed")
    assert scale.result["state"] == "failed" and scale.result["result"] == {"kind": "scale"}
