"""The direct-sign-in ramp (issue 25 item 2): one node, N sandboxes of the `example` provider in direct mode, each
waiting at "URL shown" (the CLI asked for the code and waits), up to 1,000. Prints, at each level (e.g. 1, 250, 500,
1,000):

- create → URL shown p50 (POST /api/auth/start until the API's `signin.url` is there) of `--probes` sessions created
  one at a time while the node holds level - 1 others (each probe cancelled and gone before the next), and its
  ratio to the level-1 figure of the same run;
- memory per direct sandbox: the PSS (/proc/<pid>/smaps_rollup) of every process in every sandbox's network
  namespace, summed, divided by the sandboxes, and what one sandbox holds (process by process);
then, at the top level: the controller's CPU over `--idle` seconds with nothing asked of it (share of one core) and
the sandboxes' own idle CPU; and the drain: SIGTERM to the `--drain` controller until every sandbox is gone.

    sudo .venv/bin/python -m bench.direct_ramp --levels 1,250,500,1000 [--probes 5] [--fill 4] [--idle 60]

The controller runs in a child process of its own (this file with `--serve`: an in-process controller on a loopback
port, its own fabric namespace `hearth-r<hex>`, the example IdP inside it on BRIDGE_IP), so the controller's CPU is
that process's; the client (this process) only polls. The ramp stops early, saying why, when the host's MemAvailable
falls below `--min-available` MiB (the machine is shared): that level is then the measured ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import httpx

from bench.procstat import TICK, cpu_ticks, describe, mem_available_mib, netns_members, smaps_kib

REPO = Path(__file__).resolve().parents[1]
IDP_PORT = 9407
SIGNIN_TIMEOUT = 7200.0  # seconds: nobody signs in during a ramp; sessions wait at "URL shown" throughout
TERMINAL = ("failed", "cancelled", "expired", "completed")


# ---- the controller (child process) -------------------------------------------------------------------------


async def serve(flow: str, phases: bool = False) -> None:
    """`--serve`: a controller from the environment's settings, the example provider in direct mode with `flow` and
    no sign-in timeout, its IdP in the fabric; prints one JSON line when ready, drains on SIGTERM, prints the drain
    time as a second JSON line, then removes the fabric."""
    from hearth.config import load_settings
    from hearth.controller import build, make_app
    from hearth.fabric.dial import socket_in_netns
    from hearth.providers.model import FlowName
    from hearth.serving.serve import serve_until_stopped, server
    from hearth_example.idp import IdpServer, IdpState

    if phases:
        from bench import phases as steps

        steps.install()  # before the controller is built
    settings = load_settings(env_file=None)
    ctl = build(settings, drain=True)  # `hearth serve --drain`: a stop ends every sandbox
    example = ctl.providers["example"]
    flows = {k: v for k, v in example.flows.items() if k == FlowName(flow)}
    ctl.providers["example"] = example.model_copy(update={"flows": flows, "timeout": SIGNIN_TIMEOUT})
    srv = server(settings, make_app(ctl))
    task = asyncio.create_task(serve_until_stopped(srv))
    while not srv.started:
        if task.done():
            task.result()
            raise SystemExit("the controller exited during startup")
        await asyncio.sleep(0.05)
    sock = socket_in_netns(settings.fabric_netns)
    sock.bind((str(settings.bridge_ip), IDP_PORT))
    idp = IdpServer(sock, IdpState(auto_approve=False))
    threading.Thread(target=idp.serve_forever, daemon=True).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"pid": os.getpid()}), flush=True)
    await stop.wait()
    t0, cpu0, own0 = time.monotonic(), cpu_seconds(), cpu_seconds(own=True)
    if phases:
        steps.start()
    srv.should_exit = True
    await task
    took = {"drained": time.monotonic() - t0, "cpu": cpu_seconds() - cpu0, "own": cpu_seconds(own=True) - own0}
    print(json.dumps({**took, "phases": steps.report() if phases else {}}), flush=True)
    idp.shutdown()
    idp.server_close()
    await ctl.fabric.down(force=True)


def cpu_seconds(own: bool = False) -> float:
    """CPU seconds of this process (every thread) and of its children it has waited for (nft, ip, bwrap...), or
    (`own`) of this process alone. A sandbox's launcher is a child: reaped in the drain, it brings the CPU of its
    whole life (the agent's and the CLI's start, their idle time) into the children's share."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + (0.0 if own else kids.ru_utime + kids.ru_stime)


# ---- measuring (this process) -------------------------------------------------------------------------------


@dataclass
class Level:
    sessions: int
    url_shown: list[float] = field(default_factory=list)
    pss_per_sandbox: float = 0.0
    fill_seconds: float = 0.0
    failures: int = 0
    available_mib: float = 0.0


class Ramp:
    def __init__(self, http: httpx.AsyncClient, fabric: str, pool_start: IPv4Address) -> None:
        self.http, self.fabric, self.pool_start = http, fabric, pool_start
        self.kept: dict[str, str] = {}  # session id → its sandbox namespace
        self.made = 0

    def netns(self, body: dict[str, Any]) -> str:
        return f"{self.fabric}-s{int(IPv4Address(str(body['sandbox_ip']))) - int(self.pool_start)}"

    async def create(self, poll: float) -> tuple[str, str, float]:
        """One direct sign-in until its URL is shown: (session id, namespace, seconds)."""
        self.made += 1
        t0 = time.monotonic()
        r = await self.http.post(
            "/api/auth/start", json={"user_id": f"ramp-{self.made}", "provider": "example", "mode": "direct"}
        )
        r.raise_for_status()
        sid = r.json()["session_id"]
        while True:
            got = await self.http.get(f"/api/auth/session/{sid}")
            body = got.json()
            if got.status_code != 200:
                raise RuntimeError(f"session {sid}: {got.status_code} {body}")
            if body["status"] in TERMINAL:
                raise RuntimeError(f"session {sid} {body['status']}: {body.get('reason')}")
            if (body.get("signin") or {}).get("url"):
                return sid, self.netns(body), time.monotonic() - t0
            if time.monotonic() - t0 > 600:
                raise RuntimeError(f"session {sid}: no URL within 600 s")
            await asyncio.sleep(poll)

    async def end(self, sid: str, netns: str) -> None:
        await self.http.post(f"/api/auth/session/{sid}/cancel")
        while (await self.http.get(f"/api/auth/session/{sid}")).json()["status"] not in TERMINAL or os.path.exists(
            f"/run/netns/{netns}"
        ):
            await asyncio.sleep(0.05)

    async def fill(self, target: int, parallel: int, min_available: float) -> tuple[int, str | None]:
        """Create kept sessions until `target`, `parallel` at a time; (failures, why it stopped early or None)."""
        failures = 0
        stopped: str | None = None

        async def worker() -> None:
            nonlocal failures, stopped
            while stopped is None and len(self.kept) + pending[0] < target:
                if mem_available_mib() < min_available:
                    stopped = f"MemAvailable below {min_available:.0f} MiB at {len(self.kept)} sandboxes"
                    return
                pending[0] += 1
                try:
                    sid, ns, _ = await self.create(0.25)
                    self.kept[sid] = ns
                except (RuntimeError, httpx.HTTPError) as exc:
                    failures += 1
                    print(f"  create failed: {exc}", flush=True)
                    if failures > 20:
                        stopped = f"more than 20 creates failed (last: {exc})"
                finally:
                    pending[0] -= 1

        pending = [0]
        await asyncio.gather(*(worker() for _ in range(parallel)))
        return failures, stopped

    def memory(self) -> tuple[float, list[tuple[int, str]]]:
        """(PSS MiB per kept sandbox, one sandbox's processes as (PSS KiB, command))."""
        members = netns_members(list(self.kept.values()))
        total = sum(smaps_kib(pid) for pids in members.values() for pid in pids)
        sample = next((pids for pids in members.values() if pids), [])
        return total / 1024 / max(1, len(members)), sorted(((smaps_kib(p), describe(p)) for p in sample), reverse=True)


async def ramp(
    args: argparse.Namespace, base_url: str, headers: dict[str, str], child: int, env: dict[str, str]
) -> int:
    from hearth.config import load_settings

    settings = load_settings(env, env_file=None)
    levels: list[Level] = []
    stopped: str | None = None
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=120) as http:
        r = Ramp(http, settings.fabric_netns, settings.ip_pool_start)
        for target in args.levels:
            level = Level(target)
            t0 = time.monotonic()
            level.failures, stopped = await r.fill(target - 1, args.fill, args.min_available)
            level.fill_seconds = time.monotonic() - t0
            if stopped:
                break
            for k in range(args.probes):
                try:
                    sid, ns, seconds = await r.create(0.02)
                except (RuntimeError, httpx.HTTPError) as exc:
                    level.failures += 1
                    print(f"  probe failed: {exc}", flush=True)
                    continue
                level.url_shown.append(seconds)
                if k < args.probes - 1:
                    await r.end(sid, ns)  # each probe alone with the level's others, gone before the next
                else:
                    r.kept[sid] = ns  # the last one stays: the node now holds `target` sandboxes
            await asyncio.sleep(args.settle)
            pss, one = await asyncio.to_thread(r.memory)
            level.pss_per_sandbox, level.available_mib = pss, mem_available_mib()
            levels.append(level)
            p50 = statistics.median(level.url_shown) if level.url_shown else float("nan")
            print(
                f"level {target:>5}: {len(r.kept):>5} sandboxes held, filled in {level.fill_seconds:7.1f} s, "
                f"URL shown p50 {p50:6.3f} s over {len(level.url_shown)}, PSS {pss:6.1f} MiB/sandbox, "
                f"{level.failures} failed, MemAvailable {level.available_mib:,.0f} MiB, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            if target == args.levels[0]:
                print("  one sandbox holds: " + "; ".join(f"{kib / 1024:.1f} MiB {cmd}" for kib, cmd in one))
        held = len(r.kept)
        idle_ctl = idle_sb = 0.0
        if args.idle > 0 and held:
            members = netns_members(list(r.kept.values()))
            pids = [p for ps in members.values() for p in ps]
            c0, s0, t0 = cpu_ticks(child), sum(cpu_ticks(p) for p in pids), time.monotonic()
            await asyncio.sleep(args.idle)
            wall = time.monotonic() - t0
            idle_ctl = (cpu_ticks(child) - c0) / TICK / wall * 100
            idle_sb = (sum(cpu_ticks(p) for p in pids) - s0) / TICK / wall * 100
            print(
                f"idle {wall:.0f} s at {held} sandboxes: controller {idle_ctl:.2f} % of a core; sandboxes "
                f"{idle_sb:.2f} % of a core in all, {idle_sb / held:.4f} % each"
            )
    spy = None
    if args.profile_drain:  # py-spy's collapsed stacks of the controller while it drains
        spy = await asyncio.create_subprocess_exec(
            # --nonblocking: a blocking py-spy stops the controller at every sample (a drain took 4× as long)
            *(args.py_spy, "record", "--nonblocking", "--format", "raw", "-o", args.profile_drain, "-r", "50"),
            *("--pid", str(child)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(1.0)  # py-spy attached
    t0 = time.monotonic()
    os.kill(child, signal.SIGTERM)
    return_value = await drain_and_report(args, levels, held, stopped, t0, settings.fabric_netns, idle_ctl)
    if spy is not None:
        await spy.wait()  # it ends with the controller
    return return_value


async def drain_and_report(
    args: argparse.Namespace,
    levels: list[Level],
    held: int,
    stopped: str | None,
    t0: float,
    fabric: str,
    idle_ctl: float,
) -> int:
    line = await asyncio.to_thread(PROC.stdout.readline) if PROC.stdout else ""
    got = json.loads(line) if line.strip() else {}
    drained, cpu, own = (got.get(k, float("nan")) for k in ("drained", "cpu", "own"))
    for step, (calls, seconds) in sorted(got.get("phases", {}).items(), key=lambda kv: -kv[1][1]):
        print(f"  drain step {step:28} {calls:6} calls, {seconds:8.1f} s in all ({seconds / drained:5.1f} at a time)")
    left = [n for n in os.listdir("/run/netns") if n.startswith(f"{fabric}-s")]
    print(
        f"drain of {held} sandboxes: {drained:.1f} s (SIGTERM → every session ended), {len(left)} namespaces left; "
        f"controller CPU {cpu:.1f} s ({cpu / max(1, held) * 1000:.0f} ms per session, its children included; "
        f"its own {own:.1f} s, {own / max(1, held) * 1000:.0f} ms per session)"
    )
    PROC.wait(120)
    print("\nsummary (ratios against level 1 of this run)")
    base = statistics.median(levels[0].url_shown) if levels and levels[0].url_shown else float("nan")
    for lv in levels:
        p50 = statistics.median(lv.url_shown) if lv.url_shown else float("nan")
        print(
            f"  {lv.sessions:>5}: URL shown p50 {p50:6.3f} s ({p50 / base:4.2f}× level 1), "
            f"PSS {lv.pss_per_sandbox:5.1f} MiB per sandbox"
        )
    print(f"  controller CPU idle at {held}: {idle_ctl:.2f} % of a core; drain of {held}: {drained:.1f} s")
    if stopped:
        print(f"  ramp stopped early: {stopped}")
    return 0 if not stopped and not left else 1


PROC: subprocess.Popen[str]


def settings_env(args: argparse.Namespace) -> dict[str, str]:
    import secrets

    from hearth.serving.local import free_port, host_image_env

    data = Path("/var/tmp") / f"hearth-r-{secrets.token_hex(4)}"
    data.mkdir(mode=0o711)
    return {
        "HEARTH_FABRIC_NETNS": f"hearth-r{secrets.token_hex(3)}",
        "HEARTH_DATA_DIR": str(data),
        "HEARTH_API_LISTEN": f"127.0.0.1:{free_port()}",
        "HEARTH_API_KEYS": f"ramp-{secrets.token_hex(8)}",
        "HEARTH_DRIVER": "netns",
        "HEARTH_RATE_LIMIT": "0",  # one client (this bench) polls every session: no per-client rate limit
        "HEARTH_SIGNIN_MODE": "direct",
        "HEARTH_FABRIC_OPEN_PORTS": str(IDP_PORT),
        "HEARTH_EXAMPLE_ISSUER": f"http://192.168.100.1:{IDP_PORT}",
        "OAUTH_FLOW_TIMEOUT": str(SIGNIN_TIMEOUT),
        "HEARTH_SESSION_TTL": str(SIGNIN_TIMEOUT),
        "HEARTH_IDLE_TIMEOUT": str(SIGNIN_TIMEOUT),
        **host_image_env(),
        **dict(kv.split("=", 1) for kv in args.env),
    }


def main() -> int:
    global PROC
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--levels", default="1,250,500,1000", help="comma-separated session counts")
    ap.add_argument("--probes", type=int, default=5, help="sessions measured one at a time at each level")
    ap.add_argument("--fill", type=int, default=4, help="creates in flight while filling up to a level")
    ap.add_argument("--idle", type=float, default=60, help="seconds of idle measured at the top level (0: none)")
    ap.add_argument("--flow", default="paste_code", choices=("paste_code", "device_code"))
    ap.add_argument("--min-available", type=float, default=3072, help="MiB of MemAvailable the ramp leaves")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after a level's last URL before memory")
    ap.add_argument("--profile-drain", default="", help="write py-spy's collapsed stacks of the drain here")
    spy = Path(sys.executable).parent / "py-spy"  # pinned in the dev extras
    ap.add_argument("--py-spy", default=str(spy), help="the py-spy binary for --profile-drain")
    ap.add_argument("--phases", action="store_true", help="wall time of each drain step (bench/phases.py)")
    ap.add_argument("--env", action="append", default=[], help="extra VAR=value for the controller")
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.flow, args.phases))
        return 0
    args.levels = sorted({int(x) for x in args.levels.split(",")})
    env = settings_env(args)
    from hearth.config import load_settings
    from hearth.serving.local import userspace

    settings = load_settings(env, env_file=None)
    env["HEARTH_EXAMPLE_ISSUER"] = f"http://{settings.bridge_ip}:{IDP_PORT}"  # where --serve starts the IdP
    print(userspace(settings))
    print(
        f"network {settings.internal_network} ({settings.pool_size} slots), flow {args.flow}, levels {args.levels}, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, MemAvailable {mem_available_mib():,.0f} MiB"
    )
    cmd = [sys.executable, "-m", "bench.direct_ramp", "--serve", "--flow", args.flow, *(["--phases"] * args.phases)]
    PROC = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        first = PROC.stdout.readline() if PROC.stdout else ""
        if not first.strip():
            raise SystemExit("the controller did not start (see its log above)")
        child = json.loads(first)["pid"]
        headers = {"Authorization": f"Bearer {env['HEARTH_API_KEYS']}"}
        host_port = env["HEARTH_API_LISTEN"]
        return asyncio.run(ramp(args, f"http://{host_port}", headers, child, env))
    finally:
        if PROC.poll() is None:
            PROC.send_signal(signal.SIGTERM)
            try:
                PROC.wait(300)
            except subprocess.TimeoutExpired:
                PROC.kill()
        import shutil

        shutil.rmtree(env["HEARTH_DATA_DIR"], ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
