"""``procbus ctl`` on a fleet: several masters in one command, real processes.

Three masters of one worker each (on ipc://, and on CURVE tcp://127.0.0.1),
plus an endpoint where no master runs. Read commands and publishes run on all
masters at once; ``--rolling`` goes master by master and stops at a failure
(or past ``--max-failures``); the exit status is the worst master's.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from procbus import keys
from procbus.commands import Role
from tests.processes import MasterProcess, free_port, procbus, running_master, short_tempdir

pytestmark = pytest.mark.slow

APP = "tests.cli.fleet_app:stamping"


class Fleet(NamedTuple):
    masters: list[MasterProcess]
    flags: list[Path]
    """Per master: while this file exists, its new workers fail to boot."""
    options: list[str]
    """Connection options for ``procbus ctl`` other than the endpoints (CURVE keys)."""

    @property
    def endpoints(self) -> list[str]:
        return [master.endpoint for master in self.masters]

    def ctl(
        self, *args: str, endpoints: list[str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``procbus ctl --ctl E1 --ctl E2 ... ARGS`` (the fleet's endpoints by default)."""
        chosen = self.endpoints if endpoints is None else endpoints
        words = [word for endpoint in chosen for word in ("--ctl", endpoint)]
        return procbus("ctl", *words, *self.options, *args, timeout=60)

    def generations(self) -> list[int]:
        return [master.workers()[0]["generation"] for master in self.masters]


@contextlib.contextmanager
def fleet_of_three(curve: bool) -> Iterator[Fleet]:
    """Three masters of one `APP` worker, on ipc:// or (`curve`) CURVE tcp://127.0.0.1."""
    directory = short_tempdir("pbf-")
    options: list[str] = []
    key_options: dict[str, Any] = {}
    if curve:
        keys.generate(directory / "keys", "ops", Role.ADMIN)
        options = ["--curve-keys", str(directory / "keys"), "--curve-client", "ops"]
    flags = [directory / f"fail-{index}" for index in range(3)]
    try:
        with contextlib.ExitStack() as stack:
            masters = []
            for flag in flags:
                if curve:
                    key_options = {
                        "ctl": f"tcp://127.0.0.1:{free_port()}",
                        "curve_keys": directory / "keys",
                        "curve": keys.load_client(directory / "keys", "ops"),
                    }
                masters.append(
                    stack.enter_context(
                        running_master(
                            APP,
                            workers=1,
                            env={"PROCBUS_TEST_FAIL_BOOT": str(flag)},
                            **key_options,
                        )
                    )
                )
            yield Fleet(masters, flags, options)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    with fleet_of_three(curve=False) as three:
        yield three


@pytest.fixture
def nowhere() -> Iterator[str]:
    """An ipc:// endpoint where no master runs."""
    directory = short_tempdir()
    try:
        yield f"ipc://{directory}/ctl"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def masters_document(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The per-master entries of a fleet's ``--json`` document."""
    entries: list[dict[str, Any]] = json.loads(done.stdout)["masters"]
    return entries


def test_status_on_a_fleet_answers_per_master_and_a_down_one_makes_exit_3(
    fleet: Fleet, nowhere: str
) -> None:
    """Steps: ``status --json`` on the three masters with a dead endpoint second.
    Expected: exit 3; four entries in the order given; the three masters' entries
    are ok with their own pid and exit 0; the dead one's is ``unreachable``, exit 3;
    stderr has one line, naming the dead endpoint."""
    endpoints = [fleet.endpoints[0], nowhere, *fleet.endpoints[1:]]
    done = fleet.ctl("status", "--json", endpoints=endpoints)
    assert done.returncode == 3, done.stderr
    entries = masters_document(done)
    assert [entry["endpoint"] for entry in entries] == endpoints
    answered = [entries[0], entries[2], entries[3]]
    assert [entry["result"]["master"]["pid"] for entry in answered] == [
        master.pid for master in fleet.masters
    ]
    assert [(entry["ok"], entry["exit"]) for entry in answered] == [(True, 0)] * 3
    assert (entries[1]["ok"], entries[1]["exit"], entries[1]["error"]["code"]) == (
        False,
        3,
        "unreachable",
    )
    assert done.stderr.splitlines() == [
        f"[{nowhere}] procbus ctl status: no master listens at {nowhere} (no socket file)"
    ]


def test_publish_runs_on_every_master_at_once(fleet: Fleet) -> None:
    """Steps: ``publish stamp 1`` (each worker's listener sleeps 1 s and says when it
    ran) on the three masters.
    Expected: exit 0, and the three listeners' runs overlap: each started before any
    ended (one after another, the third would start after the first ended)."""
    done = fleet.ctl("publish", "stamp", "1", "--json")
    assert done.returncode == 0, done.stderr
    runs = [entry["result"]["workers"]["1"]["results"][0] for entry in masters_document(done)]
    assert [run["pid"] for run in runs] == [m.workers()[0]["pid"] for m in fleet.masters]
    assert max(run["start"] for run in runs) < min(run["end"] for run in runs)


def test_rolling_reload_stops_at_the_master_whose_reload_fails(fleet: Fleet) -> None:
    """Steps: break the second master's app (its new workers fail to boot), then
    ``--rolling reload --json`` on the three.
    Expected: exit 1; the first master reloaded (generation 2, exit 0); the second's
    reload failed (exit 1, its old worker still serves: generation 1); the third was
    skipped (entry ``skipped``, exit 1, nothing sent: still generation 1)."""
    fleet.flags[1].touch()
    done = fleet.ctl("--rolling", "reload", "--json")
    assert done.returncode == 1, done.stderr
    entries = masters_document(done)
    assert [entry["exit"] for entry in entries] == [0, 1, 1]
    assert entries[1]["error"]["code"] == "failed"
    assert "failed to boot" in entries[1]["error"]["message"]
    assert entries[2]["skipped"] is True
    assert entries[2]["error"] == {
        "code": "skipped",
        "message": f"not run: the roll stopped at {fleet.endpoints[1]}",
    }
    assert fleet.generations() == [2, 1, 1]


def test_rolling_reload_with_max_failures_goes_on_past_a_failed_master(fleet: Fleet) -> None:
    """Steps: break the second master's app, then ``--rolling --max-failures 1 reload``.
    Expected: exit 1 (the second failed); the first and third masters reloaded
    (generations 2, 1, 2); human output names the failed endpoint on stderr."""
    fleet.flags[1].touch()
    done = fleet.ctl("--rolling", "--max-failures", "1", "reload")
    assert done.returncode == 1, done.stderr
    assert fleet.generations() == [2, 1, 2]
    assert f"[{fleet.endpoints[1]}] procbus ctl reload: " in done.stderr


def test_admin_command_without_rolling_runs_on_every_master_whatever_fails(
    fleet: Fleet,
) -> None:
    """Steps: break the first master's app, then ``reload --json`` (no --rolling).
    Expected: exit 1; every master was sent the reload: the first's failed, the
    second and third reloaded (generations 1, 2, 2); no entry is skipped."""
    fleet.flags[0].touch()
    done = fleet.ctl("reload", "--json")
    assert done.returncode == 1, done.stderr
    entries = masters_document(done)
    assert [entry["exit"] for entry in entries] == [1, 0, 0]
    assert not any(entry.get("skipped") for entry in entries)
    assert fleet.generations() == [1, 2, 2]


def test_fleet_over_curve_tcp_with_one_master_down() -> None:
    """Steps: three masters on CURVE tcp://127.0.0.1 and a tcp endpoint where nothing
    listens (last); ``--timeout 2 status --json``, then ``--rolling reload``, then
    ``ping`` on the three live masters listed in a ``--ctl-file``.
    Expected: status exits 3, the three masters' entries ok with their pids, the
    down one ``unreachable``; the roll reloads the three (generation 2) and stops
    at the down endpoint (exit 3); ping exits 0 with one pong line per master."""
    with fleet_of_three(curve=True) as fleet:
        down = f"tcp://127.0.0.1:{free_port()}"
        endpoints = [*fleet.endpoints, down]
        status = fleet.ctl("--timeout", "2", "status", "--json", endpoints=endpoints)
        assert status.returncode == 3, status.stderr
        entries = masters_document(status)
        assert [entry["result"]["master"]["pid"] for entry in entries[:3]] == [
            master.pid for master in fleet.masters
        ]
        assert (entries[3]["endpoint"], entries[3]["error"]["code"]) == (down, "unreachable")
        roll = fleet.ctl("--timeout", "8", "--rolling", "reload", endpoints=endpoints)
        assert roll.returncode == 3, roll.stderr
        assert fleet.generations() == [2, 2, 2]
        listing = fleet.flags[0].parent / "fleet.txt"
        listing.write_text("# the live masters\n" + "".join(f"{e}\n" for e in fleet.endpoints))
        ping = procbus("ctl", "--ctl-file", str(listing), *fleet.options, "ping", timeout=60)
        assert ping.returncode == 0, ping.stderr
        assert [line.split("] ")[0] + "]" for line in ping.stdout.splitlines()] == [
            f"[{endpoint}]" for endpoint in fleet.endpoints
        ]
