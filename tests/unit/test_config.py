"""The config schema: sources and their precedence, validation, and what the schema generates.

Every test passes `environ` explicitly and writes its config files under
`tmp_path`, so nothing depends on the real environment or the working directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import runpy
from pathlib import Path
from typing import Any

import pytest

from procbus import config
from procbus.config import SETTINGS, Config, LogLevel, Source, load
from procbus.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "config_table.py"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "procbus.toml"
    path.write_text(text)
    return path


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="procbus run")
    config.add_arguments(parser)
    return parser


# -- sources and precedence -------------------------------------------------


def test_nothing_given_yields_the_schema_defaults() -> None:
    """load with an empty command line and environment.

    Every value is its schema default, every source is "default".
    """
    loaded = load({}, environ={})
    assert loaded.app is None
    assert loaded.workers == (os.cpu_count() or 1)
    assert loaded.bind == ("127.0.0.1:8000",)
    assert loaded.name == "procbus"
    assert loaded.ctl is None
    assert loaded.threads == 4
    assert loaded.timeout == 30.0
    assert loaded.graceful_timeout == 30.0
    assert loaded.boot_timeout == 60.0
    assert loaded.reload_batch == 0
    assert loaded.heartbeat_interval == 1.0
    assert loaded.publish_timeout == 30.0
    assert (loaded.max_requests, loaded.max_requests_jitter, loaded.max_age) == (0, 0, 0.0)
    assert loaded.umask is None
    assert loaded.log_level is LogLevel.INFO
    assert loaded.admin_uids == loaded.read_uids == ()
    assert not (loaded.preload or loaded.daemon or loaded.access_log or loaded.check)
    assert set(loaded.sources.values()) == {Source.DEFAULT}


@pytest.mark.parametrize(("cpus", "expected"), [(7, 7), (None, 1)])
def test_workers_default_is_the_cpu_count_read_at_load(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, expected: int
) -> None:
    """Patch os.cpu_count after import, then load with nothing given.

    workers follows the patched count (1 when it is unknown): the default is
    computed at load time, not at import.
    """
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert load({}, environ={}).workers == expected


def test_environment_overrides_default() -> None:
    """Set PROCBUS_WORKERS and PROCBUS_TIMEOUT only.

    Both take the environment's values with source "env"; the rest stay defaults.
    """
    loaded = load({}, environ={"PROCBUS_WORKERS": "3", "PROCBUS_TIMEOUT": "2.5"})
    assert (loaded.workers, loaded.timeout) == (3, 2.5)
    assert loaded.sources["workers"] == loaded.sources["timeout"] == "env"
    assert loaded.sources["threads"] == "default"


def test_file_overrides_environment(tmp_path: Path) -> None:
    """Set workers in the environment and in the file named by PROCBUS_CONFIG.

    The file wins; a setting only in the environment keeps its env value.
    """
    path = write_config(tmp_path, "[procbus]\nworkers = 5\n")
    environ = {"PROCBUS_CONFIG": str(path), "PROCBUS_WORKERS": "3", "PROCBUS_THREADS": "8"}
    loaded = load({}, environ=environ)
    assert loaded.workers == 5
    assert loaded.sources["workers"] == "file"
    assert loaded.threads == 8
    assert loaded.sources["threads"] == "env"
    assert loaded.config == path
    assert loaded.sources["config"] == "env"


def test_command_line_overrides_file(tmp_path: Path) -> None:
    """Set workers and bind in the file and on the command line.

    The command line wins for both; the file still supplies what the command
    line leaves out.
    """
    path = write_config(tmp_path, '[procbus]\nworkers = 5\nbind = ["0.0.0.0:80"]\nname = "site"\n')
    loaded = load({"config": str(path), "workers": "2", "bind": ["unix:/run/s"]}, environ={})
    assert (loaded.workers, loaded.bind, loaded.name) == (2, ("unix:/run/s",), "site")
    assert loaded.sources == {
        **{setting.name: "default" for setting in SETTINGS},
        "config": "cli",
        "workers": "cli",
        "bind": "cli",
        "name": "file",
    }


def test_command_line_config_path_wins_over_environment(tmp_path: Path) -> None:
    """Name one file in PROCBUS_CONFIG and another on the command line.

    Only the command line's file is read.
    """
    ignored = tmp_path / "ignored.toml"
    ignored.write_text("[procbus]\nworkers = 9\n")
    used = write_config(tmp_path, "[procbus]\nworkers = 4\n")
    loaded = load({"config": used}, environ={"PROCBUS_CONFIG": str(ignored)})
    assert loaded.workers == 4
    assert loaded.config == used


def test_file_values_take_their_toml_types(tmp_path: Path) -> None:
    """Write every kind of value in the file.

    Integers, floats (an integer is accepted for seconds), booleans, arrays,
    paths, and umask as a TOML octal integer all load with their types.
    """
    path = write_config(
        tmp_path,
        """
        [procbus]
        app = "site.wsgi:application"
        timeout = 5
        graceful_timeout = 0.5
        preload = true
        bind = ["[::1]:8080", "unix:/run/site.sock"]
        pidfile = "/run/site.pid"
        umask = 0o027
        user = 1000
        group = "www"
        log_level = "WARNING"
        read_uids = [1001, 1002]
        """,
    )
    loaded = load({"config": path}, environ={})
    assert loaded.app == "site.wsgi:application"
    assert loaded.timeout == 5.0
    assert isinstance(loaded.timeout, float)
    assert loaded.graceful_timeout == 0.5
    assert loaded.preload is True
    assert loaded.bind == ("[::1]:8080", "unix:/run/site.sock")
    assert loaded.pidfile == Path("/run/site.pid")
    assert loaded.umask == 0o027
    assert (loaded.user, loaded.group) == (1000, "www")
    assert loaded.log_level is LogLevel.WARNING
    assert loaded.read_uids == (1001, 1002)


def test_empty_file_and_empty_procbus_table_change_nothing(tmp_path: Path) -> None:
    """Load an empty file, then one with only an empty [procbus] table.

    Both give the defaults: only the config setting itself differs.
    """
    defaults = load({}, environ={})
    for text in ("", "[procbus]\n"):
        path = write_config(tmp_path, text)
        assert defaults.changed(load({"config": path}, environ={})) == {"config": (None, path)}


# -- bad input --------------------------------------------------------------


BAD_INPUTS: list[Any] = [
    # (id, command line, environment, file text or None, fragments of the message)
    ("unknown file key", {}, {}, "[procbus]\nwrokers = 2\n",
     ["unknown key 'wrokers'", "did you mean 'workers'"]),
    ("key outside [procbus]", {}, {}, "workers = 2\n",
     ["unknown key 'workers' outside [procbus]"]),
    ("other table", {}, {}, "[server]\nport = 1\n", ["unknown key 'server' outside [procbus]"]),
    ("procbus not a table", {}, {}, "procbus = 3\n", ["'procbus' must be a table, got 3"]),
    ("wrong type in file", {}, {}, '[procbus]\nworkers = "four"\n',
     ["workers: expected an integer >= 0, got 'four'"]),
    ("string bool in file", {}, {}, '[procbus]\npreload = "yes"\n',
     ["preload: expected true or false, got 'yes'"]),
    ("scalar for a list in file", {}, {}, '[procbus]\nbind = "0.0.0.0:80"\n',
     ["bind: expected a list of", "got '0.0.0.0:80'"]),
    ("cli-only key in file", {}, {}, "[procbus]\ncheck = true\n",
     ["key 'check' is not allowed in the file"]),
    ("config key in file", {}, {}, '[procbus]\nconfig = "other.toml"\n',
     ["key 'config' is not allowed in the file"]),
    ("TOML syntax error", {}, {}, "[procbus\nworkers = 2\n", ["TOML syntax error"]),
    ("negative workers", {"workers": "-1"}, {}, None,
     ["workers: expected an integer >= 0, got '-1' (from --workers)"]),
    ("workers not a number", {"workers": "abc"}, {}, None,
     ["workers: expected an integer >= 0, got 'abc'"]),
    ("zero threads", {"threads": "0"}, {}, None, ["threads: expected an integer >= 1, got '0'"]),
    ("negative reload batch", {"reload_batch": "-1"}, {}, None,
     ["reload_batch: expected an integer >= 0, got '-1' (from --reload-batch)"]),
    ("reload batch not a number", {}, {"PROCBUS_RELOAD_BATCH": "all"}, None,
     ["reload_batch: expected an integer >= 0, got 'all' (from PROCBUS_RELOAD_BATCH)"]),
    ("reload batch a float in file", {}, {}, "[procbus]\nreload_batch = 1.5\n",
     ["reload_batch: expected an integer >= 0, got 1.5"]),
    ("port out of range", {"bind": ["localhost:99999"]}, {}, None,
     ["bind: expected HOST:PORT", "got 'localhost:99999'"]),
    ("bind without port", {"bind": ["localhost"]}, {}, None, ["got 'localhost'"]),
    ("empty unix path", {"bind": ["unix:"]}, {}, None, ["got 'unix:'"]),
    ("unbracketed IPv6", {"bind": ["::1:80"]}, {}, None, ["got '::1:80'"]),
    ("bad IPv6", {"bind": ["[nothex]:80"]}, {}, None, ["got '[nothex]:80'"]),
    ("umask too large", {"umask": "0o1000"}, {}, None, ["umask: expected", "got '0o1000'"]),
    ("umask not octal", {"umask": "09"}, {}, None, ["umask: expected", "got '09'"]),
    ("umask not a number", {}, {"PROCBUS_UMASK": "rwx"}, None,
     ["umask: expected", "got 'rwx' (from PROCBUS_UMASK)"]),
    ("bad log level", {"log_level": "loud"}, {}, None,
     ["log_level: expected one of debug, info, warning, error, critical, got 'loud'"]),
    ("zero timeout", {"timeout": "0"}, {}, None,
     ["timeout: expected a number of seconds > 0, got '0'"]),
    ("infinite timeout", {}, {"PROCBUS_TIMEOUT": "inf"}, None, ["timeout: expected", "'inf'"]),
    ("negative graceful timeout", {"graceful_timeout": "-1"}, {}, None,
     ["graceful_timeout: expected a number of seconds >= 0, got '-1'"]),
    ("name with a slash", {"name": "a/b"}, {}, None, ["name: expected", "got 'a/b'"]),
    ("ctl not ipc or tcp", {"ctl": "http://x"}, {}, None, ["ctl: expected", "got 'http://x'"]),
    ("tcp ctl without keys", {"ctl": "tcp://0.0.0.0:5555"}, {}, None,
     ["ctl: a tcp:// endpoint needs curve_keys", "'tcp://0.0.0.0:5555'"]),
    ("app not a reference", {"app": "site.py"}, {}, None,
     ["app: expected a MODULE:ATTRIBUTE reference, got 'site.py' (from APP)"]),
    ("app and worker both", {"app": "site:app"}, {"PROCBUS_WORKER": "jobs:run"}, None,
     ["app and worker are mutually exclusive", "'site:app' (cli)", "'jobs:run' (env)"]),
    ("interface for a generic worker", {"worker": "jobs:run", "interface": "asgi"}, {}, None,
     ["interface applies to an APP, not to a generic worker", "'asgi' (cli)", "'jobs:run'"]),
    ("unknown interface", {"interface": "rsgi"}, {}, None,
     ["interface: expected one of auto, asgi, wsgi, got 'rsgi' (from --interface)"]),
    ("bad env value", {}, {"PROCBUS_WORKERS": "many"}, None,
     ["workers: expected an integer >= 0, got 'many' (from PROCBUS_WORKERS)"]),
    ("bad env bool", {}, {"PROCBUS_PRELOAD": "maybe"}, None,
     ["preload: expected a boolean (1/0, true/false, yes/no), got 'maybe'"]),
    ("bad env list item", {}, {"PROCBUS_ADMIN_UIDS": "1000,root"}, None,
     ["admin_uids: expected an integer >= 0, got 'root' (from PROCBUS_ADMIN_UIDS)"]),
    ("bad user", {"user": "a b"}, {}, None, ["user: expected a name or a numeric id", "'a b'"]),
    ("size with an unknown unit", {"max_rss": "512X"}, {}, None,
     ["max_rss: expected a size in bytes, or with a unit K, M, G or T (512M, 2G, 1.5G), "
      "got '512X' (from --max-rss)"]),
    ("negative size", {}, {"PROCBUS_MAX_RSS": "-1"}, None,
     ["max_rss: expected a size in bytes", "got '-1' (from PROCBUS_MAX_RSS)"]),
    ("a fraction of a byte", {"max_rss": "1.5"}, {}, None, ["max_rss: expected", "got '1.5'"]),
    ("size not a number", {"max_rss": "lots"}, {}, None, ["max_rss: expected", "got 'lots'"]),
    ("size as a TOML float", {}, {}, "[procbus]\nmax_rss = 1.5e9\n",
     ["max_rss: expected a size in bytes", "got 1500000000.0"]),
    ("negative size in file", {}, {}, "[procbus]\nmax_rss = -5\n",
     ["max_rss: expected a size in bytes", "got -5"]),
    ("zero rss samples", {"rss_samples": "0"}, {}, None,
     ["rss_samples: expected an integer >= 1, got '0'"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("cli", "environ", "file_text", "fragments"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS],
)
def test_bad_input_is_a_one_line_config_error_naming_key_and_value(
    tmp_path: Path,
    cli: dict[str, Any],
    environ: dict[str, str],
    file_text: str | None,
    fragments: list[str],
) -> None:
    """Load one bad value (from the command line, the environment or a file).

    A ConfigError is raised whose single-line message names the setting or key,
    the bad value and what was expected; for a file problem, also the file.
    """
    if file_text is not None:
        cli = {**cli, "config": str(write_config(tmp_path, file_text))}
    with pytest.raises(ConfigError) as raised:
        load(cli, environ=environ)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    if file_text is not None:
        assert str(tmp_path / "procbus.toml") in message


@pytest.mark.parametrize(
    ("make_path", "problem"),
    [
        (lambda tmp: tmp / "missing.toml", "No such file or directory"),
        (lambda tmp: tmp, "Is a directory"),
    ],
    ids=["missing", "unreadable"],
)
def test_unreadable_config_file_is_a_config_error_naming_it(
    tmp_path: Path, make_path: Any, problem: str
) -> None:
    """Point PROCBUS_CONFIG at a missing file, then at a directory.

    Each is a one-line ConfigError naming the path and the operating system's reason.
    """
    path = make_path(tmp_path)
    with pytest.raises(ConfigError) as raised:
        load({}, environ={"PROCBUS_CONFIG": str(path)})
    assert str(raised.value) == f"{path}: cannot read config file: {problem}"


def test_a_bad_value_is_refused_even_when_a_better_source_overrides_it() -> None:
    """Give a bad PROCBUS_WORKERS and a good --workers.

    Still a ConfigError: a broken source is reported, not silently shadowed.
    """
    with pytest.raises(ConfigError, match="PROCBUS_WORKERS"):
        load({"workers": "2"}, environ={"PROCBUS_WORKERS": "x"})


# -- text parsing -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[("1", True), ("true", True), ("Yes", True), ("TRUE", True)],
        *[("0", False), ("false", False), ("no", False), (" No ", False)],
    ],
)
def test_booleans_from_environment_accept_the_usual_words(text: str, expected: bool) -> None:
    """Set PROCBUS_PRELOAD to each of 1/0, true/false, yes/no in any case.

    preload is the matching boolean.
    """
    assert load({}, environ={"PROCBUS_PRELOAD": text}).preload is expected


def test_lists_from_environment_are_comma_separated() -> None:
    """Set PROCBUS_BIND and PROCBUS_ADMIN_UIDS to comma-separated lists with spaces.

    Each becomes a tuple of its items, stripped and typed.
    """
    loaded = load(
        {},
        environ={
            "PROCBUS_BIND": "127.0.0.1:8001, [::1]:8002,unix:/tmp/s.sock",
            "PROCBUS_ADMIN_UIDS": "1000, 1001",
        },
    )
    assert loaded.bind == ("127.0.0.1:8001", "[::1]:8002", "unix:/tmp/s.sock")
    assert loaded.admin_uids == (1000, 1001)


def test_unknown_cli_only_and_empty_procbus_variables_are_ignored() -> None:
    """Set a PROCBUS_ variable that is no setting, PROCBUS_CHECK and an empty one.

    None of them has an effect or raises.
    """
    environ = {"PROCBUS_VENV": "/tmp/venv", "PROCBUS_CHECK": "1", "PROCBUS_WORKERS": " "}
    assert load({}, environ=environ) == load({}, environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 2**20),
        ("512K", 512 * 2**10),
        ("512M", 512 * 2**20),
        ("512m", 512 * 2**20),
        ("512MiB", 512 * 2**20),
        ("512MB", 512 * 2**20),
        ("2G", 2 * 2**30),
        ("1.5G", 3 * 2**29),
        (" 1 T ", 2**40),
        ("100B", 100),
    ],
)
def test_sizes_are_bytes_or_a_number_with_a_unit_in_powers_of_1024(
    text: str, expected: int
) -> None:
    """Steps: load max_rss from the command line as `text`.
    Expected: that many bytes (K, M, G, T are powers of 1024; case and a trailing B or
    iB do not matter), from the command line."""
    loaded = load({"max_rss": text}, environ={})
    assert loaded.max_rss == expected
    assert loaded.sources["max_rss"] == "cli"


def test_a_size_in_the_config_file_is_an_integer_or_text(tmp_path: Path) -> None:
    """Steps: a file with max_rss = 268435456 (an integer), then max_rss = "256M" and
    rss_samples = 5.
    Expected: both are 256 MiB; rss_samples 5; the defaults are 0 (off) and 3."""
    assert (load({}, environ={}).max_rss, load({}, environ={}).rss_samples) == (0, 3)
    number = write_config(tmp_path, "[procbus]\nmax_rss = 268435456\n")
    assert load({"config": str(number)}, environ={}).max_rss == 256 * 2**20
    text = write_config(tmp_path, '[procbus]\nmax_rss = "256M"\nrss_samples = 5\n')
    loaded = load({"config": str(text)}, environ={})
    assert (loaded.max_rss, loaded.rss_samples) == (256 * 2**20, 5)


@pytest.mark.parametrize("text", ["0o22", "0O22", "022", "18"])
def test_umask_accepts_octal_and_decimal_text(text: str) -> None:
    """Give --umask as 0o22, 022 and the decimal 18.

    All mean the mode 0o022.
    """
    assert load({"umask": text}, environ={}).umask == 0o022


def test_user_and_group_numbers_become_ids_and_names_stay_names() -> None:
    """Give a numeric user and a named group as text.

    The number is an int (a uid), the name a str.
    """
    loaded = load({"user": "1000", "group": "www-data"}, environ={})
    assert (loaded.user, loaded.group) == (1000, "www-data")


def test_command_line_mapping_ignores_none_and_foreign_entries() -> None:
    """Pass a mapping with a None value and keys that are no settings.

    They are ignored: the result equals the defaults.
    """
    loaded = load({"command": "run", "pidfile": None, "json": True}, environ={})
    assert loaded == load({}, environ={})


# -- the Config value -------------------------------------------------------


def test_schema_and_config_fields_list_the_same_settings_in_order() -> None:
    """Compare Config's fields with SETTINGS.

    One attribute per setting, in schema order, plus sources.
    """
    names = [item.name for item in dataclasses.fields(Config)]
    assert names == [setting.name for setting in SETTINGS] + ["sources"]


def test_every_default_passes_its_own_validation() -> None:
    """Run each non-None default through its setting's parser, as if from a file.

    Each comes back unchanged.
    """
    for setting in SETTINGS:
        default = setting.default_value()
        if default is not None:
            assert setting.parse(default, False) == default, setting.name


def test_config_is_frozen() -> None:
    """Assign to an attribute of a loaded Config.

    FrozenInstanceError: a reload builds a new Config instead.
    """
    loaded = load({}, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.workers = 3  # type: ignore[misc]


def test_changed_lists_only_the_settings_that_differ() -> None:
    """Load twice with two settings different and one given with the same value.

    changed() maps exactly the two differing settings to (old, new).
    """
    old = load({"workers": "2", "name": "site"}, environ={})
    new = load({"workers": "4", "name": "site"}, environ={"PROCBUS_LOG_LEVEL": "debug"})
    assert old.changed(new) == {"workers": (2, 4), "log_level": (LogLevel.INFO, LogLevel.DEBUG)}
    assert new.changed(old) == {"workers": (4, 2), "log_level": (LogLevel.DEBUG, LogLevel.INFO)}
    assert old.changed(old) == {}


def test_configs_compare_by_value_not_by_source() -> None:
    """Load the same value once from the environment, once from the command line.

    The configs are equal and unchanged, though their sources differ.
    """
    from_env = load({}, environ={"PROCBUS_THREADS": "8"})
    from_cli = load({"threads": "8"}, environ={})
    assert from_env == from_cli
    assert from_env.changed(from_cli) == {}
    assert (from_env.sources["threads"], from_cli.sources["threads"]) == ("env", "cli")


def test_sources_are_read_only() -> None:
    """Try to change a loaded config's sources.

    TypeError: the mapping is read-only.
    """
    loaded = load({}, environ={})
    with pytest.raises(TypeError):
        loaded.sources["workers"] = Source.CLI  # type: ignore[index]


def test_to_dict_is_json_with_plain_types(tmp_path: Path) -> None:
    """Load paths, lists, a log level and a umask, then dump to_dict() as JSON.

    json.dumps accepts it; paths are strings, tuples are lists, the level its name.
    """
    loaded = load(
        {"pidfile": str(tmp_path / "p.pid"), "bind": ["a:1", "b:2"], "umask": "022"},
        environ={"PROCBUS_LOG_LEVEL": "error"},
    )
    data = json.loads(json.dumps(loaded.to_dict()))
    assert list(data) == [setting.name for setting in SETTINGS]
    assert data["pidfile"] == str(tmp_path / "p.pid")
    assert data["bind"] == ["a:1", "b:2"]
    assert data["log_level"] == "error"
    assert data["umask"] == 0o022
    assert data["ctl"] is None


def test_describe_prints_aligned_name_value_source_lines() -> None:
    """Describe a config with values from the command line and the environment.

    One line per setting, in schema order, as "name = value  (source)" with
    the "=" and the source column aligned; umask shows in octal.
    """
    loaded = load({"workers": "3", "umask": "18"}, environ={"PROCBUS_NAME": "site"})
    lines = config.describe(loaded).splitlines()
    assert [line.split()[0] for line in lines] == [setting.name for setting in SETTINGS]
    assert len({line.index(" = ") for line in lines}) == 1
    assert len({line.rindex("  (") for line in lines}) == 1
    by_name = {line.split()[0]: line for line in lines}
    assert re.fullmatch(r"workers +=\s3 +\(cli\)", by_name["workers"])
    assert re.fullmatch(r"name +=\s\"site\" +\(env\)", by_name["name"])
    assert re.fullmatch(r"umask +=\s0o022 +\(cli\)", by_name["umask"])
    assert re.fullmatch(r"pidfile +=\sunset +\(default\)", by_name["pidfile"])


# -- what the schema generates ----------------------------------------------


def test_markdown_table_has_a_row_naming_every_setting_and_its_sources() -> None:
    """Render the README table.

    A header, a rule and one row per setting; each row names the setting, its
    flags and its environment variable.
    """
    lines = config.markdown_table().splitlines()
    assert lines[0] == "| Setting | CLI | Env | Default | Meaning |"
    assert len(lines) == len(SETTINGS) + 2
    for setting, row in zip(SETTINGS, lines[2:], strict=True):
        assert row.startswith(f"| `{setting.name}` |")
        for flag in setting.cli_flags:
            assert f"`{flag}`" in row
        if setting.env_var:
            assert f"`{setting.env_var}`" in row
        assert row.count(" | ") == 4


def test_config_table_script_prints_the_markdown_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Run scripts/config_table.py as __main__.

    It prints exactly markdown_table() and exits 0.
    """
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exited.value.code == 0
    assert capsys.readouterr().out == config.markdown_table()


def test_parser_leaves_absent_options_out_of_the_namespace() -> None:
    """Parse an empty command line with a parser built by add_arguments.

    The namespace is empty, and loading it gives the defaults.
    """
    namespace = run_parser().parse_args([])
    assert vars(namespace) == {}
    assert load(namespace, environ={}) == load({}, environ={})


def test_parsed_command_line_loads_with_cli_sources(tmp_path: Path) -> None:
    """Parse APP, short and long flags, a repeated -b and switches, with a config file.

    Each given value loads typed with source "cli"; the file fills the rest.
    """
    path = write_config(tmp_path, "[procbus]\nmax_requests = 100\nthreads = 2\n")
    argv = [
        "site.wsgi:app",
        "-w", "2",
        "-b", "127.0.0.1:9000",
        "--bind", "unix:/tmp/site.sock",
        "--graceful-timeout", "5",
        "--threads", "16",
        "--admin-uids", "1000",
        "--admin-uids", "1001",
        "--preload",
        "--check",
        "--config", str(path),
    ]  # fmt: skip
    loaded = load(run_parser().parse_args(argv), environ={"PROCBUS_THREADS": "8"})
    assert loaded.app == "site.wsgi:app"
    assert loaded.workers == 2
    assert loaded.bind == ("127.0.0.1:9000", "unix:/tmp/site.sock")
    assert loaded.graceful_timeout == 5.0
    assert loaded.threads == 16
    assert loaded.admin_uids == (1000, 1001)
    assert loaded.preload is True
    assert loaded.check is True
    assert loaded.max_requests == 100
    given = {"app", "workers", "bind", "graceful_timeout", "threads", "admin_uids", "preload"}
    assert {name for name, source in loaded.sources.items() if source == "cli"} == given | {
        "check",
        "config",
    }
    assert loaded.sources["max_requests"] == "file"


def test_help_shows_every_flag_with_its_default_and_variable() -> None:
    """Format --help of a parser built by add_arguments.

    Every long flag and every environment variable appears, and the workers
    default is described rather than computed.
    """
    text = " ".join(run_parser().format_help().split())
    for setting in SETTINGS:
        for flag in setting.cli_flags:
            assert flag in text
        if setting.env_var:
            assert setting.env_var in text
    assert "default: number of CPUs" in text


def test_the_readme_shows_the_current_settings_table() -> None:
    """The README's table is `markdown_table()` (regenerate with scripts/config_table.py)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert config.markdown_table().strip() in readme
