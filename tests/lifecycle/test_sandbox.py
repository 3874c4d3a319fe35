"""The sandbox object: its state table and the keep/destroy policy (decided once, from the final state)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from hearth.fabric.slot import slot_for
from hearth.lifecycle.sandbox import (
    TRANSITIONS,
    Final,
    IllegalSandboxTransition,
    Kind,
    Sandbox,
    SandboxState,
    keep,
)
from hearth.sandbox.base import SandboxSpec


def test_only_failed_sandboxes_are_kept_and_only_when_asked() -> None:
    assert keep(Final.FAILED, keep_failed=True)
    assert not keep(Final.FAILED, keep_failed=False)
    assert not keep(Final.DONE, keep_failed=True)  # cancelled, expired, completed: never kept
    assert not keep(Final.DONE, keep_failed=False)


def test_every_state_has_a_row_and_gone_is_final() -> None:
    assert set(TRANSITIONS) == set(SandboxState)
    assert TRANSITIONS[SandboxState.GONE] == frozenset()


def test_illegal_moves_raise_and_the_secret_is_never_shown(tmp_path: Path) -> None:
    net = IPv4Network("192.168.100.0/24")
    slot = slot_for("hearth-t0", net, IPv4Address("192.168.100.1"), IPv4Address("192.168.100.2"), 0)
    spec = SandboxSpec("s1", slot, tmp_path, "top-secret-value")
    sb = Sandbox("s1", Kind.SESSION, spec)
    sb.move(SandboxState.RUNNING)
    with pytest.raises(IllegalSandboxTransition):
        sb.move(SandboxState.BOOTING)
    sb.move(SandboxState.GONE)
    assert "top-secret-value" not in repr(sb) and "top-secret-value" not in repr(spec)
