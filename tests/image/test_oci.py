"""The node's container image (`hearth image oci`): an OCI layout whose digests hold, unpacked and run.

The fast tests write small layouts. The slow one builds the real image from Debian's archive — once per machine
and input digest: the debootstrap base and every layer blob are cached in `$HEARTH_OCI_CACHE` (default
/var/cache/hearth/oci), so CI's second pass and an unchanged tree reuse them — then validates the archive (media
types; every blob's digest and size; each layer's uncompressed digest against the config's diff_ids), unpacks its
layers, and runs `hearth config check` and `hearth drivers` inside the unpacked root (chroot in a private mount
namespace).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from hearth.guest import clis
from hearth.image import node, oci


# ---- checking a layout ----------------------------------------------------------------------------------------------
class _HashingReader:
    def __init__(self, inner: IO[bytes] | gzip.GzipFile) -> None:
        self.inner, self.sha = inner, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.inner.read(n)
        self.sha.update(data)
        return data


def _sha(f: IO[bytes]) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def check_layout(archive: Path, unpack_to: Path | None = None) -> dict[str, Any]:
    """Assert the archive is a valid OCI image layout; return its image config. With `unpack_to`, the layers are
    extracted there in order while their uncompressed digests are checked against the config's diff_ids."""
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        assert {"oci-layout", "index.json"} <= names

        def read(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f is not None, name
            return f.read()

        def blob(desc: dict[str, Any], media: str) -> str:
            assert desc["mediaType"] == media
            name = "blobs/" + str(desc["digest"]).replace(":", "/")
            f = tar.extractfile(name)
            assert f is not None, name
            assert _sha(f) == (desc["digest"], desc["size"]), f"{name}: digest or size differs from its descriptor"
            return name

        assert json.loads(read("oci-layout")) == {"imageLayoutVersion": "1.0.0"}
        index = json.loads(read("index.json"))
        assert index["schemaVersion"] == 2 and index["mediaType"] == oci.MEDIA_INDEX
        [mdesc] = index["manifests"]
        assert mdesc["annotations"][oci.REF_NAME]
        manifest = json.loads(read(blob(mdesc, oci.MEDIA_MANIFEST)))
        assert manifest["schemaVersion"] == 2 and manifest["mediaType"] == oci.MEDIA_MANIFEST
        config = json.loads(read(blob(manifest["config"], oci.MEDIA_CONFIG)))
        assert config["os"] == "linux" and config["architecture"] == "amd64"
        assert config["rootfs"]["type"] == "layers"
        assert len(config["rootfs"]["diff_ids"]) == len(manifest["layers"]) > 0
        for desc, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
            f = tar.extractfile(blob(desc, oci.MEDIA_LAYER))
            assert f is not None
            reader = _HashingReader(gzip.GzipFile(fileobj=f))
            with tarfile.open(fileobj=reader, mode="r|") as layer:  # type: ignore[call-overload]
                for member in layer:
                    assert not member.name.startswith(("/", "../")) and "/../" not in member.name
                    if unpack_to is not None:
                        layer.extract(member, unpack_to, filter="fully_trusted", set_attrs=True)
            while reader.read(1 << 20):
                pass
            assert "sha256:" + reader.sha.hexdigest() == diff_id, "a layer's content differs from its diff_id"
        return dict(config)


# ---- fast: the writer ----------------------------------------------------------------------------------------------
def _tree(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    (root / "bin/tool").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "bin/tool", 0o755)
    (root / "etc").mkdir()
    (root / "etc/conf").write_text("a=1\n")
    os.link(root / "etc/conf", root / "etc/conf.link")
    (root / "etc/alias").symlink_to("conf")
    (root / "tmp").mkdir()
    (root / "tmp/scratch").write_text("never in a layer\n")


def test_layers_are_reproducible_and_the_archive_validates(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _tree(a)
    _tree(b)
    os.utime(b / "etc/conf", (1, 1))  # mtimes differ: the digests must not
    blobs = tmp_path / "blobs"
    la, lb = oci.write_layer(a, blobs), oci.write_layer(b, blobs)
    assert la == lb
    extra = oci.write_layer(a / "etc", blobs, prefix="opt/x", parents=("opt", "opt/x"))
    config = oci.image_config([la, extra], ["/bin/tool"], ["PATH=/bin"], {"k": "v"})
    out = tmp_path / "image.tar"
    man = oci.write_archive(out, blobs, [la, extra], config, "test:1")
    first = out.read_bytes()
    assert oci.write_archive(out, blobs, [la, extra], config, "test:1") == man and out.read_bytes() == first

    root = tmp_path / "root"
    got = check_layout(out, root)
    assert got["config"]["Entrypoint"] == ["/bin/tool"]
    assert (root / "bin/tool").read_text() == "#!/bin/sh\necho hi\n" and os.access(root / "bin/tool", os.X_OK)
    assert os.readlink(root / "etc/alias") == "conf"
    assert (root / "etc/conf").stat().st_ino == (root / "etc/conf.link").stat().st_ino  # a hard link stays one
    assert (root / "tmp").is_dir() and not (root / "tmp/scratch").exists()  # mount points: empty
    assert (root / "opt/x/conf").read_text() == "a=1\n"


def test_a_tampered_blob_fails_validation(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    blobs = tmp_path / "blobs"
    layer = oci.write_layer(src, blobs)
    path = oci.blob_path(blobs, layer.digest)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    out = tmp_path / "image.tar"
    oci.write_archive(out, blobs, [layer], oci.image_config([layer], ["/x"], [], {}), "t:1")
    with pytest.raises(AssertionError, match="digest or size"):
        check_layout(out)


def test_the_spec_keys_each_layer_by_its_own_inputs() -> None:
    spec = node.current_spec()
    assert "hearth/static/novnc/core/rfb.js" in spec.source_files and spec.clis == clis.lock_hash()
    assert any(p.startswith("fastapi==") for p in spec.pins)
    changed = node.NodeSpec(**{**spec.__dict__, "source_files": {**spec.source_files, "hearth/x.py": "0"}})
    assert changed.os_key == spec.os_key and changed.hearth_key != spec.hearth_key and changed.hash != spec.hash
    more = node.NodeSpec(**{**spec.__dict__, "extra_packages": ("qemu-system-x86",)})
    assert more.os_key != spec.os_key and "qemu-system-x86" in more.packages


def test_gc_drops_what_no_build_used_and_keeps_the_current_layers(tmp_path: Path) -> None:
    cache, src = tmp_path / "cache", tmp_path / "src"
    _tree(src)
    (cache / "layers").mkdir(parents=True)
    current, old = oci.write_layer(src, cache / "blobs"), oci.write_layer(src / "etc", cache / "blobs")
    records = {"hearth-new": current, "hearth-old": old, "hearth-same": current}
    for name, blob in records.items():
        (cache / "layers" / f"{name}.json").write_text(json.dumps(blob.to_json()))
    for name in ("base-new", "base-old", ".build-base-999999999"):
        (cache / name / "rootfs").mkdir(parents=True)
    day_ago = time.time() - 2 * node.UNUSED_FOR
    for p in (*cache.glob("layers/*.json"), *cache.glob("base-*")):
        os.utime(p, (day_ago, day_ago))

    removed = node.gc(cache, {"hearth-new", "base-new"})
    assert sorted(removed) == ["base-old", "hearth-old", "hearth-same"]
    assert sorted(p.name for p in cache.iterdir()) == ["base-new", "blobs", "layers"]  # a dead build's dir: gone
    assert oci.blob_path(cache / "blobs", current.digest).is_file()  # still used by hearth-new
    assert not oci.blob_path(cache / "blobs", old.digest).exists()
    assert node.gc(cache, {"hearth-new", "base-new"}) == []  # marked used just now


# ---- slow: the real image --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[node.NodeImage, dict[str, Any], Path]]:
    from hearth.image.build import PrintProgress

    cache = Path(os.environ.get("HEARTH_OCI_CACHE") or node.DEFAULT_CACHE)
    out = tmp_path_factory.mktemp("oci") / "hearth-node.tar"
    img = node.ensure(out, node.current_spec(), cache=cache, progress=PrintProgress())
    print(f"\nnode image {img.spec_hash}: {img.seconds}s, built {img.built or 'nothing'}; {out.stat().st_size} bytes")
    root = out.parent / "rootfs"
    root.mkdir()
    config = check_layout(out, root)
    yield img, config, root
    out.unlink()
    shutil.rmtree(root)  # ~2.5 GiB unpacked


def _inside(root: Path, config: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    """Run `argv` in the unpacked image (chroot, private mount namespace with /proc, /dev and /sys), with the
    image's environment only."""
    inner = (
        f'mount -t proc proc "{root}/proc" && mount --rbind /dev "{root}/dev" && mount --rbind /sys "{root}/sys" && '
        f'mount -t tmpfs tmpfs "{root}/run" && exec chroot "{root}" "$@"'
    )
    env = dict(e.split("=", 1) for e in config["config"]["Env"]) | {"COLUMNS": "200"}  # Rich: no wrapped lines
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", inner, "sh", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.netns
@pytest.mark.slow
def test_the_node_image_runs_hearth(node_image: tuple[node.NodeImage, dict[str, Any], Path]) -> None:
    img, config, root = node_image
    assert config["config"]["Entrypoint"] == node.ENTRYPOINT
    assert set(img.layers) == {"os", "clis", "hearth"}

    check = _inside(root, config, "hearth", "config", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "configuration OK" in check.stdout

    drivers = _inside(root, config, "hearth", "drivers")
    print(check.stdout[-400:], drivers.stdout, drivers.stderr, sep="\n")
    assert drivers.returncode == 0, drivers.stdout + drivers.stderr
    assert "selected: netns" in drivers.stdout  # no KVM, no guest image here: the netns driver, on the image's /usr
    assert "netns sandboxes run: the host's /usr and /etc" in drivers.stdout

    need = "Xvnc chromium openbox bwrap nft ip debootstrap mkfs.ext4"
    tools = _inside(root, config, "sh", "-ec", f"for t in {need}; do command -v $t; done")
    assert tools.returncode == 0 and len(tools.stdout.split()) == len(need.split()), tools.stdout + tools.stderr
    where = _inside(
        root, config, "python", "-c", "from hearth.guest import clis; import hearth, pathlib; "
        "print(clis.installed()); print(pathlib.Path(hearth.__file__).parent / 'static/novnc/core/rfb.js')",
    )  # fmt: skip
    assert where.returncode == 0, where.stderr
    cli_dir, rfb = where.stdout.split()
    assert cli_dir == f"/var/cache/hearth/clis/{clis.lock_hash()}"  # the pinned CLIs, where the node looks
    assert (root / rfb.lstrip("/")).is_file()  # noVNC, served by hearth itself
    for b in clis.BINS:
        assert (root / cli_dir.lstrip("/") / "node_modules/.bin" / b).exists()
