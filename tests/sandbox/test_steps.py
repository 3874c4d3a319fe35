"""The one step runner of every driver's start (hearth/sandbox/steps.py): order, unwinding, stages, errors."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from hearth.errors import DriverError, HearthError, Hop
from hearth.sandbox import steps
from hearth.sandbox.steps import Check, Step


class Host:
    """A pretend host: what the steps hold, and the log of everything done and undone."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.log: list[str] = []

    def acquire(self, name: str) -> Callable[[], Awaitable[None]]:
        async def do() -> None:
            self.log.append(f"do {name}")
            self.held.add(name)

        return do

    def release(self, name: str) -> Callable[[], Awaitable[None]]:
        async def undo() -> None:
            self.log.append(f"undo {name}")
            if name not in self.held:
                raise FileNotFoundError(name)  # already gone
            self.held.remove(name)

        return undo

    def step(self, name: str, *, stage: bool = False, partial: bool = False) -> Step:
        return Step(name, self.acquire(name), self.release(name), stage=stage, partial=partial)


def failing(exc: BaseException, before: Callable[[], None] = lambda: None) -> Callable[[], Awaitable[None]]:
    async def do() -> None:
        before()
        raise exc

    return do


async def test_steps_run_in_order_and_stages_are_marked() -> None:
    host = Host()
    marks: list[str] = []
    timings = await steps.run(
        [host.step("a"), host.step("namespace", stage=True), host.step("c"), host.step("process", stage=True)],
        marks.append,
        what="test sandbox",
    )
    assert host.log == ["do a", "do namespace", "do c", "do process"]
    assert marks == ["namespace", "process"]  # only stages reach mark(): the session's timing names stay
    assert list(timings) == ["a", "namespace", "c", "process"] and all(t >= 0 for t in timings.values())
    assert host.held == {"a", "namespace", "c", "process"}  # success: the undos are dropped, destroy owns it all


async def test_a_failure_unwinds_in_reverse_order_and_names_the_step() -> None:
    host = Host()
    marks: list[str] = []
    with pytest.raises(DriverError) as err:
        await steps.run(
            [host.step("a"), host.step("b", stage=True), Step("c", failing(OSError("disk full"))), host.step("d")],
            marks.append,
            what="test sandbox s1",
            hint="see the log",
        )
    assert host.log == ["do a", "do b", "undo b", "undo a"]
    assert host.held == set()
    assert marks == ["b"]
    assert err.value.hop is Hop.DRIVER
    assert err.value.message == "test sandbox s1 failed to start at step 'c': OSError: disk full"
    assert err.value.hint == "see the log"
    assert isinstance(err.value.__cause__, OSError)


async def test_an_undo_that_finds_its_resource_gone_is_success() -> None:
    host = Host()

    async def vanish() -> None:  # something removed "a" behind the driver's back (an outside cleanup)
        host.held.discard("a")
        raise RuntimeError("boom")

    with pytest.raises(DriverError) as err:
        await steps.run([host.step("a"), host.step("b"), Step("c", vanish)], what="test sandbox")
    assert host.log == ["do a", "do b", "undo b", "undo a"]  # undo a raised FileNotFoundError: success
    assert "undo" not in err.value.message  # nothing failed while unwinding
    assert err.value.message.endswith("at step 'c': RuntimeError: boom")


async def test_a_failing_undo_is_reported_and_the_unwinding_goes_on() -> None:
    host = Host()

    async def stuck() -> None:
        raise PermissionError("busy")

    with pytest.raises(DriverError) as err:
        await steps.run(
            [host.step("a"), Step("b", host.acquire("b"), stuck), Step("c", failing(ValueError("bad")))],
            what="test sandbox",
        )
    assert host.held == {"b"}  # b could not be undone; a still was
    assert host.log == ["do a", "do b", "undo a"]
    assert "undo of 'b' failed: PermissionError: busy" in err.value.message


async def test_a_partial_step_undoes_itself_and_a_plain_one_does_not() -> None:
    host = Host()
    with pytest.raises(DriverError):
        await steps.run(
            [host.step("a"), Step("b", failing(OSError("half"), lambda: host.held.add("b")), host.release("b"),
                                  partial=True)],
            what="test sandbox",
        )  # fmt: skip
    assert host.log == ["do a", "undo b", "undo a"] and host.held == set()

    host = Host()
    host.held.add("theirs")  # a namespace that appeared concurrently: not ours to remove
    with pytest.raises(DriverError):
        await steps.run(
            [host.step("a"), Step("theirs", failing(OSError("exists")), host.release("theirs"))],
            what="test sandbox",
        )
    assert host.log == ["do a", "undo a"] and host.held == {"theirs"}


async def test_a_hearth_error_keeps_its_words_and_gets_the_step_as_a_note() -> None:
    host = Host()
    refused = HearthError(Hop.FABRIC, "no bridge", "run hearth fabric up")
    with pytest.raises(HearthError) as err:
        await steps.run([host.step("a"), Step("tap", failing(refused))], what="test sandbox")
    assert err.value is refused
    assert err.value.reason == "[fabric] no bridge — fix: run hearth fabric up"
    assert "step: tap" in getattr(err.value, "__notes__", [])
    assert host.held == set()


async def test_a_cancelled_start_unwinds_and_stays_cancelled() -> None:
    host = Host()
    entered = asyncio.Event()

    async def hang() -> None:
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(steps.run([host.step("a"), host.step("b"), Step("c", hang)], what="test sandbox"))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert host.log == ["do a", "do b", "undo b", "undo a"] and host.held == set()


async def test_checks_run_first_and_a_failing_check_acquires_nothing() -> None:
    host = Host()
    seen: list[str] = []

    def missing() -> None:
        seen.append("binary")
        raise DriverError(Hop.DRIVER, "qemu-img not found", "install qemu-utils")

    with pytest.raises(DriverError) as err:
        await steps.run(
            [host.step("a")],
            what="test sandbox",
            checks=[Check("image", lambda: seen.append("image")), Check("binary", missing), Check("never", seen.clear)],
        )
    assert seen == ["image", "binary"] and host.log == []
    assert err.value.message == "qemu-img not found"
    assert "preflight check: binary" in getattr(err.value, "__notes__", [])

    def broken() -> None:
        raise KeyError("kernel")

    with pytest.raises(DriverError) as err:
        steps.preflight([Check("kernel", broken)], what="qemu", hint="build the image")
    assert err.value.message == "qemu: check 'kernel' failed: KeyError: 'kernel'"
    assert err.value.hint == "build the image"
