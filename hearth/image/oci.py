"""OCI image layout, written with tarfile/hashlib: layers, config, manifest, index, and the one-file archive.

Reproducible: entries sorted, mtimes fixed (`SOURCE_DATE_EPOCH`, default 0), owner names dropped (numeric ids
kept), gzip headers without name or time; so equal trees give equal layer digests. The archive is the OCI image
layout (`oci-layout`, `index.json`, `blobs/sha256/…`) as one uncompressed tar: what `skopeo copy oci-archive:…`,
`podman load` and `ctr image import` read. Pure file work here; hearth/image/node.py decides what goes in.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"  # what `ctr image import` names the image by
# Mount points a runtime fills: kept as empty directories, never with contents.
EMPTY_DIRS = ("dev", "proc", "sys", "run", "tmp", "var/tmp")


def epoch() -> int:
    try:
        return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob: its descriptor's digest and size (and, for a layer, the uncompressed diff_id)."""

    digest: str
    size: int
    diff_id: str = ""

    def descriptor(self, media_type: str) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": self.digest, "size": self.size}

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "diff_id": self.diff_id}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Blob:
        return cls(str(raw["digest"]), int(raw["size"]), str(raw.get("diff_id", "")))


class _Hashing:
    """A write-only file that hashes and counts what passes through to `inner`."""

    def __init__(self, inner: IO[bytes] | gzip.GzipFile) -> None:
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.inner.write(data)
        return len(data)


def blob_path(blobs: Path, digest: str) -> Path:
    algo, hexd = digest.split(":", 1)
    return blobs / algo / hexd


def _entries(root: Path, prefix: str) -> list[tuple[Path, str]]:
    """(path on disk, name in the tar) for everything under `root`, sorted; mount points' contents skipped."""
    out: list[tuple[Path, str]] = []
    skip = {root / d for d in EMPTY_DIRS}
    for dirpath, dirs, files in os.walk(root):
        here = Path(dirpath)
        dirs.sort()
        kept = []
        for d in dirs:
            p = here / d
            out.append((p, _name(root, p, prefix)))
            if p not in skip and not p.is_symlink():
                kept.append(d)
        dirs[:] = kept
        for f in sorted(files):
            p = here / f
            out.append((p, _name(root, p, prefix)))
    return sorted(out, key=lambda e: e[1])


def _name(root: Path, path: Path, prefix: str) -> str:
    rel = path.relative_to(root).as_posix()
    return f"{prefix.strip('/')}/{rel}".lstrip("/") if prefix.strip("/") else rel


def write_layer(root: Path, blobs: Path, prefix: str = "", parents: tuple[str, ...] = (), level: int = 6) -> Blob:
    """The tree under `root` as a gzip layer blob in `blobs`, placed at `prefix` in the image (`parents`: the
    directories above it, as 0755 root-owned entries). Sockets are skipped; devices too (the runtime makes /dev)."""
    when = epoch()
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".layer-{os.getpid()}.tmp"
    with open(tmp, "wb") as raw:
        outer = _Hashing(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=outer, mtime=0, compresslevel=level) as gz:  # type: ignore[call-overload]
            inner = _Hashing(gz)
            with tarfile.open(fileobj=inner, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for d in parents:
                    info = tarfile.TarInfo(d.strip("/"))
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, when
                    tar.addfile(info)
                for path, name in _entries(root, prefix):
                    st = path.lstat()
                    if stat.S_ISSOCK(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                        continue
                    info = tar.gettarinfo(str(path), arcname=name)
                    info.mtime, info.uname, info.gname = when, "", ""
                    info.pax_headers = {}
                    if info.isreg():
                        with open(path, "rb") as f:
                            tar.addfile(info, f)
                    else:
                        tar.addfile(info)
    diff_id = "sha256:" + inner.sha.hexdigest()
    digest = "sha256:" + outer.sha.hexdigest()
    dest = blob_path(blobs, digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)
    return Blob(digest, outer.size, diff_id)


def write_json_blob(blobs: Path, doc: dict[str, Any]) -> Blob:
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    dest = blob_path(blobs, digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return Blob(digest, len(data))


def image_config(layers: list[Blob], entrypoint: list[str], env: list[str], labels: dict[str, str]) -> dict[str, Any]:
    created = f"{datetime.fromtimestamp(epoch(), UTC):%Y-%m-%dT%H:%M:%SZ}"
    return {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint, "Env": env, "Labels": labels, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": "hearth image oci"} for _ in layers],
    }


def write_archive(out: Path, blobs: Path, layers: list[Blob], config: dict[str, Any], ref: str) -> Blob:
    """The OCI layout archive at `out` (written beside it, renamed into place). Returns the manifest blob."""
    cfg = write_json_blob(blobs, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": cfg.descriptor(MEDIA_CONFIG),
        "layers": [layer.descriptor(MEDIA_LAYER) for layer in layers],
    }
    man = write_json_blob(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [man.descriptor(MEDIA_MANIFEST) | {"annotations": {REF_NAME: ref, CONTAINERD_NAME: ref}}],
    }
    when = epoch()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

            def add_bytes(name: str, data: bytes) -> None:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, when
                tar.addfile(info, io.BytesIO(data))

            for d in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(d)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, when
                tar.addfile(info)
            for blob in sorted({*layers, cfg, man}, key=lambda b: b.digest):
                path = blob_path(blobs, blob.digest)
                info = tarfile.TarInfo(f"blobs/{blob.digest.replace(':', '/')}")
                info.size, info.mode, info.mtime = path.stat().st_size, 0o644, when
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            add_bytes("index.json", json.dumps(index, indent=2).encode() + b"\n")
            add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}\n')
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return man
