"""Human output of ``procbus ctl``: aligned tables, colour only on a terminal.

Control handlers return plain data; this module is the only place that turns
it into text for people. ``--json`` bypasses it entirely: ``json.dumps``
escapes C0 controls, and C1 ones with everything else beyond ASCII.

Much of that data is another process's text: a worker's last error, a
listener's result, a channel, an event field. `printable` escapes the control
characters in it, so that none of it can move the cursor, clear the screen or
retitle the operator's terminal; every line of human output (here, in
``ctl watch`` and in ``procbus top``) goes through it before procbus adds its
own colours and line breaks.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
"""C0 controls, DEL and C1 controls (0x9b alone starts a CSI on many terminals)."""
_NAMED: Final = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def printable(text: str) -> str:
    """`text` with each control character escaped: ``\\n``, ``\\t``, ``\\r``, else ``\\xNN``.

    A field is one cell on one line, so line breaks and tabs are escaped too.
    Backslashes are left as they are: the result is for reading, not for
    parsing back, and escaping twice changes nothing.
    """
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


_COLOURS = {"green": "32", "red": "31", "yellow": "33", "dim": "2", "bold": "1"}
_STATE_COLOURS = {
    "running": "green",
    "ok": "green",
    "done": "green",
    "starting": "yellow",
    "pending": "yellow",
    "booting": "yellow",
    "stopping": "yellow",
    "backoff": "yellow",
    "queued": "yellow",
    "error": "red",
    "timeout": "red",
    "lost": "red",
    "flapping": "red",
    "failed": "red",
}


def paint(text: str, colour: str | None, enabled: bool) -> str:
    if not enabled or colour is None:
        return text
    return f"\033[{_COLOURS[colour]}m{text}\033[0m"


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    colour_of: Callable[[int, str], str | None] | None = None,
    colour: bool = False,
) -> str:
    """Left-aligned columns separated by two spaces (colour does not shift them).

    Cells are escaped (`printable`) before they are measured, so a cell is one
    line and the columns line up whatever a peer put in it.
    """
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            padded = cell.ljust(widths[i])
            cells.append(paint(padded, colour_of(i, cell) if colour_of else None, colour))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    if seconds < 86400:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"
    return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"


def size(value: int | None) -> str:
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M", "G"):
        if amount < 1024 or unit == "G":
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return f"{amount:.1f}T"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _state_colour(column: int) -> Callable[[int, str], str | None]:
    return lambda i, cell: _STATE_COLOURS.get(cell.strip()) if i == column else None


def status(result: dict[str, Any], colour: bool) -> str:
    """The master's line and a table of the workers. Two columns show only when they
    say something: BUS when a worker's bus is not STARTED (it starts, or stops), and
    RECYCLED when a worker was replaced for a limit (max_requests, max_age, max_rss)."""
    master = result["master"]
    head = printable(
        f"master {master['pid']} ({master['name']})  {master['state']}  "
        f"generation {master['generation']}  up {duration(master['uptime'])}  "
        f"workers {len(result['workers'])}"
    )
    workers = result["workers"]
    bus = any(w.get("bus_state") not in (None, "STARTED") for w in workers)
    recycled = any(w.get("last_recycle") for w in workers)
    rows = [
        [
            str(w["id"]),
            str(w["pid"] or "-"),
            w["state"],
            *([w.get("bus_state") or "-"] if bus else []),
            str(w["generation"]),
            duration(w["age"]),
            duration(w["heartbeat_age"]),
            percent(w["cpu_percent"]),
            size(w["rss"]),
            str(w["requests"]),
            str(w["restarts"]),
            *([_recycle(w.get("last_recycle"))] if recycled else []),
            _first_line(w["last_error"]),
        ]
        for w in workers
    ]
    headers = [
        "ID",
        "PID",
        "STATE",
        *(["BUS"] if bus else []),
        "GEN",
        "AGE",
        "BEAT",
        "CPU",
        "RSS",
        "REQS",
        "RESTARTS",
        *(["RECYCLED"] if recycled else []),
        "LAST ERROR",
    ]
    return head + "\n" + table(headers, rows, _state_colour(2), colour)


def _recycle(recycled: dict[str, Any] | None) -> str:
    """``max_rss 2m05s ago``: the limit a slot's last worker reached, and when."""
    if not recycled:
        return "-"
    return f"{recycled['reason']} {duration(recycled['age'])} ago"


def _first_line(text: str | None, width: int = 60) -> str:
    if not text:
        return "-"
    line = text.strip().splitlines()[-1] if "Traceback" in text else text.strip().splitlines()[0]
    return line if len(line) <= width else line[: width - 1] + "…"


def stats(result: dict[str, Any], colour: bool) -> str:
    master = result["master"]
    head = printable(
        f"master {master['pid']}: cpu {percent(master['cpu_percent'])}  "
        f"rss {size(master['rss'])}  "
        f"uss {size(master['uss'])}  threads {count(master['threads'])}  "
        f"fds {count(master['fds'])}  "
        f"publishes {master['publishes']}  late replies {master['late_replies']}  "
        f"dropped {master['dropped_messages']}"
    )
    rows = [
        [
            str(w["id"]),
            str(w["pid"]),
            w["state"],
            percent(w["cpu_percent"]),
            size(w["rss"]),
            size(w["uss"]),
            count(w["threads"]),
            count(w["fds"]),
            count(w["connections"]),
            str(w["counters"].get("requests", 0)),
            str(w["counters"].get("in_flight", 0)),
            str(w["counters"].get("publishes", 0)),
            str(w["counters"].get("errors", 0) + w["counters"].get("publish_errors", 0)),
        ]
        for w in result["workers"]
    ]
    headers = [
        "ID",
        "PID",
        "STATE",
        "CPU",
        "RSS",
        "USS",
        "THR",
        "FDS",
        "CONN",
        "REQS",
        "INFL",
        "PUBS",
        "ERRS",
    ]
    return head + "\n" + table(headers, rows, _state_colour(2), colour)


def retained(result: dict[str, Any], colour: bool) -> str:
    """The retained publishes, in publish order: channel, age, seq, size, who published."""
    rows = [
        [r["channel"], duration(r["age"]), str(r["seq"]), size(r["size"]), r["publisher"]]
        for r in result["retained"]
    ]
    if not rows:
        return "no retained publishes\n"
    return table(["CHANNEL", "AGE", "SEQ", "SIZE", "PUBLISHER"], rows, colour=colour)


def tree_reply(result: dict[str, Any], colour: bool) -> str:
    """The channel, the master's results, the requirement when it is not the default or
    left workers pending, and a table of the workers; for ``--retain --clear``, whether
    there was a retained publish to drop."""
    if result.get("cleared") is not None:
        channel = printable(repr(result["channel"]))
        if result["cleared"]:
            return f"cleared the retained publish of {channel}\n"
        return f"no retained publish on {channel}: nothing cleared\n"
    lines = [f"{result['channel']} (seq {result['seq']}): master {_short(result['master'])}"]
    for error in result.get("master_errors", []):
        lines.append("  master error: " + error)
    pending = [k for k, w in result["workers"].items() if w["status"] == "pending"]
    require = result.get("require", "all")
    if require != "all" or pending:
        line = f"require {require}: " + (
            "met" if result.get("met") else f"NOT MET, {result.get('reason') or 'unknown'}"
        )
        if pending:
            line += (
                f"; pending {', '.join(pending)} (answered after the reply: "
                "procbus ctl watch shows their answers)"
            )
        lines.append(line)
    lines = [printable(line) for line in lines]
    rows = []
    for worker_id, answer in result["workers"].items():
        detail = _short(answer["results"])
        if answer["status"] == "pending":
            detail = "-"
        if answer["errors"]:
            detail = "; ".join(
                f"{e['type']}: {e['message']}" + (f" ({e['listener']})" if e["listener"] else "")
                for e in answer["errors"]
            )
        rows.append([worker_id, str(answer["pid"]), answer["status"], detail])
    return (
        "\n".join(lines)
        + "\n"
        + (
            table(["WORKER", "PID", "STATUS", "RESULT"], rows, _state_colour(2), colour)
            if rows
            else "no workers\n"
        )
    )


def _short(value: Any, width: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def job(result: dict[str, Any], colour: bool) -> str:
    state = paint(printable(str(result["state"])), _STATE_COLOURS.get(result["state"]), colour)
    text = f"{printable(str(result['job']))} {state}"
    if result.get("error"):
        text += f": {printable(str(result['error']))}"
    details: list[str] = []
    outcome = result.get("result")
    if isinstance(outcome, dict):
        if "replaced" in outcome:
            details.extend(
                f"worker {entry['worker']} -> pid {entry['pid']} generation {entry['generation']}"
                for entry in outcome["replaced"]
            )
        elif "running" in outcome:
            details.append(f"{outcome['running']} of {outcome['workers']} workers running")
        else:
            details.append(", ".join(f"{k} {v}" for k, v in outcome.items()))
    return "".join([text, *(f"\n  {printable(line)}" for line in details), "\n"])


def jobs(result: dict[str, Any], colour: bool) -> str:
    rows = [
        [
            j["job"],
            j["state"],
            duration(
                (j["finished"] or j["started"] or j["created"]) - (j["started"] or j["created"])
            ),
            _first_line(j["error"]),
        ]
        for j in result["jobs"]
    ]
    return (
        table(["JOB", "STATE", "TOOK", "ERROR"], rows, _state_colour(1), colour)
        if rows
        else "no jobs\n"
    )


def render(command: str, result: Any, colour: bool = False) -> str:
    """Text for the result of `command`."""
    if result is None:
        return ""
    if command == "status":
        return status(result, colour)
    if command == "stats":
        return stats(result, colour)
    if command in ("publish", "graceful"):
        return tree_reply(result, colour)
    if command == "jobs":
        return jobs(result, colour)
    if command == "retained":
        return retained(result, colour)
    if isinstance(result, dict) and "job" in result:
        return job(result, colour)
    return printable(_line(command, result)) + "\n"


def _line(command: str, result: Any) -> str:
    if command == "ping":
        return f"pong from master {result['pid']} (generation {result['generation']})"
    if command == "version":
        return f"procbus {result['procbus']} (protocol {result['protocol']})"
    if command == "kill":
        return f"sent {result['signal']} to worker {result['worker']} (pid {result['pid']})"
    if command == "exit":
        return f"master {result['pid']} is exiting"
    return str(result)
