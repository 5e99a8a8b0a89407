"""Human output of ``procbus ctl``: peer-supplied text never reaches the terminal raw.

A worker's error, a listener's result, a channel or an event field is text
from another process; an ESC (or CSI, 0x9b) in it could repaint or hijack the
operator's terminal. Every control character comes out escaped; the colour
codes procbus adds itself still work.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from procbus import render
from procbus.watch import format_event

HOSTILE = "a\x1b[2Jb\x9bc\rd\ne\tf\x7fg\x00h"
"""Clear screen, CSI, carriage return, newline, tab, DEL and NUL between letters."""
HOSTILE_SHOWN = "a\\x1b[2Jb\\x9bc\\rd\\ne\\tf\\x7fg\\x00h"

_OUR_COLOURS = re.compile(r"\x1b\[(?:32|31|33|2|1|0)m")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def raw_controls(text: str) -> list[str]:
    """Control characters in `text` other than line breaks and procbus's colours."""
    return _CONTROL.findall(_OUR_COLOURS.sub("", text).replace("\n", ""))


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),
        ("\x9b31m", "\\x9b31m"),
        ("\r", "\\r"),
        ("\n", "\\n"),
        ("\t", "\\t"),
        ("\x7f", "\\x7f"),
        ("\x00\x07\x08", "\\x00\\x07\\x08"),
        ("\x80\x85\x9f", "\\x80\\x85\\x9f"),
        (HOSTILE, HOSTILE_SHOWN),
        ("plain text, ünïcödé ✓ and a \\ backslash", "plain text, ünïcödé ✓ and a \\ backslash"),
        ("", ""),
    ],
)
def test_printable_escapes_every_control_character(text: str, shown: str) -> None:
    """Steps: printable() on C0 controls, DEL, C1 controls and plain text.
    Expected: each control shown as \\n, \\t, \\r or \\xNN; everything else as is;
    applying it twice changes nothing more."""
    assert render.printable(text) == shown
    assert render.printable(shown) == shown


def status_result(**worker: Any) -> dict[str, Any]:
    return {
        "master": {
            "pid": 42,
            "name": "web",
            "state": "STARTED",
            "generation": 1,
            "uptime": 10.0,
            "endpoints": {},
        },
        "workers": [
            {
                "id": 1,
                "pid": 1001,
                "state": "running",
                "bus_state": "STARTED",
                "generation": 1,
                "age": 5.0,
                "heartbeat_age": 0.1,
                "cpu_percent": 0.5,
                "rss": 1024,
                "requests": 3,
                "restarts": 0,
                "last_error": None,
                "last_recycle": None,
                **worker,
            }
        ],
    }


@pytest.mark.parametrize("colour", [False, True])
def test_status_escapes_a_workers_last_error(colour: bool) -> None:
    """Steps: render status whose worker's last_error holds ESC [2J, a CSI and a tab
    on its first line, with colour off and on.
    Expected: the error's first line shows escaped; no raw control character but
    procbus's own colour codes; with colour on, the running state is still green."""
    error = "boom\x1b[2J\x9bx\ty\nsecond line"
    text = render.render("status", status_result(last_error=error), colour)
    assert "boom\\x1b[2J\\x9bx\\ty" in text
    assert raw_controls(text) == []
    assert ("\x1b[32mrunning" in text) is colour


def test_status_escapes_master_fields_and_keeps_the_columns_aligned() -> None:
    """Steps: render status where the master's name and a worker's state hold escapes.
    Expected: both escaped; the header and the row still line up column for column
    (widths count the escaped text)."""
    result = status_result(state="run\x1bning")
    result["master"]["name"] = "w\x1b]0;owned\x07eb"
    text = render.render("status", result, colour=False)
    assert "(w\\x1b]0;owned\\x07eb)" in text
    assert raw_controls(text) == []
    header, row = text.splitlines()[1:3]
    assert row.index("run\\x1bning") == header.index("STATE")
    assert row.index("1 ", row.index("run\\x1bning")) == header.index("GEN")


def test_status_shows_a_bus_column_only_when_a_workers_bus_is_not_started() -> None:
    """Steps: render status with every bus STARTED (or not reported yet); then with one
    worker's bus STOPPING.
    Expected: no BUS column at first; then a BUS column after STATE, the row showing
    STOPPING under it."""
    assert "BUS" not in render.render("status", status_result())
    assert "BUS" not in render.render("status", status_result(bus_state=None))
    text = render.render("status", status_result(state="stopping", bus_state="STOPPING"))
    header, row = text.splitlines()[1:3]
    assert header.split()[:4] == ["ID", "PID", "STATE", "BUS"]
    assert row.split()[:4] == ["1", "1001", "stopping", "STOPPING"]
    assert row.index("STOPPING") == header.index("BUS")


def test_status_shows_a_recycled_column_only_when_a_slot_was_recycled() -> None:
    """Steps: render status with no recycle; then with worker 1's slot recycled for
    max_rss 65 s ago.
    Expected: no RECYCLED column at first; then one, before LAST ERROR, reading
    "max_rss 1m05s ago"."""
    assert "RECYCLED" not in render.render("status", status_result())
    recycled = {"reason": "max_rss", "detail": "RSS 600.0M above", "time": 1.0, "age": 65.0}
    text = render.render("status", status_result(last_recycle=recycled))
    header, row = text.splitlines()[1:3]
    assert header.split()[-3:] == ["RECYCLED", "LAST", "ERROR"]
    assert row.index("max_rss 1m05s ago") == header.index("RECYCLED")


def test_publish_reply_escapes_channel_results_and_errors() -> None:
    """Steps: render a publish reply whose channel, master error, a worker's result
    and another worker's error message and listener hold control characters,
    colour on.
    Expected: every one escaped; only procbus's colours remain (ok green, error red)."""
    result = {
        "channel": "ch\x1b[2J",
        "seq": 3,
        "master": [HOSTILE],
        "master_errors": ["ValueError: " + HOSTILE],
        "workers": {
            "1": {"pid": 1001, "status": "ok", "results": [HOSTILE], "errors": []},
            "2": {
                "pid": 1002,
                "status": "error",
                "results": [],
                "errors": [
                    {"type": "E\x9b", "message": HOSTILE, "listener": "l\r", "traceback": "t"}
                ],
            },
        },
    }
    text = render.render("publish", result, colour=True)
    assert raw_controls(text) == []
    assert "ch\\x1b[2J (seq 3)" in text
    assert "master error: ValueError: " + HOSTILE_SHOWN in text
    assert "E\\x9b: " + HOSTILE_SHOWN + " (l\\r)" in text
    assert "\x1b[32mok" in text and "\x1b[31merror" in text


def test_job_and_plain_results_escape_what_the_master_sent() -> None:
    """Steps: render a failed job whose error and outcome hold escapes, a jobs
    listing, and a result of a command without its own rendering.
    Expected: all escaped; the job's state keeps its colour."""
    job = {
        "job": "reload\x1b[2J",
        "state": "failed",
        "error": HOSTILE,
        "result": {"note\x1b": "v\x9b"},
    }
    text = render.render("reload", job, colour=True)
    assert raw_controls(text) == []
    assert text.startswith("reload\\x1b[2J \x1b[31mfailed\x1b[0m: " + HOSTILE_SHOWN)
    assert "note\\x1b v\\x9b" in text
    listing = {
        "jobs": [
            {
                "job": "j\x1b",
                "state": "failed",
                "created": 1.0,
                "started": 1.0,
                "finished": 2.0,
                "error": "e\x9b",
            }
        ]
    }
    assert raw_controls(render.render("jobs", listing, colour=True)) == []
    assert render.render("whatever", "x\x1b[2Jy") == "x\\x1b[2Jy\n"


def test_watch_line_escapes_event_fields() -> None:
    """Steps: format an event whose name and fields hold ESC [2J, a CSI and a CR.
    Expected: one line, every control character escaped, the fields all there."""
    line = format_event(
        {"event": "exit\x1b", "time": 1_700_000_000.0, "error": "\x1b[2J", "b": "\x9b", "c": "\r"}
    )
    assert raw_controls(line) == [] and "\n" not in line
    assert "exit\\x1b" in line
    assert "error=\\x1b[2J b=\\x9b c=\\r" in line


def test_publish_reply_shows_the_requirement_and_pending_workers() -> None:
    """Steps: render a reply requiring 3 that was met with worker 2 pending; one requiring
    5 of 4, not met; one with the default requirement, all ok.
    Expected: the first says "require 3: met", names worker 2 as pending and where its
    answer goes, and its row says pending (yellow with colour on) with no result; the
    second says NOT MET with the reason; the third shows no requirement line."""
    workers = {
        "1": {"pid": 1001, "status": "ok", "results": ["r"], "errors": []},
        "2": {"pid": 1002, "status": "pending", "results": [], "errors": []},
    }
    met = {"channel": "ch", "seq": 3, "master": [], "require": 3, "met": True, "reason": None}
    text = render.render("publish", {**met, "workers": workers}, colour=False)
    assert "require 3: met; pending 2 (answered after the reply: procbus ctl watch" in text
    (row,) = [line for line in text.splitlines() if line.startswith("2 ")]
    assert row.split() == ["2", "1002", "pending", "-"]
    assert "\x1b[33mpending" in render.render("publish", {**met, "workers": workers}, True)
    unmet = {**met, "require": 5, "met": False, "reason": "the publish has only 4 target workers"}
    text = render.render("publish", {**unmet, "workers": {"1": workers["1"]}}, colour=False)
    assert "require 5: NOT MET, the publish has only 4 target workers\n" in text
    default = {**met, "require": "all", "workers": {"1": workers["1"]}}
    assert "require" not in render.render("publish", default, colour=False)


def test_retained_lists_channel_age_seq_size_and_who_escaped() -> None:
    """Steps: render a listing of two retained publishes, one whose channel and publisher
    hold escapes; and an empty listing.
    Expected: a table CHANNEL, AGE, SEQ, SIZE, PUBLISHER in the master's order, every
    cell escaped; the empty listing says there is none."""
    listing = {
        "retained": [
            {"channel": "feature.flags", "time": 1.0, "age": 125.0, "seq": 7, "size": 2048,
             "publisher": "ctl uid 1000 pid 42"},
            {"channel": "x\x1b[2J", "time": 2.0, "age": 1.5, "seq": 9, "size": 30,
             "publisher": "worker 3\x9b"},
        ]
    }  # fmt: skip
    text = render.render("retained", listing, colour=True)
    assert raw_controls(text) == []
    header, first, second = text.splitlines()
    assert header.split() == ["CHANNEL", "AGE", "SEQ", "SIZE", "PUBLISHER"]
    assert first.split() == [
        "feature.flags",
        "2m05s",
        "7",
        "2.0K",
        "ctl",
        "uid",
        "1000",
        "pid",
        "42",
    ]
    assert second.split() == ["x\\x1b[2J", "1.5s", "9", "30B", "worker", "3\\x9b"]
    assert render.render("retained", {"retained": []}) == "no retained publishes\n"


def test_a_clear_says_whether_the_channel_had_a_retained_publish() -> None:
    """Steps: render the replies of ``publish CH --retain --clear`` with and without one.
    Expected: one line each naming the channel, and no worker table (nothing was
    published)."""
    reply = {"channel": "flags", "seq": None, "master": [], "workers": {}, "cleared": True}
    assert render.render("publish", reply) == "cleared the retained publish of 'flags'\n"
    none = {**reply, "cleared": False}
    assert render.render("publish", none) == "no retained publish on 'flags': nothing cleared\n"
