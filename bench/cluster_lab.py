"""Shared by the cluster benchmarks: a throwaway PostgreSQL database (on TEST_DATABASE_URL's server, or a local
cluster started the way scripts/test.sh does) and a `hearth.cluster.lab.Lab` on it; everything is removed afterwards."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from hearth.cluster.lab import Lab
from hearth.config import load_settings
from hearth.serving.local import host_image_env, userspace
from hearth.store.pglocal import scratch_database


@contextlib.contextmanager
def database() -> Iterator[str]:
    with scratch_database(os.environ.get("TEST_DATABASE_URL", "")) as url:
        yield url


@contextlib.asynccontextmanager
async def lab(url: str, nodes: int, edges: int, env: dict[str, str] | None = None) -> AsyncIterator[Lab]:
    prefix = f"hearth-b{secrets.token_hex(3)}"
    # the nodes' sandboxes run this host's image (HEARTH_IMAGE_DIR, as `hearth serve`), unless `env` says otherwise
    lb = Lab(prefix, Path("/var/tmp") / prefix, url, nodes, edges, host_image_env() | (env or {}))
    image = {"HEARTH_IMAGE_DIR": lb.env["HEARTH_IMAGE_DIR"]} if lb.env.get("HEARTH_IMAGE_DIR") else {}
    print(f"lab nodes: {userspace(load_settings({'HEARTH_DRIVER': 'netns', **image}, env_file=None))}")
    try:
        await lb.open()
        yield lb
    finally:
        await lb.close()
        left = lb.leftovers()
        print(f"leaks after the lab: {len(left)} {left if left else ''}")
