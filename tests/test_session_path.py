"""Follow one session id from `POST /api/auth/start` to its first frame, as a profiler sees it (issue 22, "done when"):
the call path enters each hop's folder once — api → session → lifecycle → sandbox → fabric (a warm-pool hand-over
boots nothing: there the path goes on to the refill its first frame starts) — and never climbs back up
(a lower layer calling into a higher one: a callback or hook set from above, the "service → pool → lifecycle →
service" of before).

The profiler (sys.setprofile on the loop's thread, where the controller, its boots and the viewer's relay run) records,
for each call into a hop folder, the nearest hop folder on the caller's side. Frames outside hearth, in the shared low
layers (errors, log, config, store, vault, webhooks: L0–L3, which every hop uses) and in the composition root (its
lambdas only wire) are looked through, not counted as rooms: `store.call(lambda: …)` running a session's lambda is the
session's own code.

Layers import only downwards (tests/test_layers.py), so a lower layer can reach a higher one only through something
handed down to it. A closure or lambda handed down for one call (the readiness retry's `attempt`, a boot's stage
`mark`) is the caller's own code run on its behalf, and is allowed; a method or module function of a higher layer
called from below — a back-reference to the service, the pool or the manager — is a climb, and fails the test.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType, FunctionType
from typing import Any

import httpx
import pytest

from hearth.config import Settings
from hearth.rfb.ws import first_frame
from tests.conftest import running_controller
from tests.live import start_ready
from tests.test_layers import LAYERS, layer_of, unit_of
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
HEARTH = str(ROOT / "hearth") + "/"
FIRST_HOP_LAYER = 4  # L0–L3 (errors, log, config, store, rfb, vault, webhooks) are shared by every hop
PATH = ("hearth.api", "hearth.session", "hearth.lifecycle", "hearth.sandbox", "hearth.fabric")


def hop_of(filename: str) -> tuple[str, int] | None:
    """(folder, layer) of a hearth source file in a hop layer, else None (outside hearth, or a shared low layer)."""
    if not filename.startswith(HEARTH):
        return None
    module = "hearth." + filename[len(HEARTH) :].removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    layer = layer_of(module)
    if layer is None or layer < FIRST_HOP_LAYER or module == "hearth.controller":
        return None
    return unit_of(module), layer


class PathRecorder:
    """Edges between hop folders, in the order first seen: (caller folder, callee folder)."""

    def __init__(self) -> None:
        self.edges: list[tuple[str, str]] = []
        self.seen: set[tuple[str, str]] = set()
        self.upward: dict[tuple[str, str], str] = {}  # edge → "caller.py:function → callee.py:function"
        self.handed_down: dict[tuple[str, str], str] = {}  # upward, but into a closure/lambda of the higher layer
        self._files: dict[str, tuple[str, int] | None] = {}

    def _hop(self, frame: FrameType) -> tuple[str, int] | None:
        name = frame.f_code.co_filename
        if name not in self._files:
            self._files[name] = hop_of(name)
        return self._files[name]

    def __call__(self, frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call":
            return
        callee = self._hop(frame)
        if callee is None:
            return
        back = frame.f_back
        while back is not None and self._hop(back) is None:
            back = back.f_back
        if back is None:
            return  # a task the loop resumed or a thread's start: no caller on this stack
        caller = self._hop(back)
        assert caller is not None
        if caller[0] == callee[0]:
            return
        edge = (caller[0], callee[0])
        if edge not in self.seen:
            self.seen.add(edge)
            self.edges.append(edge)
        if callee[1] > caller[1]:
            code = frame.f_code
            closure = "<locals>" in code.co_qualname or code.co_name == "<lambda>"
            found = self.handed_down if closure else self.upward
            found.setdefault(
                edge,
                (
                    f"{back.f_code.co_filename.removeprefix(HEARTH)}:{back.f_code.co_name} → "
                    f"{frame.f_code.co_filename.removeprefix(HEARTH)}:{code.co_qualname}"
                ),
            )


def climbed() -> None:
    """A function of a higher layer (module level: not a closure) that a lower one calls in the recorder's test."""


def call_back(cb: Callable[[], None]) -> None:
    cb()


def top(low: Callable[[Callable[[], None]], None], cb: Callable[[], None], method: Callable[[], None]) -> None:
    low(cb)
    low(method)


def test_the_recorder_sees_a_climb_back_up() -> None:
    """The check can fail: a lower layer calling a module function or method of a higher one is a climb; a closure
    handed down is not."""
    rec = PathRecorder()

    def moved(fn: Callable[..., Any], where: str) -> Any:
        return FunctionType(fn.__code__.replace(co_filename=HEARTH + where), globals())

    high_top, low = moved(top, "session/y.py"), moved(call_back, "fabric/x.py")
    method, closure = moved(climbed, "session/y.py"), moved(lambda: None, "session/y.py")  # closure: handed down
    sys.setprofile(rec)
    try:
        high_top(low, closure, method)
    finally:
        sys.setprofile(None)
    assert rec.edges == [("hearth.session", "hearth.fabric"), ("hearth.fabric", "hearth.session")]
    assert rec.handed_down == {
        (
            "hearth.fabric",
            "hearth.session",
        ): "fabric/x.py:call_back → session/y.py:test_the_recorder_sees_a_climb_back_up.<locals>.<lambda>"
    }
    assert rec.upward == {("hearth.fabric", "hearth.session"): "fabric/x.py:call_back → session/y.py:climbed"}
    assert [unit for row in reversed(LAYERS) for unit in row if unit in PATH] == list(PATH)  # the path goes down


@pytest.mark.parametrize("pool", [0, 1], ids=["cold", "from-the-pool"])
async def test_a_session_enters_each_folder_once_and_never_climbs_back(
    make_settings: Callable[..., Settings], pool: int
) -> None:
    settings = make_settings(
        HEARTH_CHROMIUM="false", HEARTH_SCREEN="640x400x24", HEARTH_POOL_SIZE=f"remote_browser:{pool}"
    )
    rec = PathRecorder()
    async with running_controller(settings) as ctl:
        async with httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http:
            if pool:
                warm = ctl.ctl.service.pool

                async def filled() -> bool:
                    return len(warm.ready("remote_browser")) >= pool

                await eventually(filled, 120, "a warm sandbox")
            sys.setprofile(rec)
            try:
                live = await start_ready(http, settings, "path-user")
                frame = await first_frame(live.ws_url(ctl), timeout=30)
                if pool:  # a hand-over boots nothing itself: its first frame starts the refill that replaces it

                    async def refilled() -> bool:
                        return len(warm.ready("remote_browser")) >= pool and not warm.filling("remote_browser")

                    await eventually(refilled, 120, "the warm pool refilled after the hand-over")
            finally:
                sys.setprofile(None)
            assert frame.rects, "no first frame"
            assert (await http.delete(f"/api/auth/session/{live.session_id}")).status_code in (200, 202, 204)
    chain = list(itertools.pairwise(PATH))
    assert [edge for edge in chain if edge not in rec.seen] == [], f"the path's calls were {rec.edges}"
    assert rec.upward == {}, "calls from a lower layer into a higher one:\n" + "\n".join(
        f"  {a} → {b}: {where}" for (a, b), where in rec.upward.items()
    )
