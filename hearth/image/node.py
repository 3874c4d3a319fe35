"""`hearth image oci`: the node's container image, built from Debian's archive (no base image is pulled).

Three gzip layers, each cached by the digest of its inputs under `<cache>` (default /var/cache/hearth/oci):

    1. os      debootstrap bookworm minbase + NODE_PACKAGES (Xvnc, Chromium, openbox, bubblewrap, nftables, …);
               key: suite, package list, build version. Its tree stays in `<cache>/base-<key>/rootfs` (layer 3
               is built by chrooting into it).
    2. clis    Node + the provider CLIs pinned in clis/package-lock.json, from this host's npm cache, at
               /var/cache/hearth/clis/<lock hash> (where the node looks by default); key: the lock hash.
    3. hearth  /opt/hearth/venv: hearth from this source tree (its noVNC build in hearth/static included) with
               every dependency pinned to the version this host's environment runs; key: the source and pins.

So a source change rebuilds only layer 3. The guest image is not in the image: the netns driver runs the image's own
/usr as the sandbox root (the desktop is in it); the VM drivers need `hearth image build`, which runs in the
container on first start (debootstrap and e2fsprogs are in), into the data volume.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth.guest import clis
from hearth.image import oci
from hearth.image.cache import locked as _locked
from hearth.image.spec import FORBIDDEN_PACKAGES, MIRROR, SECURITY_MIRROR, SUITE, content_hash, digest, tree_digests
from hearth.image.steps import BuildError, NullProgress, Progress
from hearth.image.steps import chroot as _chroot
from hearth.image.steps import counter as _counter
from hearth.image.steps import run as _run
from hearth.image.steps import trim as _trim
from hearth.image.steps import write as _write

BUILD_VERSION = 1
UNUSED_FOR = 24 * 3600.0  # cached layers and bases no build used for this long are dropped
DEFAULT_CACHE = Path("/var/cache/hearth/oci")
SOURCE = Path(__file__).resolve().parents[2]  # the checkout hearth runs from
PY_PACKAGES = ("hearth", "hearth_agent", "hearth_example")  # the test guests' packages copy hearth_example's files
VENV = "/opt/hearth/venv"
ENTRYPOINT = [f"{VENV}/bin/hearth"]
ENV = [f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8"]

# What a node runs: the sandbox desktop (netns driver: the image's /usr is the sandbox root), its tools, and what
# `hearth image build` needs to build the guest image on first start.
NODE_PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-venv",
    "tigervnc-standalone-server",  # Xvnc, the default VNC server
    "openbox",
    "chromium",
    "fonts-dejavu-core",
    "dbus-x11",  # dbus-session-bus for Chromium without systemd
    "bubblewrap",  # the netns driver
    "nftables",  # the fabric's rules
    "iproute2",
    "procps",
    "ca-certificates",
    "debootstrap",  # `hearth image build` (the guest image for the VM drivers)
    "e2fsprogs",
    "zstd",
    "xz-utils",
)
_NODE_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
_APT = "apt-get -o APT::Install-Recommends=false -o APT::Install-Suggests=false -o Acquire::Languages=none"


@dataclass(frozen=True)
class NodeSpec:
    """The inputs of the node image, one key per layer."""

    suite: str = SUITE
    extra_packages: tuple[str, ...] = ()
    source_files: dict[str, str] = field(default_factory=dict)  # path in the checkout → digest
    pins: tuple[str, ...] = ()  # name==version of every distribution of this host's environment
    clis: str = ""

    @property
    def packages(self) -> tuple[str, ...]:
        return (*NODE_PACKAGES, *(p for p in self.extra_packages if p not in NODE_PACKAGES))

    @property
    def os_key(self) -> str:
        return content_hash({"v": BUILD_VERSION, "suite": self.suite, "packages": sorted(self.packages)})

    @property
    def hearth_key(self) -> str:
        return content_hash(
            {
                "v": BUILD_VERSION,
                "os": self.os_key,
                "clis": self.clis,  # the lock files ride in this layer
                "files": dict(sorted(self.source_files.items())),
                "pins": self.pins,
            }
        )

    @property
    def hash(self) -> str:
        return content_hash({"os": self.os_key, "clis": self.clis, "hearth": self.hearth_key})


def current_spec(extra_packages: tuple[str, ...] = ()) -> NodeSpec:
    """The node image this checkout builds; BuildError when it is not a checkout set up by scripts/setup.sh."""
    if not (SOURCE / "pyproject.toml").is_file():
        raise BuildError(f"{SOURCE} is not a hearth source checkout", "run `hearth image oci` from a checkout")
    if not (SOURCE / "hearth/static/novnc/core/rfb.js").is_file():
        raise BuildError("the noVNC build is missing from hearth/static/novnc", "run `bash scripts/setup.sh`")
    files = {"pyproject.toml": digest((SOURCE / "pyproject.toml").read_bytes())}
    for pkg in PY_PACKAGES:
        files.update(tree_digests(SOURCE / pkg, pkg))
    return NodeSpec(extra_packages=extra_packages, source_files=files, pins=pins(), clis=clis.lock_hash())


def pins() -> tuple[str, ...]:
    """`name==version` of every distribution installed beside hearth (its dependencies as tested here)."""
    out = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in ("hearth", "pip", "setuptools", "wheel"):
            out.add(f"{name}=={dist.version}")
    return tuple(sorted(out, key=str.lower))


@dataclass(frozen=True)
class NodeImage:
    """A written archive: its manifest digest, layers, and what was built rather than taken from the cache."""

    path: Path
    spec_hash: str
    manifest: str
    layers: dict[str, oci.Blob]
    built: tuple[str, ...]
    seconds: float


def ensure(
    out: Path,
    spec: NodeSpec,
    *,
    cache: Path = DEFAULT_CACHE,
    ref: str = "",
    force: bool = False,
    progress: Progress | None = None,
    mirror: str = MIRROR,
    security_mirror: str = SECURITY_MIRROR,
) -> NodeImage:
    """Write the node image archive to `out`, building only the layers whose inputs changed."""
    progress = progress or NullProgress()
    t0 = time.monotonic()
    if os.geteuid() != 0:
        raise BuildError("building the node image needs root (debootstrap, chroot)", "run `sudo hearth image oci`")
    for tool in ("debootstrap", "unshare", "chroot", "mount"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found", "run scripts/setup.sh (debootstrap, util-linux)")
    blobs = cache / "blobs"
    built: list[str] = []
    with _locked(cache):
        base = cache / f"base-{spec.os_key}"
        if force or not (base / "ok.json").is_file():
            _build_base(cache, base, spec, progress, mirror, security_mirror)
            built.append("base")
        layers: dict[str, oci.Blob] = {}
        for kind, key in (("os", spec.os_key), ("clis", spec.clis), ("hearth", spec.hearth_key)):
            cached = None if force else _cached_layer(cache, kind, key)
            if cached is None:
                progress.stage(f"{kind} layer")
                cached = _make_layer(cache, base, kind, key)
                (cache / "layers").mkdir(exist_ok=True)
                (cache / "layers" / f"{kind}-{key}.json").write_text(json.dumps(cached.to_json()) + "\n")
                built.append(kind)
            layers[kind] = cached
        progress.stage("archive")
        labels = {
            "org.opencontainers.image.title": "hearth node",
            "org.opencontainers.image.version": spec.hash,
            "io.hearth.layers": json.dumps({"os": spec.os_key, "clis": spec.clis, "hearth": spec.hearth_key}),
        }
        order = [layers["os"], layers["clis"], layers["hearth"]]
        config = oci.image_config(order, ENTRYPOINT, ENV, labels)
        man = oci.write_archive(out, blobs, order, config, ref or default_ref())
        gc(
            cache,
            keep={f"{k}-{key}" for k, key in (("os", spec.os_key), ("clis", spec.clis), ("hearth", spec.hearth_key))},
        )
    progress.stage("done")
    return NodeImage(out, spec.hash, man.digest, layers, tuple(built), round(time.monotonic() - t0, 1))


def gc(cache: Path, keep: set[str], unused_for: float = UNUSED_FOR) -> list[str]:
    """Drop layers (record and blob), bases and the archive's json blobs that no build used for `unused_for`
    seconds (another checkout on this machine may still build them); `keep` (`<kind>-<key>`, `base-<key>`) is
    marked used now.
    Returns the names of the layers and bases removed. Call with the cache lock held."""
    now, removed = time.time(), []
    records = sorted((cache / "layers").glob("*.json"))
    used: set[str] = set()
    for entry in [*records, *sorted(cache.glob("base-*"))]:
        if entry.stem in keep:
            os.utime(entry)
            if entry.suffix == ".json":
                used.add(_record_digest(entry))
    for entry in [*records, *sorted(cache.glob("base-*"))]:
        if entry.stem in keep or now - entry.stat().st_mtime < unused_for:
            continue
        if entry.suffix == ".json":
            digest = _record_digest(entry)
            if digest and digest not in used:
                oci.blob_path(cache / "blobs", digest).unlink(missing_ok=True)
            entry.unlink()
        else:
            shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry.stem)
    for dead in sorted(cache.glob(".build-*")):  # a killed build's leftovers
        pid = dead.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(dead, ignore_errors=True)
    for small in sorted((cache / "blobs" / "sha256").glob("*")):  # configs and manifests: rewritten by each archive
        if small.stat().st_size < 1 << 16 and now - small.stat().st_mtime >= unused_for:
            small.unlink()
    return removed


def _record_digest(record: Path) -> str:
    try:
        return oci.Blob.from_json(json.loads(record.read_text())).digest
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _cached_layer(cache: Path, kind: str, key: str) -> oci.Blob | None:
    try:
        blob = oci.Blob.from_json(json.loads((cache / "layers" / f"{kind}-{key}.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    path = oci.blob_path(cache / "blobs", blob.digest)
    return blob if path.is_file() and path.stat().st_size == blob.size else None


def _make_layer(cache: Path, base: Path, kind: str, key: str) -> oci.Blob:
    blobs = cache / "blobs"
    if kind == "os":
        return oci.write_layer(base / "rootfs", blobs)
    if kind == "clis":
        try:
            src = clis.require()
        except clis.ClisMissing as exc:
            raise BuildError(str(exc), "run `bash scripts/setup.sh`, then `hearth image oci`") from None
        at = f"var/cache/hearth/clis/{key}"
        return oci.write_layer(src, blobs, prefix=at, parents=("var/cache/hearth", "var/cache/hearth/clis", at))
    work = cache / f".build-hearth-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        _build_venv(base / "rootfs", work)
        return oci.write_layer(work / "opt-hearth", blobs, prefix="opt/hearth", parents=("opt/hearth",))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_base(cache: Path, base: Path, spec: NodeSpec, progress: Progress, mirror: str, security_mirror: str) -> None:
    """debootstrap + the node's packages, in `.build-base-<pid>`, renamed to `base` when complete."""
    t0 = time.monotonic()
    work = cache / f".build-base-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "rootfs"
    try:
        progress.stage("debootstrap (minbase)", 330)
        _run(
            ["debootstrap", "--variant=minbase", spec.suite, str(root), mirror],
            "debootstrap",
            _counter(progress, r"^I: (Retrieving|Validating|Extracting|Unpacking|Configuring) "),
            timeout=1800,
        )
        sources = (
            f"deb {mirror} {spec.suite} main\ndeb {mirror} {spec.suite}-updates main\n"
            f"deb {security_mirror} {spec.suite}-security main\n"
        )
        _write(root, "etc/apt/sources.list", sources.encode(), 0o644)
        _write(root, "usr/sbin/policy-rc.d", b"#!/bin/sh\nexit 101\n", 0o755)
        no = "".join(f"Package: {p}\nPin: release *\nPin-Priority: -1\n\n" for p in FORBIDDEN_PACKAGES)
        _write(root, "etc/apt/preferences.d/hearth-no-systemd", no.encode(), 0o644)  # a container has no init
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        progress.stage("apt-get update")
        _chroot(root, f"{_APT} update", "apt-get update")
        progress.stage(f"apt-get install ({len(spec.packages)} packages and their dependencies)", 500)
        _chroot(
            root,
            f"{_APT} -y install {' '.join(spec.packages)}",
            "apt-get install",
            _counter(progress, r"^(Unpacking|Setting up) ", r"(\d+) newly installed"),
        )
        installed = _chroot(root, "dpkg-query -W -f '${Package}\\t${Version}\\n'", "dpkg-query")
        (root / "usr/sbin/policy-rc.d").unlink()
        for rel, data in (("etc/resolv.conf", b""), ("etc/hostname", b"hearth\n"), ("etc/machine-id", b"")):
            _write(root, rel, data, 0o644)  # the runtime provides these
        (root / "opt/hearth").mkdir(parents=True, exist_ok=True)
        _trim(root)
        os.chmod(root, 0o755)
        versions = dict(line.split("\t", 1) for line in installed.splitlines() if "\t" in line)
        meta: dict[str, Any] = {"key": spec.os_key, "packages": list(spec.packages), "versions": versions}
        meta["build_seconds"] = round(time.monotonic() - t0, 1)
        (work / "ok.json").write_text(json.dumps(meta, indent=2) + "\n")
        if base.exists():
            old = cache / f".build-old-{os.getpid()}"
            os.rename(base, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(work, base)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _build_venv(root: Path, work: Path) -> None:
    """hearth and its pinned dependencies into `work/opt-hearth/venv`. The wheels are fetched and built here, with
    this host's pip and its trust settings (the image's Debian CA store may not know a proxy's CA; both are CPython
    3.11 on glibc 2.36); the venv is made offline by the base's own python3, chrooted with `opt/hearth` and `tmp`
    bound over from `work`, so the cached base itself is never written."""
    stage, tmp = work / "opt-hearth", work / "tmp"
    src = tmp / "hearth-src"
    stage.mkdir(parents=True)
    src.mkdir(parents=True)
    os.chmod(tmp, 0o1777)
    shutil.copyfile(SOURCE / "pyproject.toml", src / "pyproject.toml")
    for pkg in PY_PACKAGES:
        shutil.copytree(SOURCE / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    (tmp / "constraints.txt").write_text("\n".join(pins()) + "\n")
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--wheel-dir", str(tmp / "wheels"),
         "-c", str(tmp / "constraints.txt"), str(src)],
        "pip wheel (hearth and its dependencies, from PyPI)",
        env={**os.environ, "PIP_NO_INPUT": "1"},
        timeout=1800,
    )  # fmt: skip
    shutil.rmtree(src)
    script = (
        f"python3 -m venv {VENV} && "
        f"PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HOME=/tmp {VENV}/bin/pip install -q --no-index "
        f"--find-links /tmp/wheels -c /tmp/constraints.txt hearth && "
        f"{VENV}/bin/hearth --help >/dev/null"
    )
    inner = (
        f'mount -t proc proc "{root}/proc" && mount --bind "{stage}" "{root}/opt/hearth" && '
        f'mount --bind "{tmp}" "{root}/tmp" && exec chroot "{root}" /bin/sh -ec "$0"'
    )
    _run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", inner, script],
        "pip install hearth (node image, offline)",
        env=dict(_NODE_ENV),
        timeout=1800,
    )
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(stage / "venv" / "share" / "man")
    lock = stage / "venv" / clis.INSTALLED_LOCK  # clis/package.json + package-lock.json: which CLIs layer 2 holds
    lock.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(clis.REPO_CLIS / name, lock / name)


def default_ref() -> str:
    """`localhost/hearth:<version>`: the name the manifests in deploy/kubernetes use (retag it for a registry)."""
    try:
        version = importlib.metadata.version("hearth")
    except importlib.metadata.PackageNotFoundError:
        version = "0.0.0"
    return f"localhost/hearth:{version}"
