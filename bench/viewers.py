"""Many viewers joining one real session at once: connect → first full frame for each of N viewers started together,
through the gateway and through websockify 0.13 (pointed at the same sandbox's Xvnc, inside the fabric namespace),
alternating in the same run. Prints p50/p90/max per path and the gateway/websockify ratio of the p50s.

    sudo .venv/bin/python bench/viewers.py [-n 50] [--repeat 3] [--screen 1280x720x24] [--chromium]

Each viewer is a WebSocket client doing the RFB handshake (3.8, security None) and one full, non-incremental
framebuffer update (raw encoding); the N clients of a run share one child process (their CPU is counted for neither
path), started in the namespace its path listens in. The controller runs in this process, on uvloop like
`hearth serve`. Sandboxes run this host's image (HEARTH_IMAGE_DIR); the first line says which userspace.
Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
WEBSOCKIFY = Path(sys.executable).parent / "websockify"


# ---- the clients (child process) ----------------------------------------------------------------------------------
async def clients(n: int, url: str) -> None:
    from hearth.rfb.ws import first_frame

    t0 = time.monotonic()

    async def one() -> float:
        frame = await first_frame(url, timeout=120)
        assert frame.rects, "an update with no rectangles"
        return time.monotonic() - t0

    times = await asyncio.gather(*(one() for _ in range(n)))
    print(json.dumps(sorted(times)))


async def run_clients(n: int, url: str, netns: str | None) -> list[float]:
    argv = [sys.executable, str(HERE), "clients", str(n), url]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    if proc.returncode != 0:
        raise RuntimeError(f"viewer clients failed ({proc.returncode})")
    times: list[float] = json.loads(out)
    return times


def listening(netns: str, port: int) -> bool:
    from hearth.fabric.dial import call_in_netns

    def probe() -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    return call_in_netns(netns, probe)


# ---- the driver ---------------------------------------------------------------------------------------------------
async def main(n: int, repeat: int, screen: str, chromium: bool) -> None:
    import httpx

    from hearth.serving.local import free_port, local_controller, scratch_settings, userspace

    env = {
        "HEARTH_CHROMIUM": "true" if chromium else "false",
        "HEARTH_SCREEN": screen,
        "HEARTH_RATE_LIMIT": "0",
        "HEARTH_TOKEN_TTL": "3600",
        "HEARTH_VIEWER_WAIT": "60",
    }
    results: dict[str, list[float]] = {"gateway": [], "websockify": []}
    with scratch_settings(env, "hearth-b") as settings:
        print(userspace(settings))
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=60) as http,
        ):
            started = (await http.post("/api/auth/start", json={"user_id": "viewers"})).json()
            sid = started["session_id"]
            view = await lc.ctl.service.wait_until(sid, 60)
            assert view.status.value == "ready" and view.slot is not None, view
            ip, rfb = str(lc.ctl.service.ipam.slot(view.slot).ip), settings.rfb_port
            gateway_url = f"{lc.ws_base}/api/auth/session/{sid}/novnc/websock?token={started['viewer_token']}"
            ws_port = free_port()  # (free in the root namespace; the fabric's loopback is empty)
            ns = ["ip", "netns", "exec", settings.fabric_netns]
            websockify = await asyncio.create_subprocess_exec(
                *ns, str(WEBSOCKIFY), f"127.0.0.1:{ws_port}", f"{ip}:{rfb}",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                for _ in range(200):
                    if listening(settings.fabric_netns, ws_port):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("websockify did not listen")
                for r in range(repeat):
                    got = await run_clients(n, gateway_url, None)
                    results["gateway"].append(statistics.median(got))
                    print(f"run {r + 1} gateway     p50 {statistics.median(got):.3f}s  max {max(got):.3f}s")
                    got = await run_clients(n, f"ws://127.0.0.1:{ws_port}/", settings.fabric_netns)
                    results["websockify"].append(statistics.median(got))
                    print(f"run {r + 1} websockify  p50 {statistics.median(got):.3f}s  max {max(got):.3f}s")
            finally:
                websockify.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(websockify.wait(), 10)
                except TimeoutError:
                    websockify.kill()
                    await asyncio.wait_for(websockify.wait(), 5)
                await http.post(f"/api/auth/session/{sid}/cancel")

    g, w = statistics.median(results["gateway"]), statistics.median(results["websockify"])
    print(f"\n{n} viewers joining one session at once, connect → first full frame, median of {repeat} runs' p50:")
    print(f"gateway {g:.3f}s  websockify {w:.3f}s  ratio {g / w:.2f}×  (target ≤ 1.0×)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "clients":
        asyncio.run(clients(int(sys.argv[2]), sys.argv[3]))
    else:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("-n", type=int, default=50, help="viewers joining at once")
        ap.add_argument("--repeat", type=int, default=3, help="runs per path, alternating (medians are printed)")
        ap.add_argument("--screen", default="1280x720x24", help="HEARTH_SCREEN of the session")
        ap.add_argument("--chromium", action="store_true", help="with Chromium on the desktop")
        a = ap.parse_args()
        import uvloop  # `hearth serve` runs on uvloop (uvicorn's default when installed): so does this controller

        uvloop.run(main(a.n, a.repeat, a.screen, a.chromium))
