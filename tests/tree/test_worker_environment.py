"""What a worker's environment holds after fork, against a real master."""

from __future__ import annotations

import os

import pytest

from tests.processes import running_master, short_tempdir

pytestmark = pytest.mark.slow


def test_workers_do_not_see_systemd_notify_variables_the_master_keeps() -> None:
    """Only the master talks to systemd: a worker that kept NOTIFY_SOCKET could
    notify in the service's name (any library calling sd_notify would).

    Steps: start a master with NOTIFY_SOCKET (a path in a private temp dir),
    WATCHDOG_USEC and WATCHDOG_PID in its environment and 2 workers; publish
    'systemd_environment', whose listeners return their process's
    ``os.environ`` view of the three variables, on the master and in each worker.
    Expected: the master still holds all three, unchanged; no worker holds any.
    """
    notify = str(short_tempdir() / "notify")
    env = {"NOTIFY_SOCKET": notify, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    try:
        with running_master(workers=2, env=env) as master:
            result = master.call("publish", "systemd_environment")
            assert result["ok"] is True, result
            assert result["master"] == [env]
            assert sorted(result["workers"]) == ["1", "2"]
            for answer in result["workers"].values():
                assert answer["results"] == [dict.fromkeys(env)]
    finally:
        os.rmdir(os.path.dirname(notify))
