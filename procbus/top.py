"""``procbus top``: a live table of the workers, drawn from the master's stats stream.

top asks the master once where its event stream is (one ``status`` call),
then subscribes to ``ev.stats``, the subscription that makes the master sample
its processes every ``stats_interval``, and draws one frame per sample. It
never polls the control socket. When it leaves, the master stops sampling.

On a terminal each frame is drawn in place with ANSI escapes (home, clear to
end of line, clear below; lines cut to the terminal's size), and when stdin is
a terminal too it is in cbreak mode so that ``q`` quits without Enter; the
terminal is restored however top ends. Ctrl-C quits too. When stdout is not a
terminal each frame is printed as plain text after the previous one (and
stdin is left alone).

Exit statuses: 0; 1 the master refused or answered nonsense; 2 usage error; 3
no master answered, or no stats sample came within the timeout.

This module is imported when the CLI's parser is built: it imports nothing
heavy until `run` runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Final, TextIO

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_TIMEOUT: Final = 10.0

_HOME, _CLEAR_LINE, _CLEAR_BELOW, _CLEAR_SCREEN = "\033[H", "\033[K", "\033[J", "\033[2J"
_HIDE_CURSOR, _SHOW_CURSOR = "\033[?25l", "\033[?25h"
_QUIT_KEYS: Final = frozenset(b"qQ")
_HEADERS: Final = ("ID", "PID", "STATE", "GEN", "CPU", "RSS", "REQS", "INFL", "ERRS", "AGE")


def build_parser(parser: argparse.ArgumentParser) -> None:
    """Fill the ``top`` parser."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--name", help="instance name (default: $PROCBUS_NAME or procbus)")
    where.add_argument("--ctl", metavar="ENDPOINT", help="the master's control endpoint")
    parser.add_argument("--runtime-dir", help="the master's runtime directory")
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        metavar="S",
        help="redraw at most every S seconds (default: every sample; the master samples "
        "every stats_interval, 1 s by default)",
    )
    parser.add_argument(
        "--count", type=int, metavar="N", help="exit after N frames (plain frames when piped)"
    )
    parser.add_argument(
        "--curve-keys", metavar="DIR", help="CURVE keys for a tcp:// master (as procbus ctl)"
    )
    parser.add_argument(
        "--curve-client", metavar="NAME", help="which client key pair of --curve-keys to use"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"give up when the master is silent this long (default {DEFAULT_TIMEOUT:g})",
    )


# -- frames (pure) ---------------------------------------------------------------


def frame(
    sample: dict[str, Any], *, width: int | None = None, height: int | None = None
) -> list[str]:
    """The lines of one frame for a stats sample (the ``stats`` event or command result).

    Lines are cut to `width`; with `height`, worker rows that do not fit are
    summed up in a last line.
    """
    import datetime  # noqa: PLC0415

    from procbus import render  # noqa: PLC0415

    master = sample["master"]
    workers = sorted(sample["workers"], key=lambda w: (w["id"], w["generation"]))
    stamp = sample.get("time")
    clock = (
        datetime.datetime.fromtimestamp(stamp).strftime("%H:%M:%S")
        if isinstance(stamp, int | float)
        else ""
    )
    running = sum(1 for w in workers if w["state"] == "running")
    totals = _totals(workers)
    head = [
        f"procbus top - master {master['pid']} ({master.get('name', '?')}) "
        f"{master.get('state', '?')}  up {render.duration(master.get('uptime'))}  "
        f"workers {running}/{master.get('target_workers', len(workers))}  {clock}".rstrip(),
        f"master   cpu {render.percent(master['cpu_percent'])}  rss {render.size(master['rss'])}"
        f"  publishes {master.get('publishes', 0)}",
        f"workers  cpu {render.percent(totals['cpu_percent'])}  rss {render.size(totals['rss'])}"
        f"  requests {totals['requests']}  in flight {totals['in_flight']}"
        f"  errors {totals['errors']}",
        "",
    ]
    rows = [_row(w) for w in workers]
    table = render.table(_HEADERS, rows).splitlines() if rows else ["no workers"]
    lines = [render.printable(line) for line in head] + table
    if height is not None and len(lines) > height:
        keep = max(len(head) + 1, height - 1)
        hidden = len(lines) - keep
        lines = [*lines[:keep], f"... {hidden} more workers"]
    if width is not None:
        lines = [line[:width] for line in lines]
    return lines


def _row(worker: dict[str, Any]) -> list[str]:
    from procbus import render  # noqa: PLC0415

    counters = worker.get("counters") or {}
    return [
        str(worker["id"]),
        str(worker["pid"]),
        worker["state"],
        str(worker["generation"]),
        render.percent(worker["cpu_percent"]),
        render.size(worker["rss"]),
        str(counters.get("requests", 0)),
        str(counters.get("in_flight", 0)),
        str(counters.get("errors", 0) + counters.get("publish_errors", 0)),
        render.duration(worker.get("age")),
    ]


def _totals(workers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    cpu = [w["cpu_percent"] for w in workers if w["cpu_percent"] is not None]
    rss = [w["rss"] for w in workers if w["rss"] is not None]
    counters = [w.get("counters") or {} for w in workers]
    return {
        "cpu_percent": sum(cpu) if cpu else None,
        "rss": sum(rss) if rss else None,
        "requests": sum(c.get("requests", 0) for c in counters),
        "in_flight": sum(c.get("in_flight", 0) for c in counters),
        "errors": sum(c.get("errors", 0) + c.get("publish_errors", 0) for c in counters),
    }


# -- the terminal ------------------------------------------------------------------


@contextlib.contextmanager
def _cbreak(stream: TextIO) -> Iterator[int | None]:
    """Put `stream` in cbreak mode if it is a terminal; yield its fd (or None); restore."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        yield None
        return
    if not os.isatty(fd):
        yield None
        return
    import termios  # noqa: PLC0415
    import tty  # noqa: PLC0415

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class _Screen:
    """Where frames go: in place on a terminal, one after the other elsewhere."""

    def __init__(self, out: TextIO, live: bool) -> None:
        self.out = out
        self.live = live
        self.drawn = 0

    def __enter__(self) -> _Screen:
        if self.live:
            self.out.write(_HIDE_CURSOR + _CLEAR_SCREEN)
            self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.out.write(_SHOW_CURSOR + "\n")
            self.out.flush()

    def draw(self, sample: dict[str, Any]) -> None:
        if self.live:
            import shutil  # noqa: PLC0415

            size = shutil.get_terminal_size()
            lines = frame(sample, width=size.columns, height=size.lines - 1)
            self.out.write(
                _HOME + "".join(line + _CLEAR_LINE + "\n" for line in lines) + _CLEAR_BELOW
            )
        else:
            if self.drawn:
                self.out.write("\n")
            self.out.write("".join(line + "\n" for line in frame(sample)))
        self.out.flush()
        self.drawn += 1


# -- running -----------------------------------------------------------------------


def _control(args: argparse.Namespace) -> str:
    from procbus import ctl  # noqa: PLC0415

    where = argparse.Namespace(
        ctl=[args.ctl] if args.ctl else None, name=args.name, runtime_dir=args.runtime_dir
    )
    return ctl.targets(where)[0]


def run(
    args: argparse.Namespace,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    keys: TextIO = sys.stdin,
) -> int:
    """Run a parsed ``procbus top`` command line; return the exit status."""
    from procbus.commands import CommandError  # noqa: PLC0415
    from procbus.ctl import check_count, check_seconds, curve_keys  # noqa: PLC0415

    try:
        check_seconds("--timeout", args.timeout)
        check_seconds("--interval", args.interval, zero=True)
        if args.count is not None:
            check_count("--count", args.count)
        control = _control(args)
        curve = curve_keys(args, [control])
    except CommandError as exc:
        print(f"procbus top: {exc.message}", file=err)
        return EXIT_USAGE

    from procbus.client import ControlError  # noqa: PLC0415
    from procbus.watch import events_endpoint  # noqa: PLC0415

    try:
        endpoint = events_endpoint(control, args.timeout, curve)
    except ControlError as exc:
        from procbus.render import printable  # noqa: PLC0415

        print(f"procbus top: {printable(exc.message)}", file=err)
        return EXIT_UNREACHABLE if exc.code.value == "unreachable" else EXIT_FAILED
    live = out.isatty()
    keyboard = _cbreak(keys) if live else contextlib.nullcontext(None)
    try:
        with keyboard as key_fd, _Screen(out, live) as screen:
            return _show(endpoint, args, screen, key_fd, err, curve=curve)
    except KeyboardInterrupt:
        return EXIT_OK


def _show(
    endpoint: str,
    args: argparse.Namespace,
    screen: _Screen,
    key_fd: int | None,
    err: TextIO,
    *,
    curve: tuple[bytes, bytes, bytes] | None = None,
) -> int:
    import zmq  # noqa: PLC0415

    from procbus import protocol, render  # noqa: PLC0415
    from procbus.watch import receive_event, subscribe  # noqa: PLC0415

    context, socket = subscribe(endpoint, protocol.STATS_TOPIC, curve)
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    if key_fd is not None:
        poller.register(key_fd, zmq.POLLIN)
    last_drawn: float | None = None
    deadline = time.monotonic() + args.timeout
    try:
        while args.count is None or screen.drawn < args.count:
            left = deadline - time.monotonic()
            ready = dict(poller.poll(max(1, int(left * 1000)))) if left > 0 else {}
            if not ready:
                print(
                    f"procbus top: no stats from the master at {render.printable(endpoint)} "
                    f"within {args.timeout:g}s",
                    file=err,
                )
                return EXIT_UNREACHABLE
            if key_fd is not None and key_fd in ready and _QUIT_KEYS & set(os.read(key_fd, 64)):
                return EXIT_OK
            if socket not in ready:
                continue
            sample = receive_event(socket, 0)
            if sample is None or sample.get("event") != "stats":
                continue
            deadline = time.monotonic() + args.timeout
            if last_drawn is not None and sample["time"] - last_drawn < args.interval * 0.95:
                continue  # sooner than --interval (5% for the master's sampling jitter)
            last_drawn = sample["time"]
            screen.draw(sample)
    finally:
        socket.close(0)
        context.term()
    return EXIT_OK
