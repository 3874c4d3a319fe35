"""The edge hop's cost: connect → first frame and full frames per second, through an edge vs straight to the node
holding the session, alternating in the same run, on the same session. Prints medians and the edge/direct ratios.

    sudo .venv/bin/python -m bench.edge -n 10 --seconds 3

Runs a lab (hearth.cluster.lab: 1 node + 1 edge in their own namespaces, one throwaway PostgreSQL); both paths go
through one loopback forwarder of this process, so they differ exactly by the edge.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from bench.cluster_lab import database, lab
from hearth.rfb.client import handshake, request_frame
from hearth.rfb.ws import WsByteStream, first_frame


async def frames_per_second(url: str, seconds: float) -> float:
    async with connect(url, subprotocols=[Subprotocol("binary")], max_size=None) as ws:
        stream = WsByteStream(ws, 30)
        init = await handshake(stream.read, stream.write)
        n, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds:
            await request_frame(stream.read, stream.write, init)  # a full, non-incremental raw frame each time
            n += 1
        return n / (time.monotonic() - t0)


async def main(n: int, seconds: float) -> None:
    with database() as url:
        async with lab(url, nodes=1, edges=1) as lb:
            edge, node = lb.edges[0], lb.nodes[0]
            headers = {"Authorization": f"Bearer {lb.api_key}"}
            async with httpx.AsyncClient(base_url=edge.url, headers=headers, timeout=60) as http:
                body = (await http.post("/api/auth/start", json={"user_id": "bench"})).json()
                sid, tok = body["session_id"], body["viewer_token"]
                while (await http.get(f"/api/auth/session/{sid}")).json()["status"] == "starting":
                    await asyncio.sleep(0.2)
            path = f"/api/auth/session/{sid}/novnc/websock?token={tok}"
            urls = {"edge": edge.ws + path, "direct": node.ws + path}
            first: dict[str, list[float]] = {"edge": [], "direct": []}
            fps: dict[str, list[float]] = {"edge": [], "direct": []}
            for i in range(n):
                for name in ("edge", "direct") if i % 2 == 0 else ("direct", "edge"):
                    t0 = time.monotonic()
                    await first_frame(urls[name], 60)
                    first[name].append(time.monotonic() - t0)
                    fps[name].append(await frames_per_second(urls[name], seconds))
            init = (await first_frame(urls["direct"], 60)).init
            for name in ("direct", "edge"):
                print(
                    f"{name:6s}  connect→first frame median {statistics.median(first[name]) * 1000:7.1f} ms"
                    f"  max {max(first[name]) * 1000:7.1f} ms   full frames/s median {statistics.median(fps[name]):6.1f}"
                )
            ff = statistics.median(first["edge"]) / statistics.median(first["direct"])
            fr = statistics.median(fps["edge"]) / statistics.median(fps["direct"])
            print(
                f"edge/direct: connect→first frame ×{ff:.2f}, frames/s ×{fr:.2f}  ({n} rounds, {init.width}x{init.height} raw)"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10, help="rounds (each measures both paths, alternating which first)")
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of full frames per frames/s measurement")
    args = ap.parse_args()
    asyncio.run(main(args.n, args.seconds))
