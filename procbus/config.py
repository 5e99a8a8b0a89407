"""The settings of ``procbus run``: one declarative schema, four sources.

Every setting is one `Setting` in `SETTINGS`: its name, parser and validation,
default, help text, command-line flags, environment variable and config-file
key. Nothing else lists settings: ``--help`` (`add_arguments`), the README
table (`markdown_table`, printed by ``scripts/config_table.py``) and the
effective configuration of ``procbus run --check`` (`describe`) are all built
from the schema, so they cannot drift apart.

`load` reads the sources, most important first::

    command line  >  config file ([procbus] table, TOML)  >  PROCBUS_* environment  >  defaults

and returns a frozen `Config` that records where each value came from. A bad
value from any source is a `ConfigError` with a one-line message naming the
setting, the value, what was expected and where it came from; nothing is
half-applied. Reload builds a new `Config` and compares it with
`Config.changed`; a config is never mutated in place.

Values from text (the command line and the environment) are parsed: numbers,
``1/0/true/false/yes/no`` booleans, comma-separated lists in the environment.
Values from the TOML file must already have the right TOML type
(``workers = "four"`` is an error, not a string to guess at); the exceptions
are the file mode (``umask = "022"`` or ``umask = 0o022``) and user and group
(a name or a number).
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from procbus.errors import ConfigError
from procbus.worker.interface import Interface

ENV_PREFIX: Final = "PROCBUS_"
FILE_TABLE: Final = "procbus"
"""The TOML table that holds the settings; nothing else may be in the file."""
DEFAULT_BIND: Final = ("127.0.0.1:8000",)
DEMO_APP: Final = "procbus.demo:app"
"""What ``procbus run`` hosts when neither an app nor a worker is given."""


class Source(StrEnum):
    """Where a setting's value came from, least important first."""

    DEFAULT = "default"
    ENV = "env"
    FILE = "file"
    CLI = "cli"


class LogLevel(StrEnum):
    """The ``log_level`` choices, named as the `logging` levels."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


# -- parsers ---------------------------------------------------------------
#
# A parser takes a raw value and whether it came as text (command line or
# environment), and returns the typed value or raises `_Rejected`.

Parser = Callable[[object, bool], Any]


class _Rejected(Exception):
    """A parser's refusal: the offending value and what was expected instead."""

    def __init__(self, value: object, expected: str) -> None:
        super().__init__(value, expected)
        self.value = value
        self.expected = expected


def _integer(minimum: int) -> Parser:
    expected = f"an integer >= {minimum}"

    def parse(raw: object, textual: bool) -> int:
        if textual and isinstance(raw, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", raw):
            value = int(raw)
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            raise _Rejected(raw, expected)
        if value < minimum:
            raise _Rejected(raw, expected)
        return value

    return parse


def _seconds(minimum: float, *, inclusive: bool) -> Parser:
    expected = f"a number of seconds {'>=' if inclusive else '>'} {minimum:g}"

    def parse(raw: object, textual: bool) -> float:
        value: float
        if textual and isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                raise _Rejected(raw, expected) from None
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        else:
            raise _Rejected(raw, expected)
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise _Rejected(raw, expected)
        return value

    return parse


_TRUE: Final = frozenset({"1", "true", "yes"})
_FALSE: Final = frozenset({"0", "false", "no"})


def _boolean(raw: object, textual: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if textual and isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise _Rejected(raw, "a boolean (1/0, true/false, yes/no)")
    raise _Rejected(raw, "true or false")


_SIZE_UNITS: Final = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([KMGT])(?:i?B)?|B)?\s*", re.I)


def _size(raw: object, textual: bool) -> int:
    """Bytes: an integer, or text with a unit K, M, G or T (powers of 1024): ``512M``,
    ``2G``, ``1.5G``; ``0`` is 0. Text in the config file too (``max_rss = "512M"``)."""
    expected = "a size in bytes, or with a unit K, M, G or T (512M, 2G, 1.5G)"
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 0:
            raise _Rejected(raw, expected)
        return raw
    match = _SIZE.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise _Rejected(raw, expected)
    number, unit = match.groups()
    if "." in number and not unit:
        raise _Rejected(raw, expected)  # a fraction of a byte
    return int(float(number) * _SIZE_UNITS[(unit or "").upper()])


def _text(expected: str, valid: Callable[[str], bool]) -> Parser:
    def parse(raw: object, textual: bool) -> str:
        if not isinstance(raw, str) or not valid(raw):
            raise _Rejected(raw, expected)
        return raw

    return parse


def _path(raw: object, textual: bool) -> Path:
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise _Rejected(raw, "a non-empty path")
    return Path(raw)


def _choice(enum: type[StrEnum]) -> Parser:
    expected = "one of " + ", ".join(member.value for member in enum)

    def parse(raw: object, textual: bool) -> StrEnum:
        if isinstance(raw, str):
            try:
                return enum(raw.strip().lower())
            except ValueError:
                pass
        raise _Rejected(raw, expected)

    return parse


def _list_of(item: Parser, expected: str) -> Parser:
    """A list: repeated flags, a TOML array, or comma-separated text."""

    def parse(raw: object, textual: bool) -> tuple[Any, ...]:
        items: list[object]
        if textual and isinstance(raw, str):
            items = [part.strip() for part in raw.split(",") if part.strip()]
        elif isinstance(raw, list | tuple):
            items = list(raw)
        else:
            raise _Rejected(raw, expected)
        return tuple(item(each, textual) for each in items)

    return parse


def _valid_address(text: str) -> bool:
    if text.startswith("unix:"):
        return len(text) > len("unix:") and "\0" not in text
    host, colon, port = text.rpartition(":")
    if not colon or not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        return False
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return bool(host) and re.fullmatch(r"[^\s:\[\]/]+", host) is not None


def _valid_tcp_address(text: str) -> bool:
    return not text.startswith("unix:") and _valid_address(text)


def _valid_reference(text: str) -> bool:
    dotted = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
    return re.fullmatch(f"{dotted}:{dotted}", text) is not None


def _valid_name(text: str) -> bool:
    return bool(text) and "/" not in text and "\0" not in text and text not in {".", ".."}


def _valid_endpoint(text: str) -> bool:
    return re.fullmatch(r"(ipc|tcp)://\S+", text) is not None


def _account(raw: object, textual: bool) -> str | int:
    expected = "a name or a numeric id >= 0"
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str) and re.fullmatch(r"[0-9]+", raw):
        return int(raw)
    if isinstance(raw, str) and re.fullmatch(r"[^\s:/]+", raw):
        return raw
    raise _Rejected(raw, expected)


def _mode(raw: object, textual: bool) -> int:
    expected = "a file mode creation mask 0..0o777 (0o22, 022 or 18)"
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        if re.fullmatch(r"0[oO][0-7]+", text):
            value = int(text[2:], 8)
        elif re.fullmatch(r"0[0-7]*", text):
            value = int(text, 8)
        elif re.fullmatch(r"[1-9][0-9]*", text):
            value = int(text)
    if value is None or not 0 <= value <= 0o777:
        raise _Rejected(raw, expected)
    return value


# -- the schema ------------------------------------------------------------


def _render(value: object) -> str:
    """A value as a TOML literal; ``unset`` for None."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_render(item) for item in value) + "]"
    return str(value)


def _render_mode(value: object) -> str:
    return "unset" if value is None else f"0o{value:03o}"


@dataclass(frozen=True)
class Setting:
    """One setting of ``procbus run``, everything about it in one place.

    The environment variable is ``PROCBUS_`` and the name in upper case, the
    config-file key is the name, the long flag is the name with dashes.
    """

    name: str
    parse: Parser
    """(raw value, came as text) -> value; raises `_Rejected`."""
    help: str
    default: Any = None
    default_factory: Callable[[], Any] | None = None
    """Computes the default when it is needed (at `load`, never at import)."""
    default_doc: str | None = None
    """How the docs show the default when the value alone would not say it."""
    short: str | None = None
    metavar: str | None = None
    flag: bool = False
    """A boolean switch on the command line (present means true)."""
    repeatable: bool = False
    """A list: the flag repeats, the environment value is comma-separated."""
    positional: bool = False
    cli_only: bool = False
    """Only on the command line: no environment variable, no file key."""
    in_file: bool = True
    """May be set in the config file."""
    render: Callable[[object], str] = _render

    @property
    def env_var(self) -> str | None:
        return None if self.cli_only else ENV_PREFIX + self.name.upper()

    @property
    def toml_key(self) -> str | None:
        return self.name if self.in_file and not self.cli_only else None

    @property
    def cli_flags(self) -> tuple[str, ...]:
        if self.positional:
            return ()
        long = "--" + self.name.replace("_", "-")
        return (self.short, long) if self.short else (long,)

    def default_value(self) -> Any:
        return self.default_factory() if self.default_factory else self.default

    def default_text(self) -> str:
        return self.default_doc or self.render(self.default_value())

    def convert(self, raw: object, *, textual: bool, origin: str) -> Any:
        """The typed value of `raw`, or a `ConfigError` naming `origin`."""
        try:
            return self.parse(raw, textual)
        except _Rejected as exc:
            shown = repr(exc.value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            raise ConfigError(
                f"{self.name}: expected {exc.expected}, got {shown} ({origin})"
            ) from None


def _cpu_count() -> int:
    return os.cpu_count() or 1


_ADDRESS: Final = "HOST:PORT, [IPV6]:PORT or unix:PATH with a port in 0-65535"
_TCP_ADDRESS: Final = "HOST:PORT or [IPV6]:PORT with a port in 0-65535"
_UIDS_HELP: Final = "more uids allowed on the ipc:// control socket"

# fmt: off
SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("app", _text("a MODULE:ATTRIBUTE reference", _valid_reference),
            "WSGI or ASGI app to host, as MODULE:ATTRIBUTE", metavar="APP", positional=True,
            default_doc=f"none (the demo, {DEMO_APP})"),
    Setting("interface", _choice(Interface),
            "the app's interface: auto (a coroutine function, or an object whose __call__ is "
            "one, is ASGI and is served by uvicorn; any other callable is WSGI, served by "
            "waitress), asgi or wsgi", metavar="KIND", default=Interface.AUTO),
    Setting("workers", _integer(0), "number of worker processes", short="-w", metavar="N",
            default_factory=_cpu_count, default_doc="number of CPUs"),
    Setting("bind", _list_of(_text(_ADDRESS, _valid_address), f"a list of {_ADDRESS}"),
            "listen on this address (HOST:PORT, [IPV6]:PORT or unix:PATH); repeatable",
            short="-b", metavar="ADDRESS", repeatable=True, default=DEFAULT_BIND),
    Setting("name", _text("a non-empty name without '/'", _valid_name),
            "instance name: runtime directory and control socket", default="procbus"),
    Setting("ctl", _text("an ipc://PATH or tcp://HOST:PORT endpoint", _valid_endpoint),
            "control endpoint; tcp:// needs curve_keys", metavar="ENDPOINT",
            default_doc="ipc:// in the runtime directory"),
    Setting("runtime_dir", _path,
            "directory for sockets and the lock (0700; 0711 when other uids may connect)",
            metavar="DIR",
            default_doc="$XDG_RUNTIME_DIR/procbus/NAME, else $TMPDIR/procbus-UID/NAME"),
    Setting("config", _path, "TOML config file with a [procbus] table", metavar="FILE",
            in_file=False),
    Setting("worker", _text("a MODULE:FUNCTION reference", _valid_reference),
            "generic (non-HTTP) worker function to run instead of an APP",
            metavar="MODULE:FUNCTION"),
    Setting("preload", _boolean, "import the app in the master before forking",
            flag=True, default=False),
    Setting("threads", _integer(1), "WSGI threads per worker", metavar="N", default=4),
    Setting("timeout", _seconds(0, inclusive=False),
            "kill a worker silent for this many seconds", metavar="SECONDS", default=30.0),
    Setting("graceful_timeout", _seconds(0, inclusive=True),
            "kill a draining worker after this many seconds", metavar="SECONDS", default=30.0),
    Setting("boot_timeout", _seconds(0, inclusive=False),
            "kill a worker not running this many seconds after its fork", metavar="SECONDS",
            default=60.0),
    Setting("reload_batch", _integer(0),
            "workers a reload replaces at a time: 0 starts the whole new generation at once "
            "(the surge: one app start-up time, up to twice the workers' memory meanwhile); "
            "K >= 1 rolls K at a time (N/K start-up times, K extra workers)", metavar="K",
            default=0),
    Setting("heartbeat_interval", _seconds(0, inclusive=False),
            "seconds between worker heartbeats", metavar="SECONDS", default=1.0),
    Setting("publish_timeout", _seconds(0, inclusive=False),
            "seconds a tree publish waits for the workers' replies", metavar="SECONDS",
            default=30.0),
    Setting("stats_interval", _seconds(0, inclusive=False),
            "seconds between stats events while someone watches them (procbus top)",
            metavar="SECONDS", default=1.0),
    Setting("metrics", _text(_TCP_ADDRESS, _valid_tcp_address),
            "serve Prometheus metrics on http://HOST:PORT/metrics (unauthenticated: bind "
            "127.0.0.1 or a private address)", metavar="HOST:PORT", default_doc="off"),
    Setting("metrics_timeout", _seconds(0, inclusive=False),
            "seconds a metrics scrape waits for the workers (the late ones are left out)",
            metavar="SECONDS", default=2.0),
    Setting("max_requests", _integer(0), "recycle a worker after this many requests (0: never)",
            metavar="N", default=0),
    Setting("max_requests_jitter", _integer(0),
            "add up to this many requests at random to max_requests, per worker", metavar="N",
            default=0),
    Setting("max_age", _seconds(0, inclusive=True),
            "recycle a worker after this many seconds (0: never)", metavar="SECONDS",
            default=0.0),
    Setting("max_rss", _size,
            "recycle a worker whose RSS is above this size (bytes, or 512M, 2G) in "
            "rss_samples samples in a row, one per heartbeat interval (0: never)",
            metavar="SIZE", default=0),
    Setting("rss_samples", _integer(1),
            "samples in a row above max_rss after which a worker is recycled", metavar="K",
            default=3),
    Setting("pidfile", _path, "write the master's pid to this file", metavar="FILE"),
    Setting("daemon", _boolean, "detach from the terminal", flag=True, default=False),
    Setting("user", _account, "switch workers to this user (name or uid)", metavar="USER"),
    Setting("group", _account, "switch workers to this group (name or gid)", metavar="GROUP"),
    Setting("umask", _mode, "file mode creation mask (octal: 0o22 or 022)", metavar="MODE",
            render=_render_mode),
    Setting("log_level", _choice(LogLevel), "log level: " + ", ".join(LogLevel),
            metavar="LEVEL", default=LogLevel.INFO),
    Setting("log_file", _path, "append the log (and, with --daemon, stdout and stderr) here",
            metavar="FILE", default_doc="stderr"),
    Setting("access_log", _boolean, "log every request", flag=True, default=False),
    Setting("admin_uids", _list_of(_integer(0), "a list of uids (integers >= 0)"),
            _UIDS_HELP + ", for every command (root and the owner always are); repeatable",
            metavar="UID", repeatable=True, default=()),
    Setting("read_uids", _list_of(_integer(0), "a list of uids (integers >= 0)"),
            _UIDS_HELP + ", for read-only commands; repeatable", metavar="UID",
            repeatable=True, default=()),
    Setting("curve_keys", _path,
            "directory with the server's CURVE key pair and clients/ public keys", metavar="DIR"),
    Setting("check", _boolean, "load the config and the app, print the effective config, exit",
            flag=True, default=False, cli_only=True),
)
# fmt: on

_BY_NAME: Final = MappingProxyType({setting.name: setting for setting in SETTINGS})
_BY_ENV: Final = MappingProxyType(
    {setting.env_var: setting for setting in SETTINGS if setting.env_var}
)


# -- the loaded configuration ----------------------------------------------


@dataclass(frozen=True)
class Config:
    """The effective settings of one ``procbus run``, immutable.

    Built by `load`; one attribute per `Setting`. `sources` says where each
    value came from and takes no part in equality.
    """

    app: str | None
    interface: Interface
    workers: int
    bind: tuple[str, ...]
    name: str
    ctl: str | None
    runtime_dir: Path | None
    config: Path | None
    worker: str | None
    preload: bool
    threads: int
    timeout: float
    graceful_timeout: float
    boot_timeout: float
    reload_batch: int
    heartbeat_interval: float
    publish_timeout: float
    stats_interval: float
    metrics: str | None
    metrics_timeout: float
    max_requests: int
    max_requests_jitter: int
    max_age: float
    max_rss: int
    rss_samples: int
    pidfile: Path | None
    daemon: bool
    user: str | int | None
    group: str | int | None
    umask: int | None
    log_level: LogLevel
    log_file: Path | None
    access_log: bool
    admin_uids: tuple[int, ...]
    read_uids: tuple[int, ...]
    curve_keys: Path | None
    check: bool
    sources: Mapping[str, Source] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )

    def changed(self, other: Config) -> dict[str, tuple[Any, Any]]:
        """``{name: (value here, value in other)}`` for every setting that differs."""
        return {
            setting.name: (getattr(self, setting.name), getattr(other, setting.name))
            for setting in SETTINGS
            if getattr(self, setting.name) != getattr(other, setting.name)
        }

    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON-able data (paths as strings, lists as lists)."""
        return {setting.name: _jsonable(getattr(self, setting.name)) for setting in SETTINGS}


def _jsonable(value: object) -> Any:
    if isinstance(value, Path | StrEnum):
        return str(value)
    if isinstance(value, tuple):
        return [_jsonable(item) for item in value]
    return value


def load(
    cli: Mapping[str, Any] | argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Config:
    """Build the effective `Config` from the command line, file, environment and defaults.

    `cli` is the namespace of a parser set up by `add_arguments` (absent
    options are absent, thanks to ``argparse.SUPPRESS``) or a plain mapping;
    entries that are not settings, and None values, are ignored. `environ`
    defaults to ``os.environ``; ``PROCBUS_*`` variables that name no setting
    and empty ones are ignored. The config file is the ``config`` setting
    from the command line or ``PROCBUS_CONFIG``.
    """
    given = vars(cli) if isinstance(cli, argparse.Namespace) else cli
    layers: dict[Source, dict[str, Any]] = {
        Source.ENV: _from_environ(os.environ if environ is None else environ),
        Source.CLI: _from_cli(given),
    }
    config_file = layers[Source.CLI].get("config", layers[Source.ENV].get("config"))
    layers[Source.FILE] = _from_file(config_file) if config_file is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for setting in SETTINGS:
        for source in (Source.CLI, Source.FILE, Source.ENV):
            if setting.name in layers[source]:
                values[setting.name] = layers[source][setting.name]
                sources[setting.name] = source
                break
        else:
            values[setting.name] = setting.default_value()
            sources[setting.name] = Source.DEFAULT
    _check_together(values, sources)
    return Config(**values, sources=MappingProxyType(sources))


def _from_cli(given: Mapping[str, Any]) -> dict[str, Any]:
    values = {}
    for name, raw in given.items():
        setting = _BY_NAME.get(name)
        if setting is None or raw is None:
            continue
        flag = setting.cli_flags[-1] if setting.cli_flags else setting.metavar or name
        values[name] = setting.convert(raw, textual=True, origin=f"from {flag}")
    return values


def _from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    values = {}
    for var, raw in environ.items():
        setting = _BY_ENV.get(var)
        if setting is None or not raw.strip():
            continue
        values[setting.name] = setting.convert(raw, textual=True, origin=f"from {var}")
    return values


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as stream:
            document = tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    for key in document:
        if key != FILE_TABLE:
            raise ConfigError(
                f"{path}: unknown key {key!r} outside [{FILE_TABLE}] "
                f"(settings belong in the [{FILE_TABLE}] table)"
            )
    table = document.get(FILE_TABLE, {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: {FILE_TABLE!r} must be a table, got {table!r}")
    keys = [setting.toml_key for setting in SETTINGS if setting.toml_key]
    values = {}
    for key, raw in table.items():
        setting = _BY_NAME.get(key)
        if setting is None:
            close = difflib.get_close_matches(key, keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: [{FILE_TABLE}] unknown key {key!r}{hint}")
        if setting.toml_key is None:
            raise ConfigError(
                f"{path}: [{FILE_TABLE}] key {key!r} is not allowed in the file "
                "(command line or environment only)"
            )
        values[key] = setting.convert(raw, textual=False, origin=f"from {path} [{FILE_TABLE}]")
    return values


def _check_together(values: Mapping[str, Any], sources: Mapping[str, Source]) -> None:
    """Checks that involve more than one setting."""
    if values["app"] is not None and values["worker"] is not None:
        raise ConfigError(
            f"app and worker are mutually exclusive: app = {values['app']!r} "
            f"({sources['app']}), worker = {values['worker']!r} ({sources['worker']})"
        )
    if values["worker"] is not None and values["interface"] is not Interface.AUTO:
        raise ConfigError(
            f"interface applies to an APP, not to a generic worker: interface = "
            f"{values['interface'].value!r} ({sources['interface']}), worker = "
            f"{values['worker']!r} ({sources['worker']})"
        )
    if (values["ctl"] or "").startswith("tcp://") and values["curve_keys"] is None:
        raise ConfigError(
            f"ctl: a tcp:// endpoint needs curve_keys, got {values['ctl']!r} "
            f"({sources['ctl']}) without curve_keys"
        )


# -- what the schema generates ---------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every setting's flag (and the APP positional) to `parser`.

    Every default is ``argparse.SUPPRESS``: an option not given is absent from
    the namespace, so `load` can tell it from an explicit value. Values stay
    strings; `load` parses and validates them like the environment's.
    """
    for setting in SETTINGS:
        help_text = f"{setting.help} (default: {setting.default_text()}"
        if setting.env_var:
            help_text += f"; env {setting.env_var}"
        help_text = (help_text + ")").replace("%", "%%")
        if setting.positional:
            parser.add_argument(
                setting.name,
                nargs="?",
                metavar=setting.metavar,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif setting.flag:
            parser.add_argument(
                *setting.cli_flags,
                dest=setting.name,
                action="store_true",
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            parser.add_argument(
                *setting.cli_flags,
                dest=setting.name,
                metavar=setting.metavar,
                action="append" if setting.repeatable else "store",
                default=argparse.SUPPRESS,
                help=help_text,
            )


def describe(config: Config) -> str:
    """The effective config as aligned ``name = value  (source)`` lines."""
    rows = [(setting.name, setting.render(getattr(config, setting.name))) for setting in SETTINGS]
    name_width = max(len(name) for name, _ in rows)
    value_width = max(len(value) for _, value in rows)
    return "".join(
        f"{name:<{name_width}} = {value:<{value_width}}  "
        f"({config.sources.get(name, Source.DEFAULT)})\n"
        for name, value in rows
    )


def markdown_table() -> str:
    """The README's table of settings: Setting | CLI | Env | Default | Meaning."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| Setting | CLI | Env | Default | Meaning |", "|---|---|---|---|---|"]
    for setting in SETTINGS:
        flags = setting.cli_flags or (setting.metavar or setting.name.upper(),)
        meaning = setting.help
        if setting.cli_only:
            meaning += " (command line only)"
        elif setting.toml_key is None:
            meaning += " (not in the config file)"
        env = f"`{setting.env_var}`" if setting.env_var else ""
        default = setting.default_doc or f"`{setting.render(setting.default_value())}`"
        lines.append(
            f"| `{setting.name}` | {', '.join(f'`{flag}`' for flag in flags)} | {env} "
            f"| {cell(default)} | {cell(meaning)} |"
        )
    return "\n".join(lines) + "\n"
