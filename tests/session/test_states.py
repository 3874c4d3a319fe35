from __future__ import annotations

import itertools

import pytest

from hearth.session.states import TERMINAL, TRANSITIONS, IllegalTransition, Status, check_transition


def test_happy_path_is_legal() -> None:
    path = [
        Status.STARTING,
        Status.READY,
        Status.AWAITING_USER,
        Status.CREDENTIALS_CAPTURED,
        Status.DELIVERED,
        Status.COMPLETED,
    ]
    for a, b in itertools.pairwise(path):
        check_transition(a, b)


@pytest.mark.parametrize("end", sorted(TERMINAL))
def test_terminal_states_are_final(end: Status) -> None:
    assert TRANSITIONS[end] == frozenset()
    for target in Status:
        with pytest.raises(IllegalTransition):
            check_transition(end, target)


def test_success_cannot_be_overwritten_by_cancel() -> None:
    """The seed overwrote a successful session with `cancelled`."""
    with pytest.raises(IllegalTransition, match="completed → cancelled"):
        check_transition(Status.COMPLETED, Status.CANCELLED)


def test_cannot_skip_readiness() -> None:
    with pytest.raises(IllegalTransition):
        check_transition(Status.STARTING, Status.AWAITING_USER)


def test_a_queued_boot_starts_or_ends_but_is_never_ready_unbooted() -> None:
    check_transition(Status.QUEUED, Status.STARTING)
    check_transition(Status.QUEUED, Status.CANCELLED)
    with pytest.raises(IllegalTransition):
        check_transition(Status.QUEUED, Status.READY)
    with pytest.raises(IllegalTransition):
        check_transition(Status.STARTING, Status.QUEUED)
    assert Status.QUEUED.booting and Status.STARTING.booting and not Status.READY.booting
