"""``procbus run``: host a WSGI or ASGI app (or a generic worker) behind pre-forked workers.

`run` turns the effective configuration (`procbus.config`) into a running
tree, in this order, so that every mistake is reported before anything is
touched and the terminal still sees it:

1. load the configuration (exit 2 on a bad value);
2. build the worker app: ``http_worker(APP)`` (the demo when no APP is given;
   each worker imports APP and serves it with waitress or uvicorn as
   ``--interface`` says) or the generic ``--worker``; with ``--preload`` the app
   is imported here, in the master, before any fork (and its interface
   checked); ``--check`` imports it, stops after this and prints the effective
   configuration and the interface chosen;
3. take the listening sockets: those a previous master passed across
   ``execv`` (``PROCBUS_FDS``), else systemd's (``LISTEN_FDS``), else bind
   ``--bind`` (a generic worker binds only when ``--bind`` is given);
4. detach (``--daemon``), apply ``--umask``, build the `Master` with what a
   previous master handed over, and subscribe its plugins: the pidfile
   (`procbus.plugins.process.MasterPIDFile`, written at once: a live instance
   is refused before anything is bound) and systemd's notifications
   (`procbus.plugins.systemd.SystemdNotify`);
5. run the `Master` until TERM, INT, QUIT or ``ctl exit``; re-execute the
   process when ``ctl restart`` asked for it.

Exit statuses: 0 stopped normally, 1 the app or the runtime failed (the app
does not boot, another master runs under the name, the runtime directory is
unusable), 2 usage and configuration errors (bad options or config keys, a bind
address in use, unresolvable or not bindable).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Any, Final

from procbus import config as config_module
from procbus.bus import ChannelFailures
from procbus.config import DEMO_APP, Config, Source
from procbus.errors import ConfigError, StartupError
from procbus.master import sockets
from procbus.master.control_server import ControlSettings
from procbus.master.handover import Inherited, re_execute
from procbus.master.master import Master
from procbus.master.planner import Supervision
from procbus.master.settings import TreeSettings
from procbus.plugins.base import SimplePlugin
from procbus.plugins.process import Daemonizer, MasterPIDFile
from procbus.plugins.systemd import SystemdNotify
from procbus.worker.apps import WorkerApp, import_object
from procbus.worker.credentials import Credentials
from procbus.worker.interface import Interface, choose

log = logging.getLogger("procbus.run")


def build_parser() -> argparse.ArgumentParser:
    """The options of ``procbus run`` (one per setting of `procbus.config`)."""
    parser = argparse.ArgumentParser(
        prog="procbus run",
        description="Host APP (module:attribute, a WSGI or ASGI app; the demo app when omitted) "
        "behind pre-forked workers. Command line beats --config file beats PROCBUS_* "
        "environment beats defaults. Exit status: 0 stopped, 1 could not start, "
        "2 bad configuration.",
    )
    config_module.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``procbus run ARGS``: parse (exit 2 on usage errors) and run."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """``procbus run``: the exit status of the whole tree."""
    try:
        config = config_module.load(args)
    except ConfigError as exc:
        print(f"procbus run: {exc}", file=sys.stderr)
        return 2
    try:
        _setup_logging(config)
    except ConfigError as exc:
        print(f"procbus run: {exc}", file=sys.stderr)
        return 2
    # As gunicorn does: APP may live in the current directory, whatever the
    # entry point (the console script does not put it on sys.path).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return Host(config, args).run()
    except ConfigError as exc:  # includes addresses that cannot be bound
        print(f"procbus run: {exc}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"procbus run: {exc}", file=sys.stderr)
        return 1
    except ChannelFailures as exc:  # a start listener failed (logged with its traceback)
        print(f"procbus run: cannot start: {exc}", file=sys.stderr)
        return 1


def _setup_logging(config: Config) -> None:
    level = getattr(logging, config.log_level.upper())
    handler: logging.Handler
    if config.log_file is not None:
        try:
            handler = logging.FileHandler(config.log_file)
        except OSError as exc:
            raise ConfigError(f"log_file '{config.log_file}': {exc.strerror}") from None
    else:
        handler = logging.StreamHandler(sys.stderr)
    logging.basicConfig(
        level=level,
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    # waitress warns on every queued request under load: noise, not news.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    if config.access_log:
        logging.getLogger("procbus.access").setLevel(logging.INFO)


def worker_app(config: Config) -> str | WorkerApp:
    """The worker app `config` asks for (imported now only with ``preload``)."""
    if config.worker is not None:
        if not config.preload:
            return config.worker
        worker: WorkerApp = import_object(config.worker)
        return worker
    # waitress and the interface check only when an app is hosted (a generic
    # worker has no use for them); uvicorn only in the workers that serve ASGI.
    from procbus.worker.serving import http_worker  # noqa: PLC0415

    target = config.app or DEMO_APP
    app: object = target
    if config.preload:
        app = import_object(target)
        choose(app, config.interface, target)  # a wrong --interface: refused before any fork
    return http_worker(
        app,
        interface=config.interface,
        threads=config.threads,
        access_log=config.access_log,
        graceful_timeout=config.graceful_timeout,
    )


def check_app(config: Config) -> str:
    """Import the app (or worker function) as a worker would; `StartupError` if it
    fails. Returns what will serve it, in a line for ``--check``."""
    target = config.worker or config.app or DEMO_APP
    obj = import_object(target)
    if config.worker is not None:
        if not callable(obj):
            raise StartupError(
                f"worker function {target!r} is not callable (got {type(obj).__name__})"
            )
        return f"worker {target}: a generic worker function\n"
    chosen = choose(obj, config.interface, target)
    server = "uvicorn" if chosen is Interface.ASGI else "waitress"
    how = "detected" if config.interface is Interface.AUTO else "as configured"
    return f"app {target}: {chosen.upper()} ({how}), served by {server}\n"


def listening_sockets(
    config: Config, environ: MutableMapping[str, str] | None = None
) -> list[socket.socket]:
    """The sockets the workers accept on: inherited, from systemd, or bound now."""
    environ = os.environ if environ is None else environ
    inherited = sockets.inherit_from_env(environ)
    if inherited is not None:
        return inherited
    activated = sockets.from_systemd(environ)
    if activated is not None:
        return activated
    if config.worker is not None and config.sources.get("bind") is Source.DEFAULT:
        return []  # a generic worker listens only when asked to
    return sockets.bind([sockets.parse_address(text) for text in config.bind])


class Host:
    """One ``procbus run``: the configuration, the app, the sockets and the master.

    The master's plugins do the rest: `MasterPIDFile` (``--pidfile``) and
    `SystemdNotify` (``NOTIFY_SOCKET``). What is left here is the boot (a
    worker that cannot boot before any served stops the master), the
    configuration a reload re-reads, and the re-exec of ``restart``.
    """

    def __init__(self, config: Config, args: argparse.Namespace | dict[str, Any]) -> None:
        self.config = config
        self.args = args
        self.sockets: list[socket.socket] = []
        self.master: Master | None = None
        self._booted = False
        self.credentials: Credentials | None = None
        self.exec_failure: str | None = None
        """Set when ``restart`` could not ``execv``: this process goes on as the next master."""

    def run(self) -> int:
        config = self.config
        if config.check:
            chosen = check_app(config)
            sys.stdout.write(config_module.describe(config) + chosen)
            return 0
        app = worker_app(config)
        self.credentials = worker_credentials(config)  # unknown names fail before binding
        self.sockets = listening_sockets(config)
        try:
            code = self._serve(app)
            while self.exec_failure is not None:
                # ``restart`` could not re-execute: serve on, as the next master would.
                code = self._serve(worker_app(self.config))
            return code
        finally:
            for sock in self.sockets:
                sock.close()

    def _serve(self, app: str | WorkerApp) -> int:
        """One master's life: detach, build the master, run it with its plugins."""
        resumed, self.exec_failure = self.exec_failure, None
        for sock in self.sockets:
            log.info("listening on %s", sockets.describe(sock))
        self._detach(first=resumed is None)
        master = self._master(app)
        if resumed is not None:
            master.jobs.record_failure("restart", f"cannot re-execute: {resumed}")
        with contextlib.ExitStack() as plugins:
            for plugin in self._plugins(master):
                plugin.subscribe()  # the pidfile refuses a live instance here
                plugins.callback(plugin.unsubscribe)
            code = master.run()
        if master.lineage.exec_requested:
            self._reexec(master)
        if master.pool.view.halted is not None:  # no worker could boot: the pool gave up
            print(f"procbus run: {master.pool.view.halted}", file=sys.stderr)
        return code

    def _detach(self, first: bool) -> None:
        """``--daemon`` (once: a master that serves on after a failed exec is detached)
        and ``--umask``."""
        config = self.config
        if config.daemon and first:
            # What the app prints (and any crash) goes to the log file, if any.
            output = str(config.log_file) if config.log_file is not None else "/dev/null"
            Daemonizer.daemonize(stdout=output, stderr=output)
        if config.umask is not None:
            os.umask(config.umask)

    def _master(self, app: str | WorkerApp) -> Master:
        """The master, with what a previous master handed over (restart, upgrade)."""
        config = self.config
        master = Master(
            app,
            name=config.name,
            runtime_dir=config.runtime_dir,
            settings=tree_settings(config),
            sockets=self.sockets,
            control=control_settings(config),
            credentials=self.credentials,
        )
        self.master = master
        master.lineage.inherit(Inherited.take(os.environ), config.workers)
        master.reload_config = self.reload_config
        master.event_stream.observers.append(self._observer(master))
        return master

    def _plugins(self, master: Master) -> Iterator[SimplePlugin]:
        """The plugins of `master`'s bus, each made when the one before is subscribed."""
        if self.config.pidfile is not None:
            yield MasterPIDFile(master, self.config.pidfile)
        yield SystemdNotify(master)

    def _observer(self, master: Master) -> Callable[[str, dict[str, Any]], None]:
        """The boot, from the master's events: logged once every worker runs (a worker
        that cannot boot before is the planner's to halt: ``pool.view.halted``)."""

        def observe(event: str, data: dict[str, Any]) -> None:
            if event == "ready" and not self._booted and master.pool.all_running():
                self._booted = True
                log.info(
                    "master %d ready: %d workers, generation %d",
                    master.pid,
                    master.pool.target,
                    master.generation,
                )

        return observe

    def reload_config(self) -> None:
        """Re-read the configuration for a reload; raise (abort the reload) if it is bad."""
        master = self.master
        assert master is not None, "reload_config runs inside the master's loop"
        new = config_module.load(self.args)
        changes = self.config.changed(new)
        for name in sorted(set(changes) & _RESTART_ONLY):
            log.warning("%s changed in the configuration: takes effect on restart", name)
        master.app = worker_app(new)
        master.apply_settings(tree_settings(new))
        if new.workers != self.config.workers:
            master.pool.scale(new.workers)
        self.config = new
        if changes:
            log.info("configuration reloaded: %s", ", ".join(sorted(changes)))

    def _reexec(self, master: Master) -> None:
        """Replace this process with a fresh one, keeping sockets and lock (restart).

        Should ``execv`` fail, the hand-over stays in the environment and
        `exec_failure` says why: `run` serves on with what was handed over.
        """
        failure = re_execute(master.lineage.hand_over(), *master.bus.exec_args())
        self.exec_failure = failure
        log.error("restart: %s; this process serves on", failure)


_RESTART_ONLY: Final = frozenset(
    {
        "bind",
        "name",
        "ctl",
        "metrics",
        "runtime_dir",
        "daemon",
        "pidfile",
        "umask",
        "log_level",
        "log_file",
        "curve_keys",
        "admin_uids",
        "read_uids",
        "user",
        "group",
    }
)
"""Settings a reload cannot apply: they belong to the master itself."""


def tree_settings(config: Config) -> TreeSettings:
    """The master's `TreeSettings` for `config`."""
    return TreeSettings(
        workers=config.workers,
        heartbeat_interval=config.heartbeat_interval,
        publish_timeout=config.publish_timeout,
        stats_interval=config.stats_interval,
        metrics_timeout=config.metrics_timeout,
        reload_batch=config.reload_batch,
        supervision=Supervision(
            timeout=config.timeout,
            boot_timeout=config.boot_timeout,
            graceful_timeout=config.graceful_timeout,
            max_requests=config.max_requests,
            max_requests_jitter=config.max_requests_jitter,
            max_age=config.max_age,
            max_rss=config.max_rss,
            rss_samples=config.rss_samples,
        ),
    )


def worker_credentials(config: Config) -> Credentials | None:
    """Who the workers run as (`Credentials`), or None; `ConfigError` for unknown names."""
    return Credentials.resolve(config.user, config.group)


def control_settings(config: Config) -> ControlSettings:
    """Who may use the control socket, and where it and the metrics endpoint are."""
    return ControlSettings.from_config(
        config.ctl, config.curve_keys, config.admin_uids, config.read_uids, config.metrics
    )
