"""Burst: N concurrent creates against a pool of P addresses (MAX_BROWSER_SESSIONS above N, rate limit off), then
every admitted session is followed until it is ready or failed. Prints how the creates were answered, how the
admitted sessions ended, and the count of *wrong-reason* failures (goal 0): a refusal that is not "pool exhausted"
(or a limit), or an admitted session that failed at all — e.g. an agent that "did not listen" although it did,
because readiness dials starved behind database work.

    sudo .venv/bin/python bench/burst.py -n 200 --pool 60 [--chromium]

Runs its own controller with its own fabric namespace (`hearth-b<hex>`) on a loopback port; removes everything.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter

import httpx

from hearth.serving.local import local_controller, scratch_settings, userspace


async def follow(http: httpx.AsyncClient, sid: str, timeout: float) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        body = (await http.get(f"/api/auth/session/{sid}")).json()
        if body["status"] not in ("queued", "starting") or time.monotonic() > deadline:
            return str(body["status"]), str(body.get("reason") or "")
        await asyncio.sleep(0.25)


async def main(n: int, pool: int, chromium: bool) -> int:
    env = {
        "IP_POOL_START": "192.168.100.2",
        "IP_POOL_END": f"192.168.100.{pool + 1}",
        "MAX_BROWSER_SESSIONS": str(n + 1),
        "MAX_SESSIONS_PER_USER": "1",
        "HEARTH_RATE_LIMIT": "0",
        "HEARTH_CHROMIUM": "true" if chromium else "false",
        "HEARTH_READY_TIMEOUT": "120",
    }
    with scratch_settings(env, prefix="hearth-b") as settings:
        print(userspace(settings))  # the image's userspace (HEARTH_IMAGE_DIR) or the host's
        async with local_controller(settings) as lc:
            limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
            async with httpx.AsyncClient(base_url=lc.base_url, headers=lc.headers, timeout=180, limits=limits) as http:
                t0 = time.monotonic()
                answers = await asyncio.gather(
                    *(http.post("/api/auth/start", json={"user_id": f"burst-{i}"}) for i in range(n))
                )
                admit_s = time.monotonic() - t0
                codes = Counter(r.status_code for r in answers)
                wrong: list[str] = []
                for r in answers:
                    if r.status_code != 201 and "IP pool exhausted" not in r.text:
                        wrong.append(f"create {r.status_code}: {r.text[:160]}")
                admitted = [r.json()["session_id"] for r in answers if r.status_code == 201]
                ends = await asyncio.gather(*(follow(http, sid, 300) for sid in admitted))
                ready_s = time.monotonic() - t0
                outcome = Counter(status for status, _ in ends)
                wrong += [f"session {status}: {reason[:160]}" for status, reason in ends if status != "ready"]
                for sid in admitted:
                    await http.post(f"/api/auth/session/{sid}/cancel")
    print(f"creates: {n} concurrent, pool {pool}, chromium {'on' if chromium else 'off'}")
    print(f"answers: {dict(sorted(codes.items()))} in {admit_s:.2f}s")
    print(f"admitted sessions: {dict(outcome)}; all settled after {ready_s:.1f}s")
    print(f"wrong-reason failures: {len(wrong)}")
    for w in wrong[:20]:
        print("  ", w)
    return len(wrong)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--pool", type=int, default=60)
    ap.add_argument("--chromium", action="store_true")
    a = ap.parse_args()
    raise SystemExit(1 if asyncio.run(main(a.n, a.pool, a.chromium)) else 0)
