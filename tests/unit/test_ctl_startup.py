"""What ``procbus ctl`` imports, and the lazy names of the ``procbus`` package.

``procbus ctl`` runs in shell loops and health checks: its start-up is its
cost. It must not import the bus, the master or psutil (each costs
milliseconds it never uses). Each check runs in a fresh interpreter, since
this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from procbus import cli, ctl
from tests.processes import ROOT

HEAVY = (
    "procbus.bus",
    "procbus.master",
    "procbus.worker",
    "psutil",
    "logging",
    "dataclasses",
    "inspect",
)
"""Modules the ctl path must not import (``logging`` comes with the bus, ``inspect`` with
``dataclasses``: each costs milliseconds)."""


def imported_by(code: str) -> list[str]:
    """The modules a fresh interpreter has after running `code` (which may print first)."""
    script = textwrap.dedent(code) + "\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    )
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def heavy_in(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]


def test_ctl_ping_imports_neither_bus_nor_master_nor_psutil() -> None:
    """The whole ``procbus ctl ping`` path (parse, connect, fail: no master there).

    Steps: in a fresh interpreter run ``procbus.cli.main(["ctl", "--ctl",
    "ipc://<missing>", "ping"])``, then list ``sys.modules``.
    Expected: exit status 3 (unreachable); procbus.ctl and procbus.client were
    imported (the path ran), and none of procbus.bus, procbus.master,
    procbus.worker, psutil, logging, dataclasses, inspect.
    """
    modules = imported_by(
        """
        import contextlib, io
        from procbus import cli
        with contextlib.redirect_stderr(io.StringIO()):
            status = cli.main(["ctl", "--ctl", "ipc:///nonexistent/procbus/c", "ping"])
        print(status)
        """
    )
    assert {"procbus.ctl", "procbus.client"} <= set(modules)
    assert heavy_in(modules) == []


def test_ctl_usage_error_imports_neither_bus_nor_zmq() -> None:
    """A usage error is reported before anything network-related is imported.

    Steps: in a fresh interpreter run ``procbus ctl --timeout 0 ping``, then
    list ``sys.modules``.
    Expected: no heavy module and no zmq.
    """
    modules = imported_by(
        """
        import contextlib, io
        from procbus import cli
        with contextlib.redirect_stderr(io.StringIO()):
            assert cli.main(["ctl", "--timeout", "0", "ping"]) == 2
        """
    )
    assert heavy_in(modules) == []
    assert [m for m in modules if m == "zmq" or m.startswith("zmq.")] == []


def test_package_names_load_on_first_use() -> None:
    """``import procbus`` alone loads no bus; ``from procbus import Bus`` still works.

    Steps: in a fresh interpreter import procbus and record whether
    procbus.bus is loaded; then ``from procbus import Bus, ChannelFailures,
    ProcbusError, bus``.
    Expected: not loaded after ``import procbus``; afterwards ``bus`` is a
    ``Bus`` instance, ``ChannelFailures`` and ``ProcbusError`` are the classes
    of their modules.
    """
    modules = imported_by(
        """
        import sys
        import procbus
        assert "procbus.bus" not in sys.modules, "import procbus loaded the bus"
        from procbus import Bus, ChannelFailures, ProcbusError, bus
        import procbus.bus as bus_module_attr
        import procbus.errors
        assert isinstance(bus, Bus), bus
        assert bus is procbus.bus is bus_module_attr
        assert Bus is sys.modules["procbus.bus"].Bus
        assert ChannelFailures is sys.modules["procbus.bus"].ChannelFailures
        assert ProcbusError is procbus.errors.ProcbusError
        assert {"Bus", "bus", "states"} <= set(dir(procbus))
        """
    )
    assert "procbus.bus" in modules


def test_submodule_import_first_keeps_bus_the_instance() -> None:
    """Importing the submodule before the name still leaves ``procbus.bus`` the instance.

    Steps: in a fresh interpreter ``from procbus.bus import Bus`` (the import
    system sets the package's ``bus`` attribute to the module), then read
    ``procbus.bus`` and ``from procbus import bus``.
    Expected: both are the process's Bus instance, as when the package
    imported it eagerly; an unknown name raises AttributeError naming it.
    """
    imported_by(
        """
        from procbus.bus import Bus
        import procbus
        from procbus import bus
        assert isinstance(procbus.bus, Bus) and procbus.bus is bus
        try:
            procbus.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc), exc
        else:
            raise AssertionError("procbus.no_such_name did not raise")
        """
    )


PARSED_ALIKE = [
    ["ctl", "ping"],
    ["ctl", "--ctl", "ipc:///tmp/a", "--ctl", "ipc:///tmp/b", "status", "--json"],
    ["ctl", "--name", "status", "ping"],
    ["ctl", "--na", "status", "ping"],
    ["ctl", "--name=status", "ping", "--timeout", "3"],
    ["ctl", "--json", "publish", "chan", "1", '"x"', "--kw", "a=1", "--to", "1,2"],
    ["ctl", "--time", "2", "reload", "--batch", "2"],
    ["ctl", "--runtime-dir", "/tmp/r", "watch", "--count", "3"],
    ["ctl", "--rolling", "--ctl-file", "reload", "reload"],
    ["ctl", "scale", "3", "--no-wait"],
    ["ctl", "kill", "2", "--signal", "KILL"],
]


@pytest.mark.parametrize("argv", PARSED_ALIKE, ids=" ".join)
def test_ctl_parser_built_for_one_command_parses_as_the_whole_one(argv: list[str]) -> None:
    """The parser built for the command line alone reads it as the whole parser does.

    Steps: parse `argv` with ``cli.build_parser()`` (every command) and with
    ``cli.build_parser(argv)`` (only the command `command_in` finds; option
    values that look like commands, abbreviations and ``--opt=value``
    included).
    Expected: the same namespace.
    """
    assert vars(cli.build_parser(argv).parse_args(argv)) == vars(
        cli.build_parser().parse_args(argv)
    )


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["ping"], "ping"),
        (["--ctl", "status", "ping"], "ping"),
        (["--cu", "status", "ping"], "ping"),
        (["--json", "status"], "status"),
        (["--", "ping"], None),
        (["nonsense", "ping"], None),
        (["--help"], None),
        ([], None),
    ],
)
def test_command_in_finds_the_command_word_or_none(words: list[str], expected: str | None) -> None:
    """`ctl.command_in` skips options and their values; None when unsure.

    Steps: call it on the words after ``procbus ctl``.
    Expected: the command word, or None (before ``--``, for an unknown word,
    for no command at all), when the whole parser is built instead.
    """
    assert ctl.command_in(words) == expected
