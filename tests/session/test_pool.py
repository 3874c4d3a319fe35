"""HEARTH_POOL_SIZE parsing and validation (`hearth config check` runs `load_settings`)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hearth.config import Settings, parse_pool_sizes
from hearth.errors import ConfigError
from hearth.lifecycle.sandbox import TRANSITIONS, SandboxState


def test_pool_sizes_per_mode() -> None:
    assert parse_pool_sizes("") == {}
    assert parse_pool_sizes("0") == {}
    assert parse_pool_sizes("remote_browser:2, direct:1") == {"remote_browser": 2, "direct": 1}
    assert parse_pool_sizes("remote_browser:0,direct:3") == {"direct": 3}
    assert parse_pool_sizes("direct:1,cli:2") == {"direct": 1, "cli": 2}  # cli: pooled CLI sandboxes (prompts)


@pytest.mark.parametrize("bad", ["2", "browser:2", "remote_browser:-1", "remote_browser:x", "direct:1,direct:2"])
def test_bad_pool_sizes_name_the_fix(bad: str) -> None:
    with pytest.raises(ValueError, match="HEARTH_POOL_SIZE"):
        parse_pool_sizes(bad)


def test_config_check_rejects_a_bad_pool_size(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="MODE:COUNT"):
        make_settings(HEARTH_POOL_SIZE="browser:2")
    assert make_settings().warm_pool == ""  # off by default
    assert make_settings(HEARTH_POOL_SIZE="direct:1", HEARTH_POOL_MAX_IDLE="30").pool_max_idle == 30


def test_pooled_is_a_state_of_the_one_sandbox_lifecycle() -> None:
    assert SandboxState.POOLED in TRANSITIONS[SandboxState.BOOTING]
    assert TRANSITIONS[SandboxState.POOLED] == frozenset({SandboxState.RUNNING, SandboxState.GONE})
    assert SandboxState.POOLED not in TRANSITIONS[SandboxState.RUNNING]  # handed out: never back into the pool
