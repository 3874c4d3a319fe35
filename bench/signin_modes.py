"""Sign-in modes compared with the `example` provider (a real local OAuth server + CLI):

- create → sign-in URL shown to the person: remote_browser — the sandbox's Chromium loaded the provider's page (the
  example IdP logs it); direct — the API's `signin.url` is present (device_code and paste_code flows);
- memory of each sign-in sandbox once the URL is shown: the sum of RSS and of PSS (/proc/<pid>/smaps_rollup) of the
  processes in its network namespace (agent, CLI, and in remote_browser Xvfb, Openbox, x11vnc, Chromium).

Prints each run, the medians per mode and the direct / remote_browser ratios.

    sudo .venv/bin/python bench/signin_modes.py -n 3

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from hearth.config import Settings
from hearth.fabric.dial import socket_in_netns
from hearth.providers.model import FlowName
from hearth.sandbox.netns import pids_in_netns
from hearth.serving.local import local_controller, scratch_settings, userspace
from hearth_example.idp import IdpServer, IdpState

IDP_PORT = 9405
SETTLE = 2.0  # seconds after the URL is shown before memory is read (Chromium finishes painting the page)


@dataclass(frozen=True)
class Run:
    mode: str
    url_shown: float
    rss_mib: float
    pss_mib: float
    processes: int


def memory(netns: str) -> tuple[float, float, int]:
    """(RSS MiB, PSS MiB, process count) of the processes in `netns`."""
    rss = pss = 0
    pids = pids_in_netns(netns)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue  # exited meanwhile
    return rss / 1024, pss / 1024, len(pids)


def start_idp(settings: Settings) -> tuple[IdpServer, IdpState]:
    sock = socket_in_netns(settings.fabric_netns)
    sock.bind((str(settings.bridge_ip), IDP_PORT))
    state = IdpState(auto_approve=False)  # nobody signs in: each sandbox stays at "URL shown"
    server = IdpServer(sock, state)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, state


async def one(http: httpx.AsyncClient, settings: Settings, idp: IdpState, label: str, mode: str) -> Run:
    pages_before = sum(1 for e in idp.events if e["kind"] == "authorize_page")
    t0 = time.monotonic()
    r = await http.post(
        "/api/auth/start", json={"user_id": "bench-" + label.replace("/", "-"), "provider": "example", "mode": mode}
    )
    r.raise_for_status()
    sid = r.json()["session_id"]
    deadline = t0 + 120
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        body = (await http.get(f"/api/auth/session/{sid}")).json()
        if body["status"] in ("failed", "cancelled", "expired", "completed"):
            raise SystemExit(f"{label}: session {body['status']}: {body.get('reason')}")
        shown = (
            bool(body.get("signin"))
            if mode == "direct"
            else sum(1 for e in idp.events if e["kind"] == "authorize_page") > pages_before
        )
        if shown:
            break
        await asyncio.sleep(0.02)
    else:
        raise SystemExit(f"{label}: no URL shown within 120s ({body})")
    url_shown = time.monotonic() - t0
    await asyncio.sleep(SETTLE)
    slot = int(str(body["sandbox_ip"]).rsplit(".", 1)[1]) - int(str(settings.ip_pool_start).rsplit(".", 1)[1])
    rss, pss, n = await asyncio.to_thread(memory, f"{settings.fabric_netns}-s{slot}")
    await http.post(f"/api/auth/session/{sid}/cancel")
    return Run(label, url_shown, rss, pss, n)


async def main(n: int) -> None:
    env = {"HEARTH_FABRIC_OPEN_PORTS": str(IDP_PORT), "HEARTH_EXAMPLE_ISSUER": f"http://192.168.100.1:{IDP_PORT}"}
    with scratch_settings(env, "hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=60) as http,
        ):
            server, idp = await asyncio.to_thread(start_idp, settings)
            example = lc.ctl.providers["example"]
            cases = [
                ("remote_browser", "remote_browser", example.flows),
                ("direct/device_code", "direct", example.flows),
                ("direct/paste_code", "direct", {k: v for k, v in example.flows.items() if k != FlowName.DEVICE_CODE}),
            ]
            runs: dict[str, list[Run]] = {label: [] for label, _, _ in cases}
            try:
                for _ in range(n):
                    for label, mode, flows in cases:
                        lc.ctl.providers["example"] = example.model_copy(update={"flows": flows})
                        run = await one(http, settings, idp, label, mode)
                        runs[label].append(run)
                        print(
                            f"{label:20s} create→URL shown {run.url_shown:6.3f}s  memory RSS {run.rss_mib:7.1f} MiB"
                            f"  PSS {run.pss_mib:7.1f} MiB  ({run.processes} processes)"
                        )
            finally:
                server.shutdown()
                server.server_close()
    med = {
        label: (
            statistics.median(r.url_shown for r in rs),
            statistics.median(r.rss_mib for r in rs),
            statistics.median(r.pss_mib for r in rs),
        )
        for label, rs in runs.items()
    }
    print(f"\nmedians over {n} run(s) per mode (provider: example)")
    for label, (t, rss, pss) in med.items():
        print(f"{label:20s} create→URL shown {t:6.3f}s  RSS {rss:7.1f} MiB  PSS {pss:7.1f} MiB")
    base = med["remote_browser"]
    for label in ("direct/device_code", "direct/paste_code"):
        t, rss, pss = med[label]
        print(f"{label} / remote_browser: time {t / base[0]:.2f}  RSS {rss / base[1]:.2f}  PSS {pss / base[2]:.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3, help="runs per mode")
    args = ap.parse_args()
    asyncio.run(main(args.n))
