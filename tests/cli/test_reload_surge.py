"""The surge reload (the default) and ``--batch K`` end to end: a real master, real
workers, real HTTP on loopback, the order of forks and drains read off the event
stream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.cli.hosting import Load, RunProcess, running, write
from tests.processes import Events, procbus

pytestmark = pytest.mark.slow

WORKERS = 3
VERSIONED = "tests.cli.apps:versioned"


def reload_events(
    proc: RunProcess, reload: Any, exited: bool = False
) -> tuple[Any, list[dict[str, Any]]]:
    """Run `reload` (a callable) with the event stream open; its answer, and every event
    up to the reload job's end and the exit of every process the reload forked that
    never ran (of every one, if `exited`)."""
    events = Events(proc)
    try:
        answer = reload()
        assert events.find("job_done", wait=60, kind="reload") is not None, events.seen
        for spawn in [e for e in events.seen if e["event"] == "spawn"]:
            if exited or events.find("ready", wait=0, pid=spawn["pid"]) is None:
                assert events.find("exit", wait=30, pid=spawn["pid"]) is not None
        return answer, list(events.seen)
    finally:
        events.close()


def index(seen: list[dict[str, Any]], event: str, **fields: Any) -> int:
    """Where the first `event` with `fields` is in `seen`."""
    return next(
        i
        for i, e in enumerate(seen)
        if e["event"] == event and all(e.get(k) == v for k, v in fields.items())
    )


def test_a_surge_whose_one_new_worker_cannot_boot_rolls_back_and_the_old_serve_on(
    tmp_path: Path,
) -> None:
    """Steps: 3 workers of v1 under load; the version file says that the first new
    worker to import it fails to boot, a second after its fork (the two others run);
    reload (the surge, the default); once every new process is gone, 30 more requests.
    Expected: the reload fails with that worker's error; all three new workers were
    forked before any was ready; the two that ran were drained (they may have served
    meanwhile: they accept on the same sockets), and every new process is gone; the
    old workers were never drained: the same ids and pids serve; every response after
    the rollback is v1; no request failed."""
    version = write(tmp_path / "version", "v1")
    env = {"PROCBUS_TEST_VERSION_FILE": str(version)}
    with running(VERSIONED, "--bind", "127.0.0.1:0", workers=WORKERS, env=env) as proc:
        before = {w["id"]: w["pid"] for w in proc.workers()}
        write(version, "one breaks")
        with Load(proc.port(), clients=3, path="/") as load:
            load.wait_for(30)
            reply, seen = reload_events(
                proc, lambda: proc.request("reload", timeout=60), exited=True
            )
        with Load(proc.port(), clients=3, path="/") as after:
            after.wait_for(30)
        assert not reply["ok"]
        assert "the first worker of this version breaks" in reply["error"]["message"]
        assert {w["id"]: w["pid"] for w in proc.workers()} == before
        assert load.failures == after.failures == []
        assert after.bodies == {b"v1"}
        assert after.pids <= set(before.values())
    new = [e["pid"] for e in seen if e["event"] == "spawn"]
    assert len(new) == WORKERS
    ready = [i for i, e in enumerate(seen) if e["event"] == "ready" and e["pid"] in new]
    assert len(ready) == WORKERS - 1
    assert max(index(seen, "spawn", pid=pid) for pid in new) < min(ready)
    drained = {e["pid"] for e in seen if e["event"] == "drain"}
    assert not drained & set(before.values())
    assert {seen[i]["pid"] for i in ready} <= drained


@pytest.mark.parametrize(
    ("how", "env"),
    [("ctl reload --batch 1", {}), ("reload_batch 1", {"PROCBUS_RELOAD_BATCH": "1"})],
)
def test_a_batch_of_one_rolls_one_worker_at_a_time(how: str, env: dict[str, str]) -> None:
    """Steps: 3 workers under load; reload one at a time: ``procbus ctl reload --batch 1``
    or a plain ``ctl reload`` with the reload_batch setting 1.
    Expected: done; every worker is new; the new worker of each slot is forked only
    once the old worker of the previous slot exited, and each old worker is drained
    after its own replacement is ready; no request failed."""
    with running("--bind", "127.0.0.1:0", workers=WORKERS, env=env) as proc:
        old = {w["id"]: w["pid"] for w in proc.workers()}
        args = ("--batch", "1") if "--batch" in how else ()
        with Load(proc.port(), clients=3) as load:
            load.wait_for(30)
            done, seen = reload_events(
                proc, lambda: procbus("ctl", "--ctl", proc.endpoint, "reload", *args)
            )
            load.wait_for(30)
        assert done.returncode == 0, done.stderr
        now = {w["id"]: w["pid"] for w in proc.workers()}
        assert not set(now.values()) & set(old.values())
        assert load.failures == []
    for worker_id in range(1, WORKERS + 1):
        assert index(seen, "ready", pid=now[worker_id]) < index(seen, "drain", pid=old[worker_id])
        if worker_id > 1:
            previous_exit = index(seen, "exit", pid=old[worker_id - 1])
            assert previous_exit < index(seen, "spawn", pid=now[worker_id])


def test_a_surge_forks_the_whole_generation_at_once_and_drains_the_old_after(
    tmp_path: Path,
) -> None:
    """Steps: 3 workers under load; ``procbus ctl reload`` (the default: the surge).
    Expected: done; all three new workers forked before any of them was ready; every
    old worker drained only after the last new one was ready; no request failed."""
    with running("--bind", "127.0.0.1:0", workers=WORKERS) as proc:
        old = {w["id"]: w["pid"] for w in proc.workers()}
        with Load(proc.port(), clients=3) as load:
            load.wait_for(30)
            done, seen = reload_events(
                proc, lambda: procbus("ctl", "--ctl", proc.endpoint, "reload")
            )
            load.wait_for(30)
        assert done.returncode == 0, done.stderr
        now = {w["id"]: w["pid"] for w in proc.workers()}
        assert load.failures == []
    forks = [index(seen, "spawn", pid=pid) for pid in now.values()]
    ready = [index(seen, "ready", pid=pid) for pid in now.values()]
    drains = [index(seen, "drain", pid=pid) for pid in old.values()]
    assert max(forks) < min(ready)
    assert max(ready) < min(drains)
