"""One request as the access log sees it, in the Common Log Format.

Both hosts (`procbus.worker.wsgi`, `procbus.worker.asgi`) fill an
`AccessRecord` while a request runs and, with ``access_log``, log
`common_log_line` on ``procbus.access`` when it ends: the same line whatever
the app's interface, so that a log parser need not know.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Final

__all__ = ["AccessRecord", "access_logger", "common_log_line"]

access_logger: Final = logging.getLogger("procbus.access")


@dataclass(slots=True)
class AccessRecord:
    """What happened to one request (filled in by the host as it goes)."""

    started: float
    """`time.time` when the request reached the app."""
    status: int | None = None
    """The status the app answered with, None before it answered."""
    sent: int = 0
    """Body bytes sent."""
    raised: bool = False
    """The app raised (before or after it answered)."""

    @property
    def failed(self) -> bool:
        """Counted as failed: the app raised, never answered, or answered 5xx."""
        return self.raised or self.status is None or self.status >= 500


_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip


def common_log_line(
    record: AccessRecord,
    *,
    remote_addr: object,
    remote_user: object,
    request_line: str,
) -> str:
    """``host ident user [time] "request line" status bytes`` (Common Log Format).

    The request line is escaped so that a client cannot forge log lines; an
    app that raised before answering is logged with the 500 the client got.
    """
    when = time.localtime(record.started)
    stamp = time.strftime(f"%d/{_MONTHS[when.tm_mon - 1]}/%Y:%H:%M:%S %z", when)
    if record.status is None or (record.raised and not record.sent):
        status = "500"
    else:
        status = str(record.status)
    return (
        f"{_field(remote_addr)} - {_field(remote_user)} "
        f'[{stamp}] "{_escape(request_line)}" {status} {record.sent or "-"}'
    )


def _field(value: object) -> str:
    return _escape(str(value)).replace(" ", "\\x20") if value else "-"


def _escape(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
