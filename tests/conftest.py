"""Shared fixtures. Root tests build everything inside namespaces they create (`hearth-t<hex>`) and delete it."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from hearth.config import Settings, load_settings
from hearth.serving.local import LocalController, free_port, local_controller
from tests import nsnames
from tests.image.golden import TESTS_BASE
from tests.pgcluster import fresh_database
from tests.restartkit import remove_everything
from tests.signinkit import idp_env

# What runs in scripts/test.sh's PostgreSQL pass too (`-m store`; the rest runs once, on SQLite): the folders whose
# subject is the store, every test module that queries the store itself (imports hearth.store or SQLAlchemy, or calls
# `db.run`/`db.call`), every test that takes `database_url` itself, and whatever is marked `store`.
STORE_DIRS = frozenset({"store", "chaos", "cluster", "vault", "webhooks", "reconcile", "proxy"})
STORE_USE = re.compile(r"from hearth\.store|import hearth\.store|sqlalchemy|\.db\.run\(|\.db\.call\(")
TESTS_DIR = Path(__file__).parent


# Under pytest-xdist (scripts/test.sh: --dist loadgroup) the tests of a module with a fixture wider than one test (a
# controller, a fabric or an image shared by the module) stay on one worker, so that fixture is made once.
SHARED_FIXTURE = re.compile(r"scope=\"(module|class|package|session)\"|loop_scope=\"module\"")


@functools.cache
def _source(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def touches_store(item: pytest.Item) -> bool:
    path = Path(str(item.path))
    try:
        folder = path.relative_to(TESTS_DIR).parts[0]
    except ValueError:
        folder = ""
    direct = getattr(getattr(item, "_fixtureinfo", None), "argnames", ())
    return (
        "store" in item.keywords
        or folder in STORE_DIRS
        or "database_url" in direct
        or bool(STORE_USE.search(_source(path)))
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if touches_store(item):
            item.add_marker(pytest.mark.store)
        path = Path(str(item.path))
        if SHARED_FIXTURE.search(_source(path)) or SHARED_FIXTURE.search(_source(path.parent / "conftest.py")):
            item.add_marker(pytest.mark.xdist_group(str(path.relative_to(TESTS_DIR.parent))))
    if os.environ.get("TEST_DATABASE_URL"):
        once = pytest.mark.skip(reason="sqlite_pass: ran in the SQLite pass (its store use is covered on PostgreSQL)")
        for item in items:
            if "sqlite_pass" in item.keywords:
                item.add_marker(once)
    if os.geteuid() == 0 and shutil.which("bwrap"):
        return
    skip = pytest.mark.skip(reason="needs root, network namespaces and the sandbox packages (scripts/setup.sh)")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_leaked_namespaces(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every root test deletes what it creates: a namespace this test named (tests/nsnames.py) — a fabric or one of
    its sandboxes — still there after the test's teardown fails it. Nothing is deleted here."""
    nsnames.take()
    yield
    if "netns" not in request.keywords:
        return
    made = nsnames.take()
    try:
        present = os.listdir("/run/netns")
    except FileNotFoundError:
        present = []
    leaked = sorted(n for n in present for p in made if n == p or n.startswith(p + "-"))
    assert not leaked, f"this test left network namespaces behind: {leaked}"


def tests_base() -> Path:
    """Where the tests' data dirs live: TESTS_BASE as root (0711: the sandbox users traverse it), a directory of the
    user's own otherwise (the unprivileged tests: loopback driver)."""
    if os.geteuid() == 0:
        return TESTS_BASE
    return Path(tempfile.gettempdir()) / f"hearth-tests-{os.geteuid()}"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A data dir the unprivileged sandbox user can traverse (pytest's tmp dirs are 0700), removed afterwards."""
    base = tests_base()
    base.mkdir(mode=0o711, exist_ok=True)
    path = base / secrets.token_hex(4)
    path.mkdir(mode=0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def database_url() -> Iterator[str]:
    """ "" (SQLite in the data dir), or — when TEST_DATABASE_URL names a PostgreSQL server (scripts/test.sh's
    second pass) — a fresh database of this test's own on it, dropped afterwards."""
    admin = os.environ.get("TEST_DATABASE_URL", "")
    if not admin:
        yield ""
        return
    with fresh_database(admin) as url:
        yield url


@pytest.fixture
def make_settings(data_dir: Path, database_url: str) -> Callable[..., Settings]:
    """Settings for an isolated hearth instance: unique fabric namespace, own data dir, own API port."""

    def make(**env: str) -> Settings:
        base = {
            "HEARTH_FABRIC_NETNS": nsnames.new(),
            "HEARTH_DATA_DIR": str(data_dir),
            "HEARTH_API_LISTEN": f"127.0.0.1:{free_port()}",
            "HEARTH_API_KEYS": "test-key",
            "HEARTH_DRIVER": "netns",
            "HEARTH_READY_TIMEOUT": "60",
            # no uplink unless a test asks (then through HEARTH_UPLINK_NETNS, tests/uplinkns.py): never in the
            # machine's root namespace
            "HEARTH_EGRESS": "false",
        }
        if database_url:
            base["HEARTH_DATABASE_URL"] = database_url
        base.update(env)
        return load_settings(base, env_file=None)

    return make


def loopback_env() -> dict[str, str]:
    """Settings of the loopback driver (hearth/sandbox/loopback.py: the real agent as a plain process, no root): a
    random 127.a.b.0/22 of its own per test, so tests running at once (pytest-xdist) never share an address."""
    a, b = 1 + secrets.randbelow(254), 4 * secrets.randbelow(64)
    return {
        "HEARTH_DRIVER": "loopback",
        "HEARTH_ALLOW_UNISOLATED": "1",
        "INTERNAL_NETWORK": f"127.{a}.{b}.0/22",
        "HEARTH_SIGNIN_MODE": "direct",  # no desktops on loopback
    }


def loopback_idp_env(port: int) -> dict[str, str]:
    """`loopback_env()` plus the example IdP's settings (tests/signinkit.py) on that network's BRIDGE_IP:`port`."""
    env = loopback_env()
    return env | idp_env(port, str(IPv4Network(env["INTERNAL_NETWORK"]).network_address + 1))


@pytest.fixture
def loopback_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """`make_settings` for the loopback driver: what runs without root (session, pool, sign-in, reconciler logic)."""

    def make(**env: str) -> Settings:
        return make_settings(**(loopback_env() | env))

    return make


@pytest.fixture(params=[pytest.param("netns", marks=pytest.mark.netns), "loopback"])
def driver_settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """`make_settings` twice: on the netns driver (root) and on the loopback driver (no root; no desktops: its
    sessions are direct sign-ins). For logic that must hold whatever the driver."""

    def make(**env: str) -> Settings:
        return make_settings(**((loopback_env() if request.param == "loopback" else {}) | env))

    return make


@pytest.fixture
def restart_settings(make_settings: Callable[..., Settings]) -> Iterator[Settings]:
    """Settings for a controller run as its own process (tests/restartkit.py), its data dir made; afterwards what
    its sandboxes left is killed and removed."""
    settings = make_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    yield settings
    remove_everything(settings)


Running = LocalController


@contextlib.asynccontextmanager
async def running_controller(settings: Settings) -> AsyncIterator[Running]:
    """A real controller (uvicorn on loopback) with its fabric; everything is removed on exit."""
    async with local_controller(settings) as lc:
        yield lc
