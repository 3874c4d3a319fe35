"""Placements per second across 3 nodes: N concurrent `POST /api/auth/start` through 2 edges (placement + the
chosen node's admission: limits, lease and insert under its admission lock), then how the sessions spread.
Sessions are created without waiting for their boot; all are cancelled afterwards.

    sudo .venv/bin/python -m bench.placement -n 60 --concurrency 12
    sudo .venv/bin/python -m bench.placement -n 600 --concurrency 12 --store-only

`--store-only`: the same decision without processes — 3 registered nodes, `place` + that node's `admit` (limits,
lease, insert under its admission lock) from threads against the same PostgreSQL; nothing boots.

Runs a lab (hearth.cluster.lab: 3 nodes, 2 edges, one throwaway PostgreSQL); removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import httpx
from sqlalchemy import select

from bench.cluster_lab import database, lab
from hearth.store.models import SessionRow


def store_only(n: int, concurrency: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from hearth.cluster import nodes
    from hearth.cluster.placement import place
    from hearth.config import load_settings
    from hearth.fabric.ipam import Ipam
    from hearth.session import admission
    from hearth.store.db import Database

    print("userspace: none (--store-only boots no sandbox)")
    with database() as url:
        db = Database(url, workers=concurrency)
        env = {"HEARTH_DATABASE_URL": url, "MAX_BROWSER_SESSIONS": str(n + 10), "MAX_SESSIONS_PER_USER": str(n + 10)}
        env |= {"IP_POOL_END": "192.168.103.254", "INTERNAL_NETWORK": "192.168.100.0/22"}
        settings = {f"h{i}": load_settings({**env, "HEARTH_NODE_ID": f"h{i}"}, env_file=None) for i in range(3)}
        for node_id, s in settings.items():
            nodes.heartbeat(db, nodes.Registration(node_id, f"http://{node_id}", n, s.pool_size, ("netns",), "bench"))

        def one(i: int) -> str:
            node = db.call(lambda x: place(x, f"user{i % 50}"))
            s = settings[node.id]
            admission.admit(db, Ipam(s, db), s, f"s{i:06d}", f"user{i % 50}", None, "remote_browser", "netns")
            return node.id

        t0 = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            placed = Counter(pool.map(one, range(n)))
        elapsed = time.monotonic() - t0
        db.dispose()
        print(f"store only: {n} placements + admissions, {concurrency} threads, 3 nodes: {elapsed:.2f}s")
        print(f"→ {n / elapsed:.0f} placements/s; spread {dict(sorted(placed.items()))}")


async def main(n: int, concurrency: int) -> None:
    env = {"MAX_BROWSER_SESSIONS": str(n + 10), "MAX_SESSIONS_PER_USER": str(n + 10), "HEARTH_READY_TIMEOUT": "120"}
    with database() as url:
        async with lab(url, nodes=3, edges=2, env=env) as lb:
            headers = {"Authorization": f"Bearer {lb.api_key}"}
            clients = [httpx.AsyncClient(base_url=e.url, headers=headers, timeout=120) for e in lb.edges]
            gate = asyncio.Semaphore(concurrency)
            codes: Counter[int] = Counter()
            latencies: list[float] = []

            async def one(i: int) -> None:
                async with gate:
                    t0 = time.monotonic()
                    r = await clients[i % len(clients)].post("/api/auth/start", json={"user_id": "bench"})
                    latencies.append(time.monotonic() - t0)
                    codes[r.status_code] += 1

            t0 = time.monotonic()
            await asyncio.gather(*(one(i) for i in range(n)))
            elapsed = time.monotonic() - t0
            db = lb.db()
            rows = db.call(lambda s: [(r.id, r.node_id) for r in s.scalars(select(SessionRow))])
            db.dispose()
            spread = Counter(node for _, node in rows)
            for sid, _ in rows:
                await clients[0].post(f"/api/auth/session/{sid}/cancel")
            for c in clients:
                await c.aclose()
            latencies.sort()
            print(
                f"{n} starts, concurrency {concurrency}, 3 nodes, 2 edges: {elapsed:.2f}s → {n / elapsed:.1f} placements/s"
            )
            print(f"answers {dict(codes)}; per-start median {latencies[len(latencies) // 2] * 1000:.0f} ms")
            print(f"spread {dict(sorted(spread.items()))}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=60)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--store-only", action="store_true", help="placement + admission in the store, no processes")
    args = ap.parse_args()
    if args.store_only:
        store_only(args.n, args.concurrency)
    else:
        asyncio.run(main(args.n, args.concurrency))
