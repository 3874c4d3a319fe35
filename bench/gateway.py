"""Gateway overhead against websockify, in one run, on the same target.

A real controller (in this process, on uvloop like `hearth serve`: its CPU is the gateway's) creates a real session; the sandbox's VNC server is then
replaced by an RFB echo server (a child process, listening where Xvnc listened, in the sandbox's namespace): after
the RFB handshake it echoes 64-byte messages and, on request, sends a bulk of bytes. The same client (a child
process: its CPU is counted for neither) then runs
  - through the gateway's real route: token check, session lookup, fabric dial, both RFB handshakes, the relay;
  - through websockify 0.13 (`--run-once`, inside the fabric namespace, pointed at the same address and port).
Printed per path: 64-byte echo round trip p50/p90 (N rounds), bulk throughput (MB/s), relay CPU per relayed MB
(user+system of the relaying process over the whole connection), and the gateway/websockify ratios.

    sudo .venv/bin/python bench/gateway.py [--rounds 3000] [--mb 128] [--repeat 3]

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

from bench.procstat import cpu_seconds_of

HERE = Path(__file__).resolve()
BULK_CHUNK = 64 * 1024
MSG = 64
FBUR = struct.pack(">BBHHHH", 3, 1, 0, 0, 64, 64)
# The gateway forwards only well-formed RFB (hearth/gateway/viewonly.py): an echo message is 8 KeyEvents, a bulk
# request a ClientCutText whose text is "BULK" and the size.
ECHO = b"".join(struct.pack(">BBxxI", 4, i & 1, 0x61) for i in range(MSG // 8))


def bulk_request(size: int) -> bytes:
    return struct.pack(">BxxxI", 6, MSG - 8) + b"BULK" + struct.pack(">Q", size) + bytes(MSG - 20)


# ---- the RFB echo server (child process, socket inherited) -----------------------------------------------------
async def echo_server(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(b"RFB 003.008\n")
            await r.readexactly(12)
            w.write(b"\x01\x01")  # one security type: None
            await r.readexactly(1)
            w.write(b"\x00\x00\x00\x00")
            await r.readexactly(1)  # ClientInit
            name = b"echo"
            pixel_format = bytes([32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
            w.write(struct.pack(">HH", 64, 64) + pixel_format + struct.pack(">I", len(name)) + name)
            w.write(await r.readexactly(len(FBUR)))
            blob = bytes(BULK_CHUNK)
            while True:
                msg = await r.readexactly(MSG)
                if msg[8:12] == b"BULK":
                    (left,) = struct.unpack(">Q", msg[12:20])
                    while left > 0:
                        w.write(blob[: min(left, BULK_CHUNK)])
                        left -= BULK_CHUNK
                        await w.drain()
                else:
                    w.write(msg)
                await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(serve, sock=sock)
    async with server:
        await server.serve_forever()


# ---- the client (child process, connected socket inherited) ----------------------------------------------------
async def client(fd: int, url: str, rounds: int, mb: int) -> None:
    from websockets.asyncio.client import connect

    sock = socket.socket(fileno=fd)
    buf = bytearray()
    async with connect(url, sock=sock, subprotocols=["binary"], max_size=None) as ws:  # type: ignore[list-item]

        async def read(n: int) -> bytes:
            while len(buf) < n:
                got = await ws.recv()
                buf.extend(got if isinstance(got, bytes) else got.encode())
            out = bytes(buf[:n])
            del buf[:n]
            return out

        await read(12)
        await ws.send(b"RFB 003.008\n")
        count = (await read(1))[0]
        await read(count)
        await ws.send(b"\x01")
        await read(4)
        await ws.send(b"\x01")
        head = await read(24)
        await read(struct.unpack(">I", head[20:24])[0])
        await ws.send(FBUR)
        await read(len(FBUR))
        payload = ECHO
        rtts = []
        for _ in range(rounds):
            t = time.perf_counter()
            await ws.send(payload)
            await read(MSG)
            rtts.append(time.perf_counter() - t)
        size = mb * 1024 * 1024
        t = time.perf_counter()
        await ws.send(bulk_request(size))
        got = len(buf)
        buf.clear()
        while got < size:
            data = await ws.recv()
            got += len(data)
        bulk_s = time.perf_counter() - t
    rtts.sort()
    print(json.dumps({"p50": rtts[len(rtts) // 2], "p90": rtts[int(len(rtts) * 0.9)], "mbps": mb / bulk_s}))


# ---- the driver ---------------------------------------------------------------------------------------------------
def spawn(argv: list[str], fds: tuple[int, ...] = (), quiet: bool = False) -> subprocess.Popen[bytes]:
    out = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(argv, pass_fds=fds, stdout=out, stderr=out)


def cpu_of_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_of_pid(pid: int) -> float:
    return cpu_seconds_of((pid,))


async def run_client(sock: socket.socket, url: str, rounds: int, mb: int) -> dict[str, float]:
    fd = sock.fileno()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE), "client", str(fd), url, str(rounds), str(mb),
        pass_fds=(fd,), stdout=subprocess.PIPE,
    )  # fmt: skip
    sock.close()  # the child holds it now
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench client failed ({proc.returncode})")
    result: dict[str, float] = json.loads(out)
    return result


async def main(rounds: int, mb: int, repeat: int) -> None:
    import httpx

    from hearth.fabric.dial import call_in_netns, socket_in_netns
    from hearth.sandbox.procs import pids_in_netns
    from hearth.serving.local import local_controller, scratch_settings, userspace

    env = {"HEARTH_CHROMIUM": "false", "HEARTH_RATE_LIMIT": "0", "HEARTH_TOKEN_TTL": "3600"}
    with scratch_settings(env, "hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        async with (
            local_controller(settings) as lc,
            httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=60) as http,
        ):
            started = (await http.post("/api/auth/start", json={"user_id": "bench"})).json()
            sid = started["session_id"]
            view = await lc.ctl.service.wait_until(sid, 60)
            assert view.status.value == "ready" and view.slot is not None, view
            slot = lc.ctl.service.ipam.slot(view.slot)
            ip, port = str(slot.ip), settings.rfb_port
            # Replace the desktop's VNC server by the echo server (the agent is paused: it restarts nothing).
            procs = {pid: Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids_in_netns(slot.netns)}
            stopped = [pid for pid, comm in procs.items() if comm.startswith("python")]
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            for pid, comm in procs.items():
                if comm in ("Xvnc", "x11vnc"):
                    os.kill(pid, signal.SIGKILL)
            listener = socket_in_netns(slot.netns)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            for _ in range(100):
                try:
                    listener.bind((ip, port))
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            listener.listen(16)
            echo = spawn([sys.executable, str(HERE), "echo-server", str(listener.fileno())], (listener.fileno(),))
            listener.close()
            ws_port = 16080
            results: dict[str, list[dict[str, float]]] = {"gateway": [], "websockify": []}
            try:
                for _ in range(repeat):
                    # through the gateway (its CPU: this process, which runs nothing else meanwhile)
                    token = (await http.post(f"/api/auth/session/{sid}/token", json={"scope": "control"})).json()
                    url = f"{lc.ws_base}/api/auth/session/{sid}/novnc/websock?token={token['viewer_token']}"
                    host, api_port = settings.listen_host_port
                    sock = socket.create_connection((host, api_port))
                    before = cpu_of_self()
                    res = await run_client(sock, url, rounds, mb)
                    res["cpu_per_mb"] = (cpu_of_self() - before) / mb
                    results["gateway"].append(res)
                    # through websockify, in the fabric namespace, to the same ip:port
                    websockify = str(Path(sys.executable).parent / "websockify")
                    ns = ["ip", "netns", "exec", settings.fabric_netns]
                    ws = spawn([*ns, websockify, "--run-once", f"127.0.0.1:{ws_port}", f"{ip}:{port}"], quiet=True)
                    conn: socket.socket | None = None
                    for _ in range(200):
                        s = socket_in_netns(settings.fabric_netns)
                        try:
                            await asyncio.to_thread(call_in_netns, None, lambda s=s: s.connect(("127.0.0.1", ws_port)))
                            conn = s
                            break
                        except OSError:
                            s.close()
                            await asyncio.sleep(0.05)
                    assert conn is not None, "websockify did not listen"
                    before = cpu_of_pid(ws.pid)  # after its start-up: only the connection's work is counted
                    res = await run_client(conn, f"ws://127.0.0.1:{ws_port}/", rounds, mb)
                    _, status, ru = await asyncio.to_thread(os.wait4, ws.pid, 0)
                    ws.returncode = os.waitstatus_to_exitcode(status)
                    res["cpu_per_mb"] = (ru.ru_utime + ru.ru_stime - before) / mb
                    results["websockify"].append(res)
            finally:
                echo.kill()
                echo.wait(5)
                for pid in stopped:
                    os.kill(pid, signal.SIGCONT)
                await http.post(f"/api/auth/session/{sid}/cancel")

    def med(path: str, key: str) -> float:
        return statistics.median(r[key] for r in results[path])

    print(f"{rounds} echo rounds of {MSG} bytes, {mb} MiB bulk, {repeat} runs each (medians)")
    print(f"{'':12} {'echo p50':>10} {'echo p90':>10} {'MB/s':>9} {'CPU s/MB':>10}")
    for path in ("gateway", "websockify"):
        print(
            f"{path:12} {med(path, 'p50') * 1e6:8.0f}µs {med(path, 'p90') * 1e6:8.0f}µs "
            f"{med(path, 'mbps'):9.1f} {med(path, 'cpu_per_mb') * 1e3:8.2f}ms"
        )
    print(
        f"{'ratio':12} {med('gateway', 'p50') / med('websockify', 'p50'):9.2f}× "
        f"{med('gateway', 'p90') / med('websockify', 'p90'):9.2f}× "
        f"{med('gateway', 'mbps') / med('websockify', 'mbps'):8.2f}× "
        f"{med('gateway', 'cpu_per_mb') / med('websockify', 'cpu_per_mb'):9.2f}×"
    )
    print("targets: echo p50 ≤ 1.0×, throughput ≥ 1.0×, CPU per MB ≤ 1.0×")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "echo-server":
        asyncio.run(echo_server(int(sys.argv[2])))
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        asyncio.run(client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
    else:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--rounds", type=int, default=3000, help="64-byte echo round trips per run")
        ap.add_argument("--mb", type=int, default=128, help="MiB of bulk data per run")
        ap.add_argument("--repeat", type=int, default=3, help="runs per path (medians are printed)")
        a = ap.parse_args()
        import uvloop  # `hearth serve` runs on uvloop (uvicorn's default when installed): so does this controller

        uvloop.run(main(a.rounds, a.mb, a.repeat))
