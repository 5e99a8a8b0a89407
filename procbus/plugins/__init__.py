"""Site services for a `Bus`: CherryPy's ``cherrypy.process.plugins``, typed.

Applications written for CherryPy subscribe a handful of standard plugins to
their bus: signal handling, a PID file, daemonizing, dropping privileges,
periodic background work, file-change reloading and per-thread hooks. For
procbus to be a drop-in for wspbus, that code has to run unchanged with
``from procbus import plugins``; this package provides the same classes, with
the same constructor arguments, channel priorities and log messages, all
importable from ``procbus.plugins``. They live in one module per concern:

- `procbus.plugins.base`: `SimplePlugin`, the base class.
- `procbus.plugins.signals`: `SignalHandler`.
- `procbus.plugins.process`: `DropPrivileges`, `Daemonizer`, `PIDFile`, which
  change the process itself on ``start``.
- `procbus.plugins.tasks`: `PerpetualTimer`, `BackgroundTask`, `Monitor`,
  `Autoreloader`, `ThreadManager`, which work on threads.

Two more follow a procbus master (``procbus run``) as well as its bus, and are
not part of the wspbus set: `procbus.plugins.process.MasterPIDFile` (beside
`PIDFile`) and `procbus.plugins.systemd.SystemdNotify` (not imported here).

Where CherryPy's behaviour is a trap, procbus does the safer thing:

- `PIDFile` refuses to overwrite the PID file of a live process, replaces a
  stale one, writes atomically, reports an unusable directory as one
  `StartupError` line, and on exit removes the file only while it still holds
  our PID.
- `BackgroundTask` waits on an event, so `BackgroundTask.cancel` takes effect
  at once instead of after the current sleep; a failing function is logged and
  stops the task rather than dying with an unhandled thread exception.
- `SignalHandler.unsubscribe` undoes all of `SignalHandler.subscribe`: the
  previous handlers come back and the channel listeners go away, so it can be
  subscribed again with edited `SignalHandler.handlers`.

The plugins are POSIX-only, as procbus is. `SignalHandler` logs and publishes
from inside the Python signal handler, as CherryPy's does; procbus's own master
loop does not use it, and only records signals in its handler.
"""

from __future__ import annotations

from procbus.plugins.base import SimplePlugin
from procbus.plugins.process import Daemonizer, DropPrivileges, PIDFile
from procbus.plugins.signals import SignalHandler
from procbus.plugins.tasks import (
    Autoreloader,
    BackgroundTask,
    Monitor,
    PerpetualTimer,
    ThreadManager,
)

__all__ = [
    "Autoreloader",
    "BackgroundTask",
    "Daemonizer",
    "DropPrivileges",
    "Monitor",
    "PIDFile",
    "PerpetualTimer",
    "SignalHandler",
    "SimplePlugin",
    "ThreadManager",
]
