"""``procbus ctl``'s fleet options checked before any connection (no master needed).

Each bad input exits 2 with one line naming it; the mode (concurrent, one by
one, rolling) follows from the command and the options.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path

import pytest

from procbus import cli, ctl

A, B = "ipc:///nonexistent/a/ctl", "ipc:///nonexistent/b/ctl"


def run(*argv: str) -> tuple[int, str, str]:
    """``procbus ctl ARGV`` in this process: (status, stdout, stderr)."""
    args = cli.build_parser().parse_args(["ctl", *argv])
    out, err = io.StringIO(), io.StringIO()
    return ctl.run(args, out, err), out.getvalue(), err.getvalue()


def parsed(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["ctl", *argv])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--ctl", A, "--ctl", B, "--rolling", "--max-failures", "-1", "reload"],
            "--max-failures must be a whole number >= 0, got -1",
        ),
        (
            ["--ctl", A, "--ctl", B, "--max-failures", "1", "reload"],
            "--max-failures 1: only with --rolling",
        ),
        (
            ["--ctl", A, "--ctl", B, "--rolling", "--parallel", "reload"],
            "--rolling and --parallel exclude each other",
        ),
        (
            ["--ctl", A, "--ctl", B, "--rolling", "reload", "--no-wait"],
            "--rolling waits for each master's command to end: not with --no-wait",
        ),
        (["--ctl", A, "--ctl", B, "--ctl", A, "status"], f"endpoint {A!r} given twice"),
        (["--ctl", A, "--ctl", B, "watch"], "watch follows one master, got 2 endpoints"),
    ],
    ids=[
        "max-failures -1",
        "max-failures alone",
        "rolling parallel",
        "rolling no-wait",
        "dup",
        "watch fleet",
    ],
)
def test_bad_fleet_option_is_a_usage_error_naming_it(argv: list[str], message: str) -> None:
    """Steps: run ``procbus ctl`` with the bad option (no master runs anywhere).
    Expected: exit 2, nothing on stdout, one line on stderr with the message."""
    status, out, err = run(*argv)
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert message in err


def test_max_failures_not_a_number_is_a_usage_error() -> None:
    """Steps: parse ``ctl --rolling --max-failures x reload``.
    Expected: argparse exits with status 2."""
    with pytest.raises(SystemExit) as exit_info:
        parsed("--rolling", "--max-failures", "x", "reload")
    assert exit_info.value.code == 2


def test_duplicate_across_ctl_and_ctl_file_is_a_usage_error(tmp_path: Path) -> None:
    """Steps: a --ctl-file listing B and A, and ``--ctl A``.
    Expected: exit 2, the message names A."""
    listing = tmp_path / "fleet"
    listing.write_text(f"# fleet\n{B}\n\n{A}\n")
    status, _, err = run("--ctl", A, "--ctl-file", str(listing), "status", "--json")
    assert status == 2
    assert f"endpoint {A!r} given twice" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_ctl_file_is_a_usage_error(tmp_path: Path) -> None:
    """Steps: a --ctl-file without read permission.
    Expected: exit 2, the line names the file and the reason."""
    listing = tmp_path / "fleet"
    listing.write_text(f"{A}\n")
    listing.chmod(0)
    status, _, err = run("--ctl-file", str(listing), "status")
    assert status == 2
    assert f"--ctl-file {str(listing)!r}: Permission denied" in err


@pytest.mark.parametrize(
    "content", [None, "", "# only a comment\n\n"], ids=["missing", "empty", "comments"]
)
def test_missing_or_empty_ctl_file_is_a_usage_error(tmp_path: Path, content: str | None) -> None:
    """Steps: a --ctl-file that does not exist, is empty, or lists no endpoint.
    Expected: exit 2 naming the file (an empty fleet never falls back to the local
    master)."""
    listing = tmp_path / "fleet"
    if content is not None:
        listing.write_text(content)
    status, _, err = run("--ctl-file", str(listing), "reload")
    assert status == 2
    assert f"--ctl-file {str(listing)!r}: " in err


def test_ctl_file_that_is_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    """Steps: --ctl-file naming a directory (unreadable as a file, even by root).
    Expected: exit 2 naming it."""
    status, _, err = run("--ctl-file", str(tmp_path), "status")
    assert status == 2
    assert f"--ctl-file {str(tmp_path)!r}: Is a directory" in err


MODES = [
    (["status"], ctl.Mode.CONCURRENT, 0),
    (["ping"], ctl.Mode.CONCURRENT, 0),
    (["metrics"], ctl.Mode.CONCURRENT, 0),
    (["publish", "ch"], ctl.Mode.CONCURRENT, 0),
    (["graceful"], ctl.Mode.CONCURRENT, 0),
    (["reload"], ctl.Mode.SEQUENTIAL, 0),
    (["scale", "2"], ctl.Mode.SEQUENTIAL, 0),
    (["--parallel", "reload"], ctl.Mode.CONCURRENT, 0),
    (["--rolling", "reload"], ctl.Mode.ROLLING, 0),
    (["--rolling", "--max-failures", "2", "upgrade"], ctl.Mode.ROLLING, 2),
    (["--rolling", "status"], ctl.Mode.ROLLING, 0),
]


@pytest.mark.parametrize(
    ("argv", "mode", "max_failures"), MODES, ids=[" ".join(case[0]) for case in MODES]
)
def test_fleet_mode_follows_the_command_and_options(
    argv: list[str], mode: ctl.Mode, max_failures: int
) -> None:
    """Steps: parse the command line, ask `ctl.fleet_mode`.
    Expected: read commands, publish and graceful at once; admin commands one by
    one unless --parallel; --rolling (with --max-failures K) as asked."""
    args = parsed(*argv)
    assert ctl.fleet_mode(args, args.ctl_command) == (mode, max_failures)


def test_unreachable_masters_on_a_fleet_exit_3_with_an_entry_each() -> None:
    """Steps: ``status --json`` on two ipc endpoints with no socket file.
    Expected: exit 3; the JSON document has both entries, in order, each
    ``unreachable`` with exit 3; one stderr line per endpoint."""
    status, out, err = run("--ctl", A, "--ctl", B, "status", "--json")
    assert status == 3
    entries = json.loads(out)["masters"]
    assert [(e["endpoint"], e["exit"], e["error"]["code"]) for e in entries] == [
        (A, 3, "unreachable"),
        (B, 3, "unreachable"),
    ]
    assert [line.split("]")[0] for line in err.splitlines()] == [f"[{A}", f"[{B}"]
