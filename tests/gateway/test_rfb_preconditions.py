"""The RFB protocol's preconditions, kept by the gateway, against the real Xvnc of a live sandbox.

A raw RFB client (tests/gateway/rfbmsgs.py builds the messages) sends, each on a viewer of its own: every kind of
message the gateway forwards — sane, odd and hostile-but-valid ones — and then every kind it refuses, among them
the SetDesktopSize without ExtendedDesktopSize that segfaulted Xvnc 1.12. After each the desktop must be alive:
Xvnc's pid unchanged and a new viewer still gets a whole frame; each refused one closes 4403 with a reason.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hearth.config import Settings
from hearth.rfb.ws import first_frame
from hearth.sandbox.procs import pids_in_netns
from tests.conftest import running_controller
from tests.gateway.rfbmsgs import (
    ALL_PSEUDO,
    NOVNC_START,
    VALID_FORMATS,
    desktop_size,
    fb_request,
    set_encodings,
)
from tests.gateway.test_viewers import open_viewer
from tests.live import Live, start_ready
from tests.waits import eventually

pytestmark = [pytest.mark.netns, pytest.mark.slow]
W, H = 640, 400

KEY = struct.pack(">BBxxI", 4, 1, 0xFFE1) + struct.pack(">BBxxI", 4, 0, 0xFFE1)  # shift down, up
CAPS = bytes.fromhex("06000000fffffff81f00000100000000")  # noVNC's extended clipboard caps

FORWARDED: dict[str, bytes] = {
    "pixel formats": b"".join(b"\0\0\0\0" + f for f in VALID_FORMATS) + b"\0\0\0\0" + VALID_FORMATS[0],
    "every encoding": set_encodings(*range(-320, 30), *ALL_PSEUDO),
    "update requests beyond the screen": fb_request(1, 65535, 65535) + struct.pack(">BBHHHH", 3, 0, 65000, 65000, 9, 9),
    "keys and a pointer off the screen": KEY + struct.pack(">BBHH", 5, 0, 65535, 65535),
    "clipboard text, and one over Xvnc's limit": struct.pack(">BxxxI", 6, 5)
    + b"hello"
    + struct.pack(">BxxxI", 6, 300_000)
    + bytes(300_000),
    "extended clipboard caps": CAPS,
    "extended clipboard, an unknown action": struct.pack(">BxxxiI", 6, -4, 1 << 29),
    "continuous updates on and off": struct.pack(">BBHHHH", 150, 1, 0, 0, W, H)
    + struct.pack(">BBHHHH", 150, 0, 0, 0, W, H),
    "fences": struct.pack(">BxxxIB", 248, 0x80000007, 64) + bytes(64) + struct.pack(">BxxxIB", 248, 0, 0),
    "a resize": desktop_size(800, 600, [(0, 0, 0, 800, 600, 0)]),
    "a resize to one pixel": desktop_size(1, 1, [(0, 0, 0, 1, 1, 0)]),
    "a resize to the largest allowed": desktop_size(8192, 2048, [(0, 0, 0, 8192, 2048, 0)]),
    "a resize to two screens": desktop_size(1280, 400, [(0, 0, 0, 640, 400, 0), (7, 640, 0, 640, 400, 0)]),
    "QEMU key events": struct.pack(">BBHII", 255, 0, 1, 0xFFE1, 0x2A) + struct.pack(">BBHII", 255, 0, 0, 0, 0),
}
ONLY_RAW = set_encodings(0) + fb_request(0)
REFUSED: dict[str, tuple[bytes, str]] = {
    "a resize without ExtendedDesktopSize (segfaulted Xvnc)": (
        ONLY_RAW + desktop_size(W, H, [(0, 0, 0, W, H, 0)]),
        "EXTENDED_DESKTOP_SIZE",
    ),
    "a resize with DesktopSize only": (
        set_encodings(0, -223) + fb_request(0) + desktop_size(W, H, [(0, 0, 0, W, H, 0)]),
        "EXTENDED_DESKTOP_SIZE",
    ),
    "a resize to 16384x16384": (NOVNC_START + desktop_size(16384, 16384, [(0, 0, 0, 16384, 16384, 0)]), "16384"),
    "a resize with no screens": (NOVNC_START + desktop_size(W, H, []), "0 screens"),
    "a resize to 0x0": (NOVNC_START + desktop_size(0, 0, [(0, 0, 0, 0, 0, 0)]), "0x0"),
    "a QEMU key event unannounced": (ONLY_RAW + struct.pack(">BBHII", 255, 0, 1, 0x61, 0x1E), "QEMU_EXTENDED_KEY"),
    "QEMU audio": (NOVNC_START + struct.pack(">BBH", 255, 1, 0), "QEMU submessage 1"),
    "a fence unannounced": (ONLY_RAW + struct.pack(">BxxxIB", 248, 0x80000000, 0), "FENCE"),
    "continuous updates without fences": (
        set_encodings(0, -313) + struct.pack(">BBHHHH", 150, 1, 0, 0, W, H),
        "FENCE",
    ),
    "extended clipboard unannounced": (ONLY_RAW + CAPS, "EXTENDED_CLIPBOARD"),
    "xvp": (set_encodings(0, -309) + struct.pack(">BxBB", 250, 1, 2), "xvp"),
    "an unknown type": (NOVNC_START + bytes([99, 0, 0, 0]), "type 99"),
}


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # exited meanwhile
        return ""


def xvnc_pid(live: Live) -> int:
    found = [p for p in pids_in_netns(live.netns) if comm(p) == "Xvnc"]
    assert len(found) == 1, found
    return found[0]


async def closed_with(ws: ClientConnection) -> tuple[int, str]:
    """Read (and drop) whatever the server sends until the gateway closes; (code, reason)."""
    try:
        for _ in range(10_000):
            await asyncio.wait_for(ws.recv(), 30)
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (1006, "")
    raise AssertionError("the gateway kept the connection open")


async def still_alive(ctl_url: str, live: Live, pid: int) -> None:
    """Xvnc has not restarted and a new viewer gets a whole frame. (Xvnc closes a viewer that cannot follow a
    resize — this one announces raw only — when the desktop goes back to its default size meanwhile: it retries.)"""
    assert xvnc_pid(live) == pid, "Xvnc restarted"
    for attempt in range(5):
        try:
            frame = await first_frame(ctl_url, timeout=60)
            break
        except ConnectionClosed as exc:
            if attempt == 4 or exc.rcvd is None or exc.rcvd.code != 1000:
                raise
    assert sum(len(r.pixels) // 4 for r in frame.rects) == frame.init.width * frame.init.height
    assert xvnc_pid(live) == pid, "Xvnc restarted"


async def test_forwarded_messages_leave_xvnc_alive_and_refused_ones_close_4403(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(HEARTH_CHROMIUM="false", HEARTH_SCREEN=f"{W}x{H}x24", HEARTH_VIEWER_WAIT="60")
    async with (
        running_controller(settings) as ctl,
        httpx.AsyncClient(base_url=ctl.base_url, headers=ctl.headers, timeout=30) as http,
    ):
        live = await start_ready(http, ctl.settings, "preconditions")
        url = live.ws_url(ctl)
        r = await http.post(f"/api/auth/session/{live.session_id}/token", json={"scope": "view"})
        view_url = live.ws_url(ctl, r.json()["viewer_token"])
        pid = xvnc_pid(live)
        gauge = ctl.ctl.viewers
        for name, payload in FORWARDED.items():
            ws, stream, _ = await open_viewer(url)
            start = b"" if payload.startswith(b"\x02") else NOVNC_START
            await stream.write(start + payload)
            await ws.close()
            # The relay has ended: everything was written to Xvnc before the gateway's end of the connection.
            await eventually(lambda: gauge.count(live.session_id) == 0, 15, "no viewer counted")
            await still_alive(url, live, pid)
            print(f"forwarded: {name}: Xvnc alive")
        for name, (payload, why) in REFUSED.items():
            for target in (url, view_url):
                ws, stream, _ = await open_viewer(target)
                await stream.write(payload)
                code, reason = await closed_with(ws)
                assert code == 4403 and why in reason, (name, code, reason)
            await still_alive(url, live, pid)
            print(f"refused: {name}: 4403 {reason!r}; Xvnc alive")
        assert (await http.get(f"/api/auth/session/{live.session_id}")).json()["status"] == "ready"
