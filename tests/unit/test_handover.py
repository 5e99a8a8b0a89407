"""What crosses an exec or goes to a successor: written, read back, refused when malformed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from procbus.errors import ConfigError
from procbus.master import handover
from procbus.master.handover import AdoptedWorker, Adoption, Inherited


def test_export_then_take_gives_everything_back_and_clears_the_environment() -> None:
    """Steps: export a full hand-over into a dict, take it back. Expected: equal values;
    every variable gone from the dict afterwards; the fds to keep listed."""
    read_end, write_end = os.pipe()
    try:
        environ: dict[str, str] = {"OTHER": "kept"}
        adoption = Adoption((AdoptedWorker(1, 4, 123), AdoptedWorker(2, 5, 124)), 30, 3)
        keep = handover.export(
            environ,
            handover.HandOver(
                generation=7,
                worker_generations={1: 4, 2: 5},
                target=(6, 2),
                control_fds={"control": read_end},
                listening_fds=[write_end],
                lock_fd=None,
                adoption=adoption,
            ),
        )
        assert sorted(keep) == sorted([read_end, write_end])
        environ.pop(handover.FDS_VARIABLE)  # the listening sockets: procbus.master.sockets'
        environ.pop("PYTHONPATH", None)  # extended for the next master to import as we did
        found = Inherited.take(environ)
        assert environ == {"OTHER": "kept"}
        assert found.generation == 7
        assert found.worker_generations == {1: 4, 2: 5}
        assert found.target == (6, 2)
        assert found.adoption == adoption
        assert found.control_fds == {"control": read_end}
        assert not os.get_inheritable(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PROCBUS_ADOPT", "{not json"),
        ("PROCBUS_ADOPT", '{"workers": [[1, 2]], "next_seq": 1, "worker_tag": 1}'),
        ("PROCBUS_GENERATION", "two"),
        ("PROCBUS_TARGET", "6"),
        ("PROCBUS_CONTROL_FDS", "control=x"),
        ("PROCBUS_CONTROL_FDS", "pub=5"),
        ("PROCBUS_SUCCESSOR", "1"),
        ("PROCBUS_WORKER_GENERATIONS", "[1]"),
    ],
)
def test_malformed_hand_over_is_a_one_line_config_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as error:
        Inherited.take({name: value})
    assert "\n" not in str(error.value)


def test_the_retained_publishes_cross_in_a_memory_file_named_by_its_descriptor() -> None:
    """Steps: export a hand-over with 3 MiB of retained publishes; take it back.
    Expected: the environment holds only a descriptor's number (a few bytes), which is
    among the fds to keep; the same bytes come back; the descriptor is closed then."""
    retained = bytes(range(256)) * (3 * 4096)
    environ: dict[str, str] = {}
    keep = handover.export(
        environ,
        handover.HandOver(
            generation=2,
            worker_generations={},
            target=(1, 1),
            control_fds={},
            listening_fds=[],
            retained=retained,
        ),
    )
    value = environ[handover.RETAINED_VARIABLE]
    assert value.isdigit() and int(value) in keep
    assert sum(map(len, environ.values())) < 1000
    found = Inherited.take(environ)
    assert found.retained == retained
    with pytest.raises(OSError):
        os.fstat(int(value))


def test_no_retained_publishes_put_nothing_in_the_environment() -> None:
    environ: dict[str, str] = {}
    handover.export(
        environ,
        handover.HandOver(
            generation=2, worker_generations={}, target=(1, 1), control_fds={}, listening_fds=[]
        ),
    )
    assert handover.RETAINED_VARIABLE not in environ
    assert Inherited.take(environ).retained == b""


@pytest.mark.parametrize("value", ["x", "99999"])
def test_a_retained_descriptor_that_is_no_number_or_not_open_is_a_config_error(
    value: str,
) -> None:
    with pytest.raises(ConfigError, match=handover.RETAINED_VARIABLE) as error:
        Inherited.take({handover.RETAINED_VARIABLE: value})
    assert "\n" not in str(error.value)


def test_exec_problem_names_a_missing_interpreter_or_script(tmp_path: Path) -> None:
    """Steps: check a command line whose interpreter is gone, one whose script is gone,
    one with -m, and a good one from a cwd that no longer exists. Expected: the first
    two named; -m needs no script; a gone cwd is checked from / (where the exec runs)."""
    script = tmp_path / "app.py"
    script.write_text("")
    gone = str(tmp_path / "gone")
    assert "interpreter" in (handover.exec_problem(gone, [gone], str(tmp_path)) or "")
    missing = handover.exec_problem(sys.executable, [sys.executable, "nope.py"], str(tmp_path))
    assert missing is not None and "'nope.py' is gone" in missing
    assert handover.exec_problem(sys.executable, [sys.executable, "-m", "x"], gone) is None
    assert handover.exec_problem(sys.executable, [sys.executable, str(script)], gone) is None
    assert handover.exec_problem(sys.executable, [sys.executable, "app.py"], str(tmp_path)) is None
