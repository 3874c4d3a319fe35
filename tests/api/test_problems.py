"""The HTTP status of each kind of HearthError (hearth/api/problems.py `status_for`, used by the API's handler)."""

from __future__ import annotations

from hearth.api.problems import DESCRIPTIONS, status_for
from hearth.errors import ConfigError, DriverError, FabricError, HearthError, Hop, PoolExhausted, StoreError
from hearth.session.admission import Limit, LimitExceeded


def test_config_error_is_500_naming_config_not_a_hop_of_the_path() -> None:
    exc = ConfigError(["HEARTH_FIRECRACKER_VCPUS=0: set 1..32"])
    assert exc.hop is Hop.CONFIG
    assert status_for(exc) == 500
    assert "config" in DESCRIPTIONS[500]


def test_retryable_errors_are_503() -> None:
    assert status_for(StoreError("database is down")) == 503
    assert status_for(PoolExhausted(4)) == 503


def test_a_failed_hop_of_the_session_path_is_502() -> None:
    assert status_for(DriverError(Hop.DRIVER, "qemu exited")) == 502
    assert status_for(FabricError(Hop.BRIDGE, "no bridge")) == 502
    assert status_for(HearthError(Hop.AGENT, "agent down")) == 502


def test_a_refused_new_session_is_429_for_the_users_own_cap_else_503() -> None:
    assert status_for(LimitExceeded(Limit.USER, "user u already has 2 active sessions")) == 429
    assert status_for(LimitExceeded(Limit.FULL, "cluster full")) == 503
    assert status_for(LimitExceeded(Limit.CLOSED, "controller is shutting down")) == 503
