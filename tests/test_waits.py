"""tests/waits.py: the answer is returned, transient failures are retried, the timeout names what and the last
observation, and a probe's own bug is not swallowed."""

from __future__ import annotations

import pytest

from tests.waits import eventually


async def test_returns_the_first_answer_after_transient_failures() -> None:
    seen: list[int] = []

    async def probe() -> int | None:
        seen.append(len(seen))
        if len(seen) == 1:
            raise ConnectionRefusedError("not listening yet")
        if len(seen) == 2:
            return None
        return 42

    assert await eventually(probe, 30, "the answer", interval=0.001) == 42
    assert len(seen) == 3


async def test_false_is_not_an_answer_and_the_timeout_names_what_and_the_last_observation() -> None:
    async def probe() -> bool:
        return False

    with pytest.raises(AssertionError, match=r"chromium running not reached within 0.05s \(last: False\)"):
        await eventually(probe, 0.05, "chromium running", interval=0.001)


async def test_a_bug_in_the_probe_propagates() -> None:
    async def probe() -> int:
        raise KeyError("typo")

    with pytest.raises(KeyError):
        await eventually(probe, 30, "anything")
