"""The remote desktop's size belongs to the control viewer that resized it. Unit level, against a real Xvnc on
loopback: DesktopSizes' claims, the restore to the default and when it is skipped. Against a live sandbox (Xvnc,
Openbox, Chromium): another control viewer's and a view-only viewer's SetDesktopSize are dropped while it is connected;
when it leaves the desktop returns to the default (HEARTH_SCREEN) and the next control viewer may resize; Chromium's
kiosk window fits the screen after every change, a phone's narrow one included (read with xdotool on the sandbox's
display).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from hearth.config import Settings
from hearth.gateway.desktop_size import DesktopSizes
from hearth.gateway.rfbspec import prohibited
from hearth.rfb.client import handshake
from hearth.rfb.desktop import REASON_CLIENT, read_layouts, screen_layout
from hearth.serving.local import free_port
from tests.conftest import running_controller
from tests.gateway.rfbmsgs import NOVNC_START, desktop_size, fb_request
from tests.gateway.test_rfb_preconditions import xvnc_pid
from tests.gateway.test_viewer_browser import CANVAS_SIZE, CHROMIUM, SCREEN_BOX, VIEWER_READY, chromium
from tests.gateway.test_viewer_signin import DESKTOP, PHONE, context
from tests.gateway.test_viewers import open_viewer
from tests.live import Live, start_ready
from tests.waits import eventually
from tests.xvnc import local_xvnc

W, H = 1024, 640


async def local_size(port: int) -> tuple[int, int]:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)

    async def write(data: bytes) -> None:
        writer.write(data)

    try:
        init = await asyncio.wait_for(handshake(reader.readexactly, write), 10)
    finally:
        writer.close()
    return init.width, init.height


async def test_one_owner_per_session_and_the_default_returns_when_it_leaves(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hearth.gateway")
    with local_xvnc(640, 480) as (port, xvnc):
        sizes = DesktopSizes((800, 600))
        laptop, phone, other = sizes.claim("s1"), sizes.claim("s1"), sizes.claim("s2")
        assert laptop.may_resize() and laptop.may_resize() and laptop.owns
        assert not phone.may_resize() and not phone.owns
        assert other.may_resize()  # another session's desktop has its own owner
        assert sizes.release(phone, lambda: asyncio.open_connection("127.0.0.1", port)) is None  # never owned it
        task = sizes.release(laptop, lambda: asyncio.open_connection("127.0.0.1", port))
        assert task is not None and sizes.restoring("s1") is task
        await asyncio.wait_for(task, 20)
        assert await local_size(port) == (800, 600)
        assert sizes.restoring("s1") is None and phone.may_resize()  # the size is free for the next viewer
        assert xvnc.poll() is None
    assert any(r.getMessage() == "desktop size restored to the default" for r in caplog.records)


async def test_the_restore_gives_way_to_a_viewer_that_took_the_size(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "hearth.gateway")
    with local_xvnc(640, 480) as (port, _):
        sizes = DesktopSizes((800, 600))
        laptop, phone = sizes.claim("s1"), sizes.claim("s1")
        assert laptop.may_resize()
        task = sizes.release(laptop, lambda: asyncio.open_connection("127.0.0.1", port))
        assert task is not None and phone.may_resize()  # the phone's resize came first
        await asyncio.wait_for(task, 20)
        assert await local_size(port) == (640, 480)  # the restore did not undo the phone's size
        assert sizes.release(phone, None) is None  # the sandbox is gone: nothing to restore
    assert any("skipped" in r.getMessage() for r in caplog.records)


async def test_a_resize_another_viewer_owns_is_answered_prohibited_by_xvnc() -> None:
    """What the gateway sends in place of a resize that may not go through (rfbspec.prohibited): Xvnc answers it
    "prohibited" (result 1) to its sender and changes nothing."""
    with local_xvnc(640, 480) as (port, xvnc):
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        try:
            await asyncio.wait_for(handshake(reader.readexactly, write), 10)
            await asyncio.wait_for(screen_layout(reader.readexactly, write), 10)
            await write(prohibited(resize_to(390, 844)) + fb_request(1, 1, 1))
            replies = await asyncio.wait_for(read_layouts(reader.readexactly), 10)
        finally:
            writer.close()
        assert [(r.reason, r.result) for r in replies] == [(REASON_CLIENT, 1)]
        assert await local_size(port) == (640, 480) and xvnc.poll() is None


async def test_the_restore_dials_in_turn_with_the_sandboxs_viewers() -> None:
    """The route's dial gate for the sandbox (a bounded number of dials in flight: Xvnc's accept queue is short) is
    held by the restore from its dial to the end of its handshake, and only then."""
    with local_xvnc(640, 480) as (port, _):
        sizes, gate = DesktopSizes((800, 600)), asyncio.Semaphore(1)
        laptop = sizes.claim("s1")
        assert laptop.may_resize()
        await gate.acquire()  # the gate is full: viewers are dialling
        task = sizes.release(laptop, lambda: asyncio.open_connection("127.0.0.1", port), gate)
        assert task is not None
        for _ in range(20):
            await asyncio.sleep(0)
        assert not task.done() and await local_size(port) == (640, 480)
        gate.release()
        await asyncio.wait_for(task, 20)
        assert not gate.locked() and await local_size(port) == (800, 600)


async def test_a_restore_that_cannot_reach_the_sandbox_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    sizes = DesktopSizes((800, 600))
    laptop = sizes.claim("s1")
    assert laptop.may_resize()
    task = sizes.release(laptop, lambda: asyncio.open_connection("127.0.0.1", free_port()))
    assert task is not None
    await asyncio.wait_for(task, 20)
    failed = [r for r in caplog.records if r.getMessage() == "desktop size not restored"]
    assert failed and "[vnc] ConnectionRefusedError" in str(getattr(failed[0], "error", ""))


def resize_to(w: int, h: int) -> bytes:
    return desktop_size(w, h, [(0, 0, 0, w, h, 0)])


async def size_seen(url: str) -> tuple[int, int]:
    """The size in a new viewer's ServerInit (Xvnc closes a raw-only viewer during a resize: then ask again)."""
    for _ in range(5):
        try:
            ws, _, init = await open_viewer(url)
        except ConnectionClosed:
            continue
        await ws.close()
        return init.width, init.height
    raise AssertionError("no viewer got a ServerInit")


async def sized(url: str, want: tuple[int, int]) -> bool:
    """The probe of a resize: new viewers see `want` (else the size they saw, as the last look)."""
    seen = await size_seen(url)
    assert seen == want, seen
    return True


def x_tool(live: Live, *argv: str) -> str:
    """Run an X client on the sandbox's display (its abstract socket lives in the sandbox's network namespace)."""
    pid = xvnc_pid(live)
    sockets = os.listdir(f"/proc/{pid}/root/tmp/.X11-unix")
    env = {"PATH": "/usr/bin:/bin", "DISPLAY": ":" + sockets[0].removeprefix("X")}
    argv_ = ["nsenter", f"--net=/run/netns/{live.netns}", "--", *argv]
    out = subprocess.run(argv_, env=env, capture_output=True, text=True, timeout=10, check=False)
    return out.stdout


def browser_geometry(live: Live) -> list[tuple[int, int, int, int]]:
    """x, y, width, height of Chromium's visible top-level windows."""
    found = []
    for wid in x_tool(live, "xdotool", "search", "--onlyvisible", "--class", "chromium").split():
        geo = dict(
            line.split("=", 1)
            for line in x_tool(live, "xdotool", "getwindowgeometry", "--shell", wid).splitlines()
            if "=" in line
        )
        if {"X", "Y", "WIDTH", "HEIGHT"} <= geo.keys():
            found.append((int(geo["X"]), int(geo["Y"]), int(geo["WIDTH"]), int(geo["HEIGHT"])))
    return found


async def fits(live: Live, w: int, h: int) -> list[tuple[int, int, int, int]] | None:
    """The probe of a kiosk resize: Chromium's windows' geometry once they all exactly fill a w×h screen."""
    seen = await asyncio.to_thread(browser_geometry, live)
    return seen if seen and all(g == (0, 0, w, h) for g in seen) else None


@pytest.mark.netns
@pytest.mark.slow
async def test_the_controlling_viewer_owns_the_size_and_the_default_returns(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(HEARTH_SCREEN=f"{W}x{H}x24", HEARTH_VIEWER_WAIT="90")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http,
    ):
        live = await start_ready(http, ctl.settings, "desktop-size")
        url = live.ws_url(ctl)
        r = await http.post(f"/api/auth/session/{live.session_id}/token", json={"scope": "view"})
        view_url = live.ws_url(ctl, r.json()["viewer_token"])
        assert await eventually(lambda: fits(live, W, H), 60, "Chromium's window filling the screen", interval=0.1) == [
            (0, 0, W, H)
        ], "Chromium's kiosk window does not fill the screen"

        # The laptop's viewer resizes the desktop: it owns the size.
        laptop, laptop_stream, _ = await open_viewer(url)
        await laptop_stream.write(NOVNC_START + resize_to(900, 560))
        await eventually(lambda: sized(url, (900, 560)), 30, "new viewers seeing (900, 560)", interval=0.1)
        assert await eventually(
            lambda: fits(live, 900, 560), 60, "Chromium's window filling the screen", interval=0.1
        ) == [(0, 0, 900, 560)], "the kiosk window did not follow"

        # A phone with a control link, and a view-only viewer, ask for their sizes: dropped.
        for target, (w, h) in ((url, (390, 844)), (view_url, (640, 480))):
            other, other_stream, _ = await open_viewer(target)
            await other_stream.write(NOVNC_START + resize_to(w, h))
            await other.close()
            await eventually(
                lambda: ctl.ctl.viewers.count(live.session_id) == 1, 15, "one viewer relayed"
            )  # its relay ended: everything it sent was judged
            assert await size_seen(url) == (900, 560), f"a viewer that does not own the size resized to {w}x{h}"

        # The laptop leaves: the default size returns, and Chromium fills it again.
        await laptop.close()
        await eventually(lambda: sized(url, (W, H)), 30, "the desktop did not return to its default size", interval=0.1)
        assert await eventually(lambda: fits(live, W, H), 60, "Chromium's window filling the screen", interval=0.1) == [
            (0, 0, W, H)
        ]

        # The size is free again: the phone's next viewer takes it — enlarged to Chromium's smallest window width
        # (500), same aspect ratio, so the kiosk window is never wider than the screen (noVNC scales the view).
        phone, phone_stream, _ = await open_viewer(url)
        await phone_stream.write(NOVNC_START + resize_to(390, 844))
        await eventually(lambda: sized(url, (500, 1082)), 30, "new viewers seeing (500, 1082)", interval=0.1)
        assert await eventually(
            lambda: fits(live, 500, 1082), 60, "Chromium's window filling the screen", interval=0.1
        ) == [(0, 0, 500, 1082)], "the kiosk window does not fit"
        await phone.close()
        await eventually(lambda: sized(url, (W, H)), 30, "new viewers seeing (W, H)", interval=0.1)
        print(f"\nsizes: laptop 900x560 held against a phone and a view-only viewer; back to {W}x{H} twice")
        assert (await http.get(f"/api/auth/session/{live.session_id}")).json()["status"] == "ready"
        assert Path(f"/proc/{xvnc_pid(live)}").exists()


CANVAS_BOX = (
    "() => { const c = document.querySelector('#screen canvas'); if (!c) return [0, 0]; "
    "const r = c.getBoundingClientRect(); return [Math.ceil(r.width), Math.ceil(r.height)]; }"
)


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian's chromium is installed by scripts/setup.sh")
async def test_a_laptop_and_a_phone_in_real_browsers(make_settings: Callable[..., Settings]) -> None:
    """noVNC on a laptop and on a touch phone (Playwright), both with the control link: the laptop's window sets the
    desktop and the phone does not shrink it; when the laptop leaves the default returns; the phone's next window
    change takes the size, enlarged to Chromium's smallest window, and the phone shows all of it (scaled)."""
    settings = make_settings(HEARTH_SCREEN=f"{W}x{H}x24", HEARTH_VIEWER_WAIT="90")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=60) as http,
    ):
        live = await start_ready(http, ctl.settings, "two-devices")
        page_url = f"{ctl.base_url}/api/auth/session/{live.session_id}/novnc?token={live.viewer_token}"
        url = live.ws_url(ctl)
        async with (
            chromium() as browser,
            context(browser, clipboard=False, **DESKTOP) as laptop_ctx,
            context(browser, clipboard=False, **PHONE) as phone_ctx,
        ):
            laptop = await laptop_ctx.new_page()
            await laptop.goto(page_url)
            await laptop.wait_for_function(VIEWER_READY, timeout=60_000)
            box: list[int] = []
            for _ in range(100):  # the desktop takes the laptop's screen area
                box = await laptop.evaluate(SCREEN_BOX)
                if await laptop.evaluate(CANVAS_SIZE) == box:
                    break
                await asyncio.sleep(0.1)
            assert await size_seen(url) == tuple(box) != (W, H)

            phone = await phone_ctx.new_page()
            await phone.goto(page_url)
            await phone.wait_for_function(VIEWER_READY, timeout=60_000)
            for _ in range(30):  # noVNC asks for its size once its first update is in: give it the chance
                assert await phone.evaluate(CANVAS_SIZE) in ([0, 0], box), "the phone resized the laptop's desktop"
                await asyncio.sleep(0.1)
            assert await size_seen(url) == tuple(box)

            await laptop.close()
            await eventually(
                lambda: sized(url, (W, H)), 30, "the desktop did not return to its default size", interval=0.1
            )

            await phone.set_viewport_size({"width": 390, "height": 700})  # the phone turns: its size goes through
            canvas: list[int] = []
            for _ in range(100):
                canvas = await phone.evaluate(CANVAS_SIZE)
                if canvas[0] == 500:
                    break
                await asyncio.sleep(0.1)
            assert canvas[0] == 500 and await size_seen(url) == tuple(canvas), canvas
            shown = await phone.evaluate(CANVAS_BOX)
            assert shown[0] <= 390, f"the phone shows the desktop {shown[0]} px wide in a 390 px viewport"
            assert await eventually(
                lambda: fits(live, *canvas), 60, "Chromium's window filling the screen", interval=0.1
            ) == [(0, 0, *canvas)]
            print(
                f"\nlaptop {box[0]}x{box[1]} held; phone: desktop {canvas[0]}x{canvas[1]} shown at {shown[0]}x{shown[1]}"
            )
