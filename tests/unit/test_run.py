"""`procbus run`'s building blocks, without starting a tree."""

from __future__ import annotations

import socket

import pytest

from procbus import config as config_module
from procbus import run
from procbus.master.sockets import FDS_VARIABLE


def load(**cli: object) -> config_module.Config:
    return config_module.load(cli, environ={})


def test_sockets_passed_across_exec_win_over_binding() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        environ = {FDS_VARIABLE: str(listener.fileno())}
        (inherited,) = run.listening_sockets(load(bind=["127.0.0.1:1"]), environ)
        assert inherited.getsockname() == listener.getsockname()
        assert FDS_VARIABLE not in environ  # taken once: workers do not see it
        inherited.detach()  # the same fd as `listener`
    finally:
        listener.close()


def test_generic_worker_binds_only_when_asked() -> None:
    assert run.listening_sockets(load(worker="tests.tree.apps:echo"), {}) == []
    (bound,) = run.listening_sockets(load(worker="tests.tree.apps:echo", bind=["127.0.0.1:0"]), {})
    try:
        assert bound.getsockname()[0] == "127.0.0.1"
    finally:
        bound.close()


def test_preload_imports_in_the_master_and_without_it_the_worker_does() -> None:
    assert run.worker_app(load(worker="tests.tree.apps:echo")) == "tests.tree.apps:echo"
    assert callable(run.worker_app(load(worker="tests.tree.apps:echo", preload=True)))
    with pytest.raises(Exception, match="broken_app"):
        run.worker_app(load(app="tests.tree.broken_app:app", preload=True))


def test_tree_settings_carry_the_recycling_limits() -> None:
    """Steps: build the tree settings of a config with max_requests 50, max_age 60,
    max_rss 512M and rss_samples 4.
    Expected: the pool's policy has each of them (max_rss in bytes)."""
    settings = run.tree_settings(
        load(max_requests="50", max_age="60", max_rss="512M", rss_samples="4")
    )
    policy = settings.supervision
    assert (policy.max_requests, policy.max_age) == (50, 60.0)
    assert (policy.max_rss, policy.rss_samples) == (512 * 2**20, 4)


def test_tree_settings_carry_the_reload_batch() -> None:
    """Steps: build the tree settings of the default config, then of one with
    reload_batch 2.
    Expected: 0 (the surge), then 2."""
    assert run.tree_settings(load()).reload_batch == 0
    assert run.tree_settings(load(reload_batch="2")).reload_batch == 2
