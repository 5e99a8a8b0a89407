"""Only the master's owner can reach its control socket.

The runtime directory is 0700 and every socket file in it 0600, so the kernel
refuses another uid before ZeroMQ or procbus see anything. Switching uid needs
root; without it the tests that need a second uid are skipped.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from tests.processes import MasterProcess, ctl_as_uid, running_master

pytestmark = pytest.mark.slow

OTHER_UID = OTHER_GID = 65534  # nobody / nogroup

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switching uid needs root"
)

CONNECT_PROBE = textwrap.dedent(
    """
    import errno, socket, sys
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(sys.argv[1])
    except OSError as exc:
        print(errno.errorcode.get(exc.errno, exc.errno))
    else:
        print("connected")
    """
)


@pytest.fixture(scope="module")
def master() -> Iterator[MasterProcess]:
    """A master whose runtime directory's parent anyone may traverse, so that only the
    runtime directory's and the socket files' own modes keep other uids out."""
    with running_master(workers=1) as running:
        running.runtime_dir.parent.chmod(0o711)
        yield running


def test_runtime_dir_is_0700_and_socket_files_are_0600(master: MasterProcess) -> None:
    """Steps: stat the running master's runtime directory and its socket files.
    Expected: the directory is 0700 and every socket file (control, events,
    publish, replies) 0600, all owned by us."""
    info = master.runtime_dir.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    for name in ("ctl", "evt", "w1.pub", "w1.rep"):
        sock = (master.runtime_dir / name).stat()
        assert stat.S_ISSOCK(sock.st_mode), name
        assert stat.S_IMODE(sock.st_mode) == 0o600, name
        assert sock.st_uid == os.getuid(), name


def _interpreter_for_other_uid() -> str | None:
    """A Python the other uid may run (ours may live in a directory it cannot enter)."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if not candidate:
            continue
        try:
            done = subprocess.run(
                [candidate, "-c", "pass"],
                user=OTHER_UID,
                group=OTHER_GID,
                extra_groups=[],
                capture_output=True,
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if done.returncode == 0:
            return candidate
    return None


@needs_root
def test_another_uid_cannot_connect_to_the_control_socket(master: MasterProcess) -> None:
    """Steps: as uid 65534, a plain Unix-socket connect to the control socket file.
    Expected: the kernel refuses it (EACCES); the master still answers its owner."""
    interpreter = _interpreter_for_other_uid()
    if interpreter is None:
        pytest.skip("no Python that uid 65534 may run")
    socket_path = str(master.runtime_dir / "ctl")
    probe = subprocess.Popen(
        [interpreter, "-c", CONNECT_PROBE, socket_path],
        user=OTHER_UID,
        group=OTHER_GID,
        extra_groups=[],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = probe.communicate(timeout=30)
    finally:
        if probe.poll() is None:
            probe.kill()
        probe.wait(10)
    assert probe.returncode == 0, err
    assert out.strip() == "EACCES"
    assert master.call("ping")["pid"] == master.pid


@needs_root
def test_procbus_ctl_as_another_uid_exits_3(master: MasterProcess) -> None:
    """Steps: ``procbus ctl ping`` in a process that switched to uid 65534 (after
    importing procbus as root). Expected: exit 3 with one line on stderr and no
    audit of a command from that uid, since nothing reached the master."""
    ctl = ctl_as_uid(OTHER_UID, "--ctl", master.endpoint, "--timeout", "2", "ping")
    out, err = ctl.stdout, ctl.stderr
    assert ctl.returncode == 3, (out, err)
    assert len(err.strip().splitlines()) == 1
    assert f"uid {OTHER_UID}" not in master.log()
    assert master.call("ping")["pid"] == master.pid
