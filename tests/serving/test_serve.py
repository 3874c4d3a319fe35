"""The listen address is checked before anything is built: a port in use is a clear error naming the fix, and no
fabric namespace is left behind (uvicorn alone would find out after the fabric is up and exit with a bare errno)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from hearth.config import Settings
from hearth.errors import HearthError, Hop
from hearth.fabric import netlink
from hearth.serving.local import local_controller
from hearth.serving.serve import check_listen


def _occupy(settings: Settings) -> socket.socket:
    host, port = settings.listen_host_port
    sock = socket.socket()
    sock.bind((host, port))
    sock.listen()
    return sock


def test_a_free_listen_address_passes(make_settings: Callable[..., Settings]) -> None:
    check_listen(make_settings())


def test_a_port_in_use_names_the_setting_and_the_fix(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    with _occupy(settings), pytest.raises(HearthError) as caught:
        check_listen(settings)
    assert caught.value.hop is Hop.CONFIG
    assert f"HEARTH_API_LISTEN {settings.api_listen} is in use" in caught.value.reason
    assert "set HEARTH_API_LISTEN" in caught.value.reason


def test_an_address_not_of_this_host_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(HearthError, match="cannot be bound"):
        check_listen(make_settings(HEARTH_API_LISTEN="203.0.113.7:4000"))  # TEST-NET-3: never a local address


@pytest.mark.netns
async def test_local_controller_on_a_busy_port_leaves_no_fabric(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    with _occupy(settings):
        with pytest.raises(HearthError, match="in use"):
            async with local_controller(settings):
                pytest.fail("the controller started on a port in use")
    assert not netlink.netns_exists(settings.fabric_netns)
