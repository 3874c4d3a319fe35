"""Create→first-frame over N sessions: each session is created through the API and its first framebuffer update
is fetched through the gateway WebSocket. Prints each run and the median / max, for each sandbox VNC server
(HEARTH_VNC_SERVER: Xvnc, and the previous Xvfb + x11vnc) in the same run, with the ratio.

    sudo .venv/bin/python bench/first_frame.py -n 5 [--parallel 2] [--vnc xvnc,x11vnc] [--pool [--pool-size 2]]

`--pool`: also from the warm pool (HEARTH_POOL_SIZE=remote_browser:<pool-size>, its own flag; each batch starts once
the pool is full again — no refill in flight (a pooled desktop is offered before its refill has started its browser:
such a refill took both cores from the hand-over), as the cold arm has no other boot beside it — or, with
`--refilling`, as soon as it holds as many sandboxes as the batch creates, while the rest still boot and take CPU
from the hand-over), with the ratio against the cold Xvnc figure
of the same run. Sandboxes run this host's image (HEARTH_IMAGE_DIR, as `hearth serve`); the first line says which.
The client — POST, the viewer WebSocket, RFB, the first update — runs in processes of its own (one per parallel
create), as an independent viewer would; `--in-process` runs it on the controller's event loop instead (the previous
method: its 4 MB raw frame was then decoded by the loop that also relays it). Each arm also prints the median of every
boot stage the API reports (seconds since creation: lease, namespace, process, display, vnc, rfb — or pool), of the
client's own phases (POST answered, viewer WebSocket open, RFB handshake done; measured from the POST, whereas the
API's stages count from the row's creation) and of the first frame.

Each batch of creates, in either arm, starts once the machine is quiet (its CPUs ≥ 90 % idle over 100 ms, waited
for at most 5 s; a run that started without says so): what the previous one left behind — a sandbox still being
removed, a pooled browser still settling after its refill — does not take the CPU from the next. Except the pool
arm with `--refilling`, whose point is the CPU the refills take.

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

from hearth.rfb.ws import first_frame
from hearth.serving.local import LocalController, local_controller, scratch_settings, userspace

# The independent client: one create per line of stdin (a user id), one JSON line out per create.
CLIENT = """
import asyncio, json, os, sys, time
import httpx
from hearth.rfb.ws import first_frame

async def main():
    headers = json.loads(os.environ["BENCH_HEADERS"])
    async with httpx.AsyncClient(base_url=os.environ["BENCH_API"], headers=headers, timeout=60) as http:
        await http.get("/health")  # connection and imports warm before the first timed create
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            t0 = time.monotonic()
            r = await http.post("/api/auth/start", json={"user_id": line.strip()})
            r.raise_for_status()
            body = r.json()
            answered = time.monotonic() - t0
            url = f"{os.environ['BENCH_WS']}/api/auth/session/{body['session_id']}/novnc/websock"
            frame = await first_frame(f"{url}?token={body['viewer_token']}", 120)
            total = time.monotonic() - t0
            phases = {"answered": answered, "ws open": answered + frame.connect_s,
                      "rfb handshake": answered + frame.handshake_s}
            print(json.dumps({"sid": body["session_id"], "total": total, "non_blank": frame.non_blank,
                              "phases": phases}), flush=True)

asyncio.run(main())
"""


class Client:
    """One independent client process (python -c CLIENT), its creates one at a time."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, lc: LocalController) -> Client:
        env = {**os.environ, "BENCH_API": lc.base_url, "BENCH_WS": lc.ws_base, "BENCH_HEADERS": json.dumps(lc.headers)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
        )
        client = cls(proc)
        await client._line()  # {"ready": true}
        return client

    async def _line(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 180)
        if not line:
            raise SystemExit(f"the bench client exited with {await self.proc.wait()}")
        out: dict[str, object] = json.loads(line)
        return out

    async def create(self, user: str) -> tuple[str, float, bool, dict[str, float]]:
        """(session id, create → first frame, non-blank, the client's own phases in seconds since the POST)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{user}\n".encode())
        await self.proc.stdin.drain()
        got = await self._line()
        phases = {str(k): float(v) for k, v in dict(got["phases"]).items()}  # type: ignore[call-overload]
        return str(got["sid"]), float(got["total"]), bool(got["non_blank"]), phases  # type: ignore[arg-type]

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        await asyncio.wait_for(self.proc.wait(), 30)


async def one(
    http: httpx.AsyncClient, ws_base: str, user: str, client: Client | None
) -> tuple[float, float, bool, dict[str, float]]:
    if client is not None:
        sid, total, non_blank, phases = await client.create(user)
    else:
        t0 = time.monotonic()
        r = await http.post("/api/auth/start", json={"user_id": user})
        r.raise_for_status()
        body = r.json()
        sid, answered = body["session_id"], time.monotonic() - t0
        frame = await first_frame(f"{ws_base}/api/auth/session/{sid}/novnc/websock?token={body['viewer_token']}", 120)
        total, non_blank = time.monotonic() - t0, frame.non_blank
        phases = {
            "answered": answered,
            "ws open": answered + frame.connect_s,
            "rfb handshake": answered + frame.handshake_s,
        }
    # the API's boot stages and the client's phases (POST answered, viewer WebSocket open, RFB handshake done)
    timings = {**(await http.get(f"/api/auth/session/{sid}")).json()["timings"], **phases}
    ready = timings.get("rfb", timings.get("pool", float("nan")))
    await http.post(f"/api/auth/session/{sid}/cancel")
    return total, ready, non_blank, timings


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs since boot (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user … steal


async def quiet(idle: float = 0.9, window: float = 0.1, timeout: float = 5.0) -> bool:
    """Until this machine's CPUs were at least `idle` idle over a `window` (at most `timeout`; False if never):
    each create, in either arm, starts on a quiet machine — not while what the previous one left behind (a pooled
    browser still settling after its refill, a sandbox still being removed) takes the CPU."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle0, total0 = _cpu_times()
        await asyncio.sleep(window)
        idle1, total1 = _cpu_times()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle:
            return True
    return False


async def pool_full(lc: LocalController, size: int, timeout: float = 120, settled: bool = True) -> None:
    """Until the pool offers `size` desktops — and, `settled`, no refill is still under way: a pooled sandbox is
    offered once its desktop is up, while its refill still starts its browser and the gateway's standby connection."""
    pool = lc.ctl.service.pool
    deadline = time.monotonic() + timeout
    while len(pool.ready("remote_browser")) < size or (settled and pool.filling("remote_browser")):
        if time.monotonic() > deadline:
            raise SystemExit(f"the warm pool did not fill: {pool.summary()}")
        await asyncio.sleep(0.05)


async def run(
    n: int,
    parallel: int,
    chromium: bool,
    vnc_server: str,
    pool: bool = False,
    pool_size: int = 1,
    in_process: bool = False,
    refilling: bool = False,
) -> tuple[float, float]:
    """`n` sessions on a fresh controller whose sandboxes run `vnc_server`; (p50 create→ready, p50 first frame)."""
    env = {
        "HEARTH_CHROMIUM": "true" if chromium else "false",
        "HEARTH_VNC_SERVER": vnc_server,
        "MAX_SESSIONS_PER_USER": str(max(parallel, 1)),
    }
    if pool:
        env["HEARTH_POOL_SIZE"] = f"remote_browser:{max(pool_size, 1)}"
    label = f"{vnc_server} pool of {pool_size}{', refilling' if refilling else ''}" if pool else vnc_server
    with scratch_settings(env, "hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=60) as http,
        ):
            results: list[tuple[float, float, bool]] = []
            stages: dict[str, list[float]] = {}
            clients = [] if in_process else await asyncio.gather(*(Client.start(lc) for _ in range(parallel)))
            for i in range(0, n, parallel):
                if pool:
                    if refilling:
                        await pool_full(lc, min(parallel, n - i, pool_size), settled=False)
                    else:
                        await pool_full(lc, pool_size)
                calm = await quiet() if not (pool and refilling) else True  # refilling: beside the refills' CPU
                batch = await asyncio.gather(
                    *(
                        one(http, lc.ws_base, f"bench{j}", clients[j - i] if clients else None)
                        for j in range(i, min(n, i + parallel))
                    )
                )
                for total, ready, non_blank, timings in batch:
                    results.append((total, ready, non_blank))
                    for stage, at in timings.items():
                        stages.setdefault(stage, []).append(float(at))
                    stages.setdefault("first frame", []).append(total)
                    print(
                        f"[{label}] run {len(results):3d}: create→ready {ready:6.3f}s  "
                        f"create→first-frame {total:6.3f}s  {'non-blank' if non_blank else 'BLANK'}"
                        f"{'' if calm else '  (the machine was not quiet before it)'}"
                    )
            for client in clients:
                await client.close()
    totals = [r[0] for r in results]
    readies = [r[1] for r in results]
    print(f"\n[{label}] sessions: {len(results)}  parallel: {parallel}  chromium: {chromium}")
    print(f"[{label}] create→ready        median {statistics.median(readies):.3f}s  max {max(readies):.3f}s")
    print(f"[{label}] create→first-frame  median {statistics.median(totals):.3f}s  max {max(totals):.3f}s")
    marks = sorted(((statistics.median(v), k) for k, v in stages.items()), key=lambda m: m[0])
    steps, last = [], 0.0
    for at, stage in marks:  # each stage's p50 (seconds since creation) and the step to it from the one before
        steps.append(f"{stage} {at * 1000:.0f} ms (+{(at - last) * 1000:.0f})")
        last = at
    print(f"[{label}] stages p50: {', '.join(steps)}\n")
    return statistics.median(readies), statistics.median(totals)


async def main(
    n: int,
    parallel: int,
    chromium: bool,
    servers: list[str],
    pool: bool,
    pool_size: int,
    in_process: bool,
    refilling: bool = False,
) -> None:
    print(f"client: {'on the controller event loop' if in_process else f'{parallel} process(es) of its own'}")
    got = {v: await run(n, parallel, chromium, v, in_process=in_process) for v in servers}
    if pool:
        _, f_pool = await run(
            n, parallel, chromium, "xvnc", pool=True, pool_size=pool_size, in_process=in_process, refilling=refilling
        )
        if "xvnc" in got:
            f_cold = got["xvnc"][1]
            print(f"create→first-frame p50: pool {f_pool:.3f}s  cold xvnc {f_cold:.3f}s  ratio {f_pool / f_cold:.2f}×")
        else:
            print(f"create→first-frame p50 from the pool: {f_pool:.3f}s")
    if "xvnc" in got and "x11vnc" in got:
        (r_new, f_new), (r_old, f_old) = got["xvnc"], got["x11vnc"]
        print(f"cold create→first-frame p50: xvnc {f_new:.3f}s  x11vnc {f_old:.3f}s  ratio {f_new / f_old:.2f}×")
        print(f"cold create→ready       p50: xvnc {r_new:.3f}s  x11vnc {r_old:.3f}s  ratio {r_new / r_old:.2f}×")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5, help="number of sessions")
    ap.add_argument("--parallel", type=int, default=1, help="sessions created at once")
    ap.add_argument("--no-chromium", action="store_true", help="desktop without Chromium")
    ap.add_argument(
        "--vnc", default="xvnc,x11vnc", help="VNC servers to measure in this run, in order (xvnc,x11vnc: with ratio)"
    )
    ap.add_argument("--pool", action="store_true", help="also measure hand-outs from the warm pool")
    ap.add_argument("--pool-size", type=int, default=2, help="warm pool size for --pool (independent of --parallel)")
    ap.add_argument(
        "--refilling", action="store_true", help="--pool: create while the pool's refills still boot (not when full)"
    )
    ap.add_argument("--in-process", action="store_true", help="the client on the controller's event loop (old way)")
    args = ap.parse_args()
    if args.pool_size < 1:
        ap.error("--pool-size must be at least 1")
    servers = [v for v in args.vnc.split(",") if v]
    asyncio.run(
        main(
            args.n,
            args.parallel,
            not args.no_chromium,
            servers,
            args.pool,
            args.pool_size,
            args.in_process,
            args.refilling,
        )
    )
