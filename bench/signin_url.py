"""Create → sign-in URL shown to the person, per provider and flow, at the agent level: from `POST /v1/login` (the
agent's SignIn route) until the URL is captured and — for direct flows — the person's prompt (device code / code
prompt) is pushed. Real pinned CLIs (clis/package-lock.json) and the example CLI, each in an offline network
namespace of its own (`hearth-b<hex>`), N runs each; prints median / max seconds.

    sudo .venv/bin/python bench/signin_url.py -n 5 [--provider codex] [--flow loopback]

The example provider's IdP, and the real providers' network stand-in (hearth/standins/standin.py), run inside the
namespace (device flows ask the provider before they show anything).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from hearth.fabric.dial import socket_in_netns
from hearth.guest import clis
from hearth.providers.model import FlowName
from hearth.providers.registry import load
from hearth.standins.conformance import run_flow
from hearth_example.idp import IdpServer, IdpState

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def example_idp(netns: str) -> Iterator[dict[str, str]]:
    sock = socket_in_netns(netns)
    sock.bind(("127.0.0.1", 0))
    server = IdpServer(sock, IdpState())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        issuer = f"http://127.0.0.1:{server.server_address[1]}"
        yield {"HEARTH_EXAMPLE_ISSUER": issuer, "PYTHONPATH": str(REPO)}
    finally:
        server.shutdown()
        server.server_close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=3, help="runs per provider and flow")
    ap.add_argument("--provider", action="append", default=[], help="only these providers")
    ap.add_argument("--flow", action="append", default=[], help="only these flows")
    args = ap.parse_args()
    where = clis.installed()
    print("userspace: this host's (the agent's sign-in route and the CLIs run in a bare network namespace, no image)")
    print(f"CLIs: {where or 'not installed (run bash scripts/setup.sh): only example'}")
    print(f"{'provider':<12} {'flow':<12} {'median s':>9} {'max s':>7}  runs  note")
    for name, p in sorted(load().items()):
        if args.provider and name not in args.provider:
            continue
        for flow in p.flows:
            if args.flow and flow.value not in args.flow:
                continue
            times: list[float] = []
            notes: set[str] = set()
            for _ in range(args.n):
                res = run_flow(
                    p,
                    FlowName(flow),
                    where,
                    netns_prefix="hearth-b",
                    prepare=example_idp if name == "example" else None,
                    standin=p.cli is not None,  # codex's device flow asks the provider before it shows anything
                )
                if res.seconds_to_url is not None and res.ok:
                    times.append(res.seconds_to_url)
                else:
                    notes.add(res.failed_step.split(":", 1)[0] + " failed")
            if times:
                med, top = statistics.median(times), max(times)
                print(f"{name:<12} {flow.value:<12} {med:>9.3f} {top:>7.3f}  {len(times):>4}  {', '.join(notes)}")
            else:
                print(f"{name:<12} {flow.value:<12} {'-':>9} {'-':>7}  {0:>4}  {', '.join(notes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
