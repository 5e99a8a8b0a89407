"""Other local users: they cannot take the runtime directory over, nor reach what is not theirs.

The attacker is uid 65534 (nobody), played by child processes that switch to
it (the tests run as root; without root they are skipped). A "tmp" directory
of mode 1777 stands in for /tmp, through ``TMPDIR``, so that the default
runtime path ``$TMPDIR/procbus-0/NAME`` is exercised as an attacker would find
it on a shared host.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from procbus import keys
from procbus.commands import Role
from tests.cli.hosting import running
from tests.helpers import wait_until
from tests.processes import (
    ROOT,
    child_environment,
    ctl_as_uid,
    ctl_as_uid_argv,
    procbus,
    run_to_end,
    short_tempdir,
    wait_seconds,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="another uid needs root"),
]

ATTACKER = 65534
OTHER = 65533
"""A uid listed nowhere."""

FAKE_MASTER = textwrap.dedent(
    """
    import os, sys, zmq
    path, log = sys.argv[1], sys.argv[2]
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind("ipc://" + path)
    os.chmod(path, 0o777)
    print("ready", flush=True)
    if router.poll(5000):
        with open(log, "w") as out:
            out.write("got a request")
    """
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A sticky, world-writable directory, as /tmp is, with a short path."""
    top = short_tempdir()
    top.chmod(0o711)
    tmp = top / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    try:
        yield tmp
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=False)


def _errors(stderr: str) -> list[str]:
    """The lines of `stderr` that are not log lines (no traceback may be among them)."""
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line and not line[:4].isdigit()]


def _default_env(tmp: Path) -> dict[str, str]:
    """The environment of a master (or ctl) that uses the default runtime path under `tmp`."""
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmp)
    return env


def test_master_refuses_a_parent_directory_another_user_made_first(shared_tmp: Path) -> None:
    """Steps: the attacker creates TMPDIR/procbus-0 (theirs, 0777) before root's master
    starts with the default runtime path. Expected: ``procbus run`` exits 1 with one
    line naming that directory and its owner; the attacker's directory is unchanged
    and empty (nothing bound, nothing chmod-ed)."""
    parent = shared_tmp / "procbus-0"
    parent.mkdir()
    parent.chmod(0o777)
    os.chown(parent, ATTACKER, ATTACKER)
    result = procbus(
        "run", "-w", "1", "--bind", "127.0.0.1:0", base_env=_default_env(shared_tmp), timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert _errors(result.stderr) == [
        f"procbus run: '{parent}' belongs to uid {ATTACKER}, not to uid 0"
    ]
    assert list(parent.iterdir()) == []
    assert stat.S_IMODE(parent.stat().st_mode) == 0o777


def test_symlinked_runtime_directory_is_refused_and_its_target_untouched(
    shared_tmp: Path, tmp_path: Path
) -> None:
    """Steps: procbus-0/NAME is a symlink to a root directory (mode 0755) holding files
    named ctl and pub. Expected: exit 1, one line saying it is a symbolic link; the
    target keeps its mode and both files."""
    target = tmp_path / "etc-like"
    target.mkdir()
    target.chmod(0o755)
    for name in ("ctl", "pub"):
        (target / name).write_text("precious")
    parent = shared_tmp / "procbus-0"
    parent.mkdir(mode=0o700)
    (parent / "procbus").symlink_to(target)
    result = procbus("run", "-w", "1", "--bind", "127.0.0.1:0", base_env=_default_env(shared_tmp))
    assert result.returncode == 1, result.stderr
    assert _errors(result.stderr) == [f"procbus run: '{parent / 'procbus'}' is a symbolic link"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert sorted(p.name for p in target.iterdir()) == ["ctl", "pub"]


def test_umask_zero_still_makes_owner_only_directories(shared_tmp: Path) -> None:
    """Steps: a master with ``--umask 0`` (what ``--daemon`` leaves) on the default path.
    Expected: procbus-0 and the runtime directory are 0700, the sockets 0600."""
    env = _default_env(shared_tmp)
    argv = [sys.executable, "-m", "procbus", "run", "-w", "1", "--bind", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [*argv, "--umask", "0", "--name", "um"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=child_environment(base=env),
        start_new_session=True,
    )
    runtime = shared_tmp / "procbus-0" / "um"
    names = ("ctl", "evt", "w1.pub", "w1.rep")
    try:
        # The master binds them one after the other: wait for the last as well.
        wait_until(lambda: all((runtime / name).exists() for name in names), 20)
        assert stat.S_IMODE(runtime.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
        for name in names:
            assert stat.S_IMODE((runtime / name).stat().st_mode) == 0o600, name
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_ctl_does_not_talk_to_sockets_in_a_directory_of_another_user(shared_tmp: Path) -> None:
    """Steps: the attacker owns procbus-0/procbus (the default path of root's master)
    and listens on a fake ctl socket there. Root runs ``procbus ctl ping``.
    Expected: exit 3, one line saying the directory belongs to the attacker; the fake
    master never receives anything."""
    runtime = shared_tmp / "procbus-0" / "procbus"
    runtime.mkdir(parents=True)
    for directory in (runtime, runtime.parent):
        directory.chmod(0o755)
        os.chown(directory, ATTACKER, ATTACKER)
    log = shared_tmp / "fake.log"
    fake = subprocess.Popen(
        [sys.executable, "-c", FAKE_MASTER, str(runtime / "ctl"), str(log)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=child_environment(),
    )
    try:
        assert fake.stdout is not None and fake.stdout.readline().strip() == "ready"
        result = procbus("ctl", "--timeout", "2", "ping", base_env=_default_env(shared_tmp))
        assert result.returncode == 3, result.stderr
        assert f"belongs to uid {ATTACKER}" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        fake.wait(10)
        assert not log.exists()
    finally:
        if fake.poll() is None:
            fake.kill()
            fake.wait()
        if fake.stdout is not None:
            fake.stdout.close()


# -- roles -------------------------------------------------------------------------


def test_read_uid_reads_an_unlisted_uid_gets_nothing_and_worker_sockets_stay_closed() -> None:
    """Steps: a master with ``--read-uids 65534`` (its runtime directory's parent 0711).
    As 65534: ``ctl status``, ``ctl reload``, ``ctl watch --count 1``; as 65533: ``ctl
    ping``; as 65534: connect to the workers' ``rep`` socket file. Expected: status
    exits 0 and shows the workers; reload exits 1 (forbidden); watch prints an event;
    65533 gets no answer (exit 3) although the socket file lets it connect; the worker
    socket refuses 65534 with EACCES (mode 0600)."""
    with running(
        "--bind", "127.0.0.1:0", "--read-uids", str(ATTACKER), workers=1, directory_mode=0o711
    ) as proc:  # fmt: skip
        where = ["--runtime-dir", str(proc.runtime_dir)]
        status = ctl_as_uid(ATTACKER, *where, "--json", "status")
        assert status.returncode == 0, status.stderr
        assert len(json.loads(status.stdout)["workers"]) == 1
        reload = ctl_as_uid(ATTACKER, *where, "reload")
        assert reload.returncode == 1
        assert "reload needs the admin role" in reload.stderr
        watcher = subprocess.Popen(
            ctl_as_uid_argv(ATTACKER, *where, "--json", "watch", "--count", "1"),
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env=child_environment(),
        )  # fmt: skip
        try:
            wait_until(lambda: proc.call("ping") and watcher.poll() is not None, 30)
            assert watcher.stdout is not None
            assert json.loads(watcher.stdout.read())["event"] == "command"
        finally:
            if watcher.poll() is None:
                watcher.kill()
            watcher.wait()
            if watcher.stdout is not None:
                watcher.stdout.close()
        stranger = ctl_as_uid(OTHER, *where, "--timeout", "2", "ping")
        assert stranger.returncode == 3, stranger.stderr
        assert stat.S_IMODE((proc.runtime_dir / "ctl").stat().st_mode) == 0o666
        probe = run_to_end(
            [sys.executable, "-c", textwrap.dedent(
                """
                import errno, os, socket, sys
                os.setgroups([]); os.setgid(65534); os.setuid(65534)
                probe = socket.socket(socket.AF_UNIX)
                try:
                    probe.connect(sys.argv[1])
                except OSError as exc:
                    print(errno.errorcode[exc.errno])
                else:
                    print("connected")
                """
            ), proc.status()["master"]["endpoints"]["replies"].removeprefix("ipc://")],
        )  # fmt: skip
        assert probe.stdout.strip() == "EACCES", probe.stderr


def test_admin_uid_may_scale() -> None:
    """Steps: a master with ``--admin-uids 65534``; as 65534, ``ctl scale 2``.
    Expected: exit 0 and two workers running."""
    with running(
        "--bind", "127.0.0.1:0", "--admin-uids", str(ATTACKER), workers=1, directory_mode=0o711
    ) as proc:  # fmt: skip
        scaled = ctl_as_uid(ATTACKER, "--runtime-dir", str(proc.runtime_dir), "scale", "2")
        assert scaled.returncode == 0, scaled.stderr
        proc.wait_running(2)


@pytest.mark.parametrize("weak", ["directory", "clients", "role folder", "key file", "owner"])
def test_curve_key_directory_another_user_could_change_is_refused(
    tmp_path: Path, weak: str
) -> None:
    """Steps: a key directory where one piece is group/world-writable, or a client key
    owned by another uid; start a master with a tcp:// control endpoint on it.
    Expected: exit 2, one line naming that path."""
    key_dir = tmp_path / "keys"
    keys.generate(key_dir, "ops", Role.ADMIN)
    key_file = key_dir / "clients" / "admin" / "ops.key"
    path = {
        "directory": key_dir,
        "clients": key_dir / "clients",
        "role folder": key_dir / "clients" / "admin",
        "key file": key_file,
        "owner": key_file,
    }[weak]
    if weak == "owner":
        os.chown(path, ATTACKER, ATTACKER)
    else:
        path.chmod(0o777 if path.is_dir() else 0o666)
    directory = short_tempdir()
    try:
        result = procbus(
            "run", "-w", "1", "--bind", "127.0.0.1:0", "--runtime-dir", str(directory / "rt"),
            "--ctl", "tcp://127.0.0.1:0", "--curve-keys", str(key_dir),
        )  # fmt: skip
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False)
    assert result.returncode == 2, result.stderr
    lines = _errors(result.stderr)
    assert len(lines) == 1 and f"{path}:" in lines[0], lines


def _groups(pid: int) -> tuple[int, set[int]]:
    """(real gid, supplementary gids) of process `pid`."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["Gid"].split()[0]), {int(g) for g in fields["Groups"].split()}


def test_user_without_group_takes_the_users_groups_not_roots() -> None:
    """Steps: ``--user nobody`` and no ``--group``. Expected: the worker's gid is
    nobody's primary group and its supplementary groups are nobody's (not root's
    0); the master keeps uid and gid 0."""
    with running(
        "--bind", "127.0.0.1:0", "--user", "nobody", "--preload", workers=1, directory_mode=0o711
    ) as proc:  # fmt: skip
        worker = proc.workers()[0]["pid"]
        gid, groups = _groups(worker)
        assert gid == ATTACKER
        assert 0 not in groups and groups <= {ATTACKER}
        assert _groups(proc.pid)[0] == 0


def test_restart_adopt_keeps_workers_that_switched_user() -> None:
    """Steps: ``--user nobody --group nogroup``; ``ctl restart --adopt``; then publish.
    Expected: the same worker pids are running again under the re-executed master,
    and answer the publish; none is killed within a few heartbeats."""
    with running(
        "--bind", "127.0.0.1:0", "--user", "nobody", "--group", "nogroup", "--preload",
        "--timeout", "3", workers=2, directory_mode=0o711,
    ) as proc:  # fmt: skip
        before = sorted(w["pid"] for w in proc.workers())
        result = proc.call("restart", adopt=True, timeout=60)
        assert result["result"]["adopted"] == 2
        proc.wait_answering()
        after = proc.wait_running(2)
        assert sorted(w["pid"] for w in after) == before
        reply = proc.call("publish", "demo.message", "hi", timeout=20)
        assert {w["status"] for w in reply["workers"].values()} == {"ok"}
        wait_seconds(4)  # longer than --timeout: a worker that cannot heartbeat is gone by now
        assert sorted(w["pid"] for w in proc.wait_running(2)) == before
