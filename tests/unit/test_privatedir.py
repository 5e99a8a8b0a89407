"""Private directories: the runtime directory's chain cannot be taken over by another user.

These tests run as root where they need a second uid (65534, nobody) to own
a directory, as an attacker on a shared host would; without root they are
skipped. A "sticky tmp" stands in for /tmp: mode 1777, like the real one.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from procbus.errors import StartupError
from procbus.master.runtime import RuntimeDir
from procbus.paths import check_endpoint, default_runtime_dir
from procbus.privatedir import (
    UnsafeDirectory,
    check_directory,
    open_private,
    traverse_problem,
)
from tests.processes import short_tempdir

ATTACKER = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a second uid needs root")


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A world-writable sticky directory, as /tmp is."""
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)
    return sticky


@pytest.fixture
def umask_zero() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_created_chain_has_exact_modes_whatever_the_umask(tmp: Path, umask_zero: None) -> None:
    """Steps: umask 0 (as --daemon leaves it); open tmp/procbus-U/app with two
    managed components. Expected: both created, the parent 0700 and the runtime
    directory 0700, owned by us; a second open with mode 0711 widens the parent
    to 0711 only by its traverse bits."""
    path = tmp / "procbus-u" / "app"
    directory = open_private(path, managed=2)
    directory.close()
    assert _mode(path.parent) == 0o700
    assert _mode(path) == 0o700
    assert os.lstat(path).st_uid == os.getuid()
    directory = open_private(path, managed=2, mode=0o711)
    directory.close()
    assert (_mode(path.parent), _mode(path)) == (0o711, 0o711)


@needs_root
def test_parent_created_by_another_user_is_refused_and_left_alone(tmp: Path) -> None:
    """Steps: the attacker creates tmp/procbus-0 (theirs, mode 0777) first.
    Expected: UnsafeDirectory naming it and its owner; nothing created inside it,
    its mode unchanged."""
    parent = tmp / "procbus-0"
    parent.mkdir()
    parent.chmod(0o777)
    os.chown(parent, ATTACKER, ATTACKER)
    with pytest.raises(UnsafeDirectory, match=rf"^'{parent}' belongs to uid {ATTACKER}, not to"):
        open_private(parent / "app", managed=2)
    assert list(parent.iterdir()) == []
    assert _mode(parent) == 0o777


def test_symlink_instead_of_the_runtime_directory_is_refused_and_nothing_changes(
    tmp: Path, tmp_path: Path
) -> None:
    """Steps: tmp/procbus-0/app is a symlink to a directory of ours holding files
    named ctl and pub, mode 0755. Expected: UnsafeDirectory ("is a symbolic
    link"); the target keeps its mode and its files."""
    target = tmp_path / "precious"
    target.mkdir()
    target.chmod(0o755)
    for name in ("ctl", "pub"):
        (target / name).write_text("keep me")
    parent = tmp / "procbus-0"
    parent.mkdir(mode=0o700)
    (parent / "app").symlink_to(target)
    with pytest.raises(UnsafeDirectory, match=r"is a symbolic link$"):
        RuntimeDir(parent / "app", managed=2).acquire()
    assert _mode(target) == 0o755
    assert sorted(p.name for p in target.iterdir()) == ["ctl", "pub"]


def test_group_writable_runtime_directory_is_refused(tmp: Path) -> None:
    """Steps: an existing runtime directory of ours with mode 0770.
    Expected: UnsafeDirectory naming the mode; the mode is not changed."""
    path = tmp / "rt"
    path.mkdir()
    path.chmod(0o770)
    with pytest.raises(UnsafeDirectory, match=r"is writable by other users \(mode 0770\)"):
        open_private(path, managed=1)
    assert _mode(path) == 0o770


def test_ancestor_writable_by_others_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    """Steps: a runtime directory under a 0777 directory without the sticky bit
    (anyone could rename our directory away). Expected: UnsafeDirectory naming
    the ancestor; a sticky 1777 one is accepted."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match=rf"^'{shared}' is writable by other users"):
        open_private(shared / "rt", managed=1)
    assert not (shared / "rt").exists()
    shared.chmod(0o1777)
    open_private(shared / "rt", managed=1).close()


def test_regular_file_named_like_a_socket_is_not_removed(tmp: Path) -> None:
    """Steps: our runtime directory holds a regular file called ctl.
    Expected: acquiring refuses with a one-line error; the file stays."""
    path = tmp / "rt"
    path.mkdir(mode=0o700)
    (path / "ctl").write_text("not a socket")
    with pytest.raises(StartupError, match=r"'.*/rt/ctl' exists and is not a socket"):
        RuntimeDir(path).acquire()
    assert (path / "ctl").read_text() == "not a socket"


def test_intact_notices_a_removed_or_swapped_directory(tmp: Path) -> None:
    """Steps: acquire a runtime directory; remove it; make it again by hand.
    Expected: intact() is False once it is gone, and stays False for the new
    directory of the same name (another inode)."""
    path = tmp / "rt"
    runtime = RuntimeDir(path)
    runtime.acquire()
    try:
        assert runtime.dir is not None and runtime.dir.intact()
        (path / "master.lock").unlink()
        path.rmdir()
        assert not runtime.dir.intact()
        path.mkdir(mode=0o700)
        assert not runtime.dir.intact()
    finally:
        runtime.release()


@needs_root
def test_client_refuses_a_default_path_owned_by_another_user(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps: TMPDIR is the sticky tmp; the attacker owns procbus-0/NAME (mode 0700,
    a fake ctl file in it). Expected: check_endpoint refuses the default endpoint,
    naming the attacker's directory; an explicitly named directory of the same
    owner is that owner's business and passes."""
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    path = default_runtime_dir("app")
    path.mkdir(parents=True, mode=0o700)
    for directory in (path, path.parent):
        os.chown(directory, ATTACKER, ATTACKER)
    (path / "ctl").write_text("")
    with pytest.raises(UnsafeDirectory, match=rf"belongs to uid {ATTACKER}"):
        check_endpoint(f"ipc://{path}/ctl")
    elsewhere = tmp / "theirs"
    elsewhere.mkdir(mode=0o700)
    os.chown(elsewhere, ATTACKER, ATTACKER)
    check_endpoint(f"ipc://{elsewhere}/ctl")


def test_check_directory_refuses_symlinks_and_writable_directories(tmp_path: Path) -> None:
    """Steps: check a symlink to a good directory, a 0777 directory, a good one.
    Expected: the first two refused with what is wrong; the good one passes."""
    good = tmp_path / "good"
    good.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(good)
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match="is a symbolic link"):
        check_directory(link)
    with pytest.raises(UnsafeDirectory, match=r"writable by other users \(mode 0777\)"):
        check_directory(loose)
    assert check_directory(good).inode == os.lstat(good).st_ino


@needs_root
def test_traverse_problem_names_the_directory_another_uid_cannot_enter() -> None:
    """Steps: a 0711 runtime directory under a 0700 parent, for uid 65534.
    Expected: the 0700 parent is named; once it is 0711 nothing is in the way;
    root is never in the way."""
    top = short_tempdir()
    try:
        top.chmod(0o711)
        parent = top / "p"
        parent.mkdir(mode=0o700)
        runtime = parent / "rt"
        runtime.mkdir(mode=0o711)
        problem = traverse_problem(runtime, ATTACKER, {ATTACKER})
        assert problem == f"'{parent}' (mode 0700, uid 0) cannot be entered by uid {ATTACKER}"
        parent.chmod(0o711)
        assert traverse_problem(runtime, ATTACKER, {ATTACKER}) is None
        assert traverse_problem(runtime, 0, set()) is None
    finally:
        shutil.rmtree(top)


def test_a_socket_a_dead_master_left_half_made_is_removed(tmp: Path) -> None:
    """Steps: a runtime directory holding a stale temporary socket (``.ctl.1234``: a
    master died between binding it and renaming it into place) and a stale worker
    socket; a master acquires the directory. Expected: both are gone."""
    import socket

    path = tmp / "rt"
    path.mkdir(mode=0o700)
    for name in (".ctl.1234", "w3.pub"):
        with socket.socket(socket.AF_UNIX) as stale:
            stale.bind(str(path / name))
    runtime = RuntimeDir(path)
    runtime.acquire()
    try:
        assert sorted(p.name for p in path.iterdir()) == ["master.lock"]
    finally:
        runtime.release()
