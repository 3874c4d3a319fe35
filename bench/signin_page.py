"""Create → the provider's sign-in page drawn in the viewer, per provider, through the internet stand-in — against
Chromium on the host loading the same page, in the same run (ratio).

Sandbox side (hearth/standins/e2e.py, the product's main path): `POST /api/auth/start` (remote_browser); the
sandbox's Chromium resolves the provider's name through the fabric's DNS forwarder, loads its authorize page over
the egress (TLS verified against HEARTH_EXTRA_CA_CERTS); timed until the page's "Authorize" button is drawn on the
viewer's noVNC canvas (what the person sees). Then the person clicks it and the sign-in completes (not timed here).

Host side, the same authorize URL (as the sandbox's Chromium requested it) in Debian's Chromium outside any sandbox
(the person's machine on the stand-in's internet, resolving through the stand-in's DNS directly):
- warm: a new tab of a running Chromium, `goto` until loaded and painted (two animation frames);
- cold: Chromium launched, then the same (launch + load + paint).

    sudo .venv/bin/python bench/signin_page.py -n 3 [--provider codex]

Everything (stand-in namespaces `hearth-bpi<hex>-…`, the controller's fabric `hearth-bp<hex>`, data dirs) is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field

from hearth.guest import clis
from hearth.providers.model import SigninMode
from hearth.providers.registry import load
from hearth.serving.local import userspace
from hearth.standins.e2e import ARGS, Run, e2e_run, sign_in

PAINTED = "() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"


@dataclass
class Figures:
    sandbox: list[float] = field(default_factory=list)  # create → page drawn in the viewer
    host_warm: list[float] = field(default_factory=list)
    host_cold: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def authorize_url(seen: list[tuple[str, str, str]]) -> str | None:
    """The authorize page the sandbox's Chromium requested: (user agent, host, path) of each request, in order."""
    for agent, host, path in seen:
        if "Chrome" in agent and "response_type=code" in path:
            return f"https://{host}{path}"
    return None


async def host_load(run: Run, url: str, cold: bool) -> float:
    """Seconds for Chromium on the host to show `url` (cold: including its launch)."""
    from playwright.async_api import async_playwright

    pin = f"--ignore-certificate-errors-spki-list={run.inet.spki_pin()}"
    exe = run.inet.person_browser_argv()[0]
    if not cold:
        ctx = await run.person.new_context(viewport={"width": 1280, "height": 800})
        try:
            page = await ctx.new_page()
            t0 = time.monotonic()
            await page.goto(url, wait_until="load")
            await page.evaluate(PAINTED)
            return time.monotonic() - t0
        finally:
            await ctx.close()
    async with async_playwright() as pw:
        t0 = time.monotonic()
        browser = await pw.chromium.launch(executable_path=exe, args=[*ARGS, pin])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(url, wait_until="load")
            await page.evaluate(PAINTED)
            return time.monotonic() - t0
        finally:
            await browser.close()


async def measure(run: Run, provider: str, n: int) -> Figures:
    fig = Figures()
    for i in range(n):
        out = await sign_in(run, provider, SigninMode.REMOTE_BROWSER, f"bench-{provider.replace('_', '-')}-{i}")
        drawn = out.seconds.get("page_drawn")
        url = authorize_url([(s.user_agent, s.host, s.path) for s in out.seen])
        if drawn is None or url is None:
            fig.failures.append(out.failed or "the page was not drawn")
            continue
        fig.sandbox.append(drawn)
        fig.host_warm.append(await host_load(run, url, cold=False))
        fig.host_cold.append(await host_load(run, url, cold=True))
        note = "" if out.ok else f"  (then: {out.failed})"
        print(
            f"  {provider:<12} run {i + 1}: sandbox {drawn:6.3f} s   host warm {fig.host_warm[-1]:6.3f} s   "
            f"host cold {fig.host_cold[-1]:6.3f} s{note}",
            flush=True,
        )
    return fig


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def main(n: int, only: list[str]) -> int:
    providers = [p.name for p in load().values() if SigninMode.REMOTE_BROWSER in p.modes()]
    providers = [p for p in providers if not only or p in only]
    if clis.installed() is None:
        print("the pinned CLIs are not installed (bash scripts/setup.sh): example only")
        providers = [p for p in providers if p == "example"]
    results: dict[str, Figures] = {}
    async with e2e_run(prefix="hearth-bp") as run:
        print(userspace(run.ctl.settings))
        for provider in providers:
            results[provider] = await measure(run, provider, n)
    print(
        f"\n{'provider':<12} {'sandbox s':>10} {'host warm s':>12} {'ratio':>7} {'host cold s':>12} {'ratio':>7}  runs"
    )
    for provider, f in results.items():
        s, w, c = med(f.sandbox), med(f.host_warm), med(f.host_cold)
        print(
            f"{provider:<12} {s:>10.3f} {w:>12.3f} {s / w:>7.1f} {c:>12.3f} {s / c:>7.1f}  {len(f.sandbox):>4}"
            + (f"  failed: {'; '.join(f.failures)}" if f.failures else "")
        )
    print("(medians; sandbox: create → the provider page drawn in the viewer; host: the same URL in Chromium)")
    return 0 if all(f.sandbox for f in results.values()) else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3, help="runs per provider")
    ap.add_argument("--provider", action="append", default=[], help="only these providers")
    args = ap.parse_args()
    sys.exit(asyncio.run(main(args.n, args.provider)))
