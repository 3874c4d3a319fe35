"""`hearth image build|list|gc`: the golden guest image every driver runs (see hearth/image/build.py); `hearth image
oci`: the node's container image (hearth/image/node.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, Task, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from hearth.cli.common import fail, settings_or_exit
from hearth.config import Settings
from hearth.errors import HearthError
from hearth.image import build as builder
from hearth.image import node
from hearth.image.spec import MIRROR, SECURITY_MIRROR, ImageSpec

image_app = typer.Typer(
    help="The guest image: one root filesystem, kernel and initramfs for every driver (build needs root).",
    no_args_is_help=True,
)


def cache_dir(settings: Settings, override: Path | None = None) -> Path:
    return (override or settings.data_dir / "images").absolute()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class RichProgress:
    """The builder's progress as Rich bars: one overall bar over the stages, one bar for the current stage."""

    STAGES = 7

    def __init__(self, progress: Progress) -> None:
        self.p = progress
        self.overall: TaskID = progress.add_task("image build", total=self.STAGES)
        self.current: TaskID | None = None
        self.t0 = time.monotonic()

    def stage(self, name: str, total: float | None = None) -> None:
        if self.current is not None:
            done = self._task(self.current).total or 1
            self.p.update(self.current, total=done, completed=done)
            self.p.stop_task(self.current)
            self.p.advance(self.overall)
        if name == "done":
            self.current = None
            return
        self.current = self.p.add_task(name, total=total)

    def _task(self, task_id: TaskID) -> Task:
        return next(t for t in self.p.tasks if t.id == task_id)

    def advance(self, amount: float = 1.0) -> None:
        if self.current is not None:
            task = self._task(self.current)
            if task.total is not None and task.completed + amount > task.total:
                self.p.update(self.current, total=task.completed + amount)
            self.p.advance(self.current, amount)

    def total(self, total: float) -> None:
        if self.current is not None:
            self.p.update(self.current, total=total)

    def note(self, text: str) -> None:
        self.p.console.print(escape(text))


@image_app.command("build")
def build_cmd(
    force: bool = typer.Option(False, "--force", help="rebuild even when the cache holds this image"),
    chromium: bool = typer.Option(True, "--chromium/--no-chromium", help="include Chromium (the big part)"),
    for_tests: bool = typer.Option(
        False, "--for-tests", help="include the test identity provider hearth_example (never in production images)"
    ),
    cache: Path | None = typer.Option(None, help="image cache directory (default <HEARTH_DATA_DIR>/images)"),
    mirror: str = typer.Option(MIRROR, help="Debian mirror for debootstrap and apt"),
    security_mirror: str = typer.Option(SECURITY_MIRROR, help="Debian security mirror"),
) -> None:
    """Build the guest image (debootstrap bookworm minbase + the desktop + the agent; kernel, vmlinux, initramfs,
    ext4), unless the content-addressed cache already holds it; then point <HEARTH_DATA_DIR>/image at it."""
    settings = settings_or_exit()
    out = Console()
    spec = builder.current_spec(chromium=chromium, for_tests=for_tests)
    where = cache_dir(settings, cache)
    out.print(f"image [bold]{spec.hash}[/] ({'with' if chromium else 'without'} Chromium) in {escape(str(where))}")
    try:
        cached = None if force else builder.find(where, spec)
        if cached is not None:
            img, built = cached, False
        else:
            img, built = _build_with_bars(out, where, spec, force, mirror, security_mirror)
    except HearthError as exc:
        fail(exc.reason)
    _report(out, settings, img, built)


def _build_with_bars(
    out: Console, where: Path, spec: ImageSpec, force: bool, mirror: str, security_mirror: str
) -> tuple[builder.BuiltImage, bool]:
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    ) as bars:
        return builder.ensure(
            where,
            spec,
            force=force,
            progress=RichProgress(bars),
            mirror=mirror,
            security_mirror=security_mirror,
        )


def _report(out: Console, settings: Settings, img: builder.BuiltImage, built: bool) -> None:
    m = img.manifest
    if built:
        out.print(f"[green]built[/] {img.hash} in {m.get('build_seconds', '?')}s")
    else:
        out.print(f"[green]cached[/] {img.hash} (inputs unchanged; --force rebuilds)")
    _show(out, img)
    if builder.point_current(settings.images, img.path):
        out.print(f"{escape(str(settings.images))} → {escape(str(img.path))}")
    else:
        out.print(
            f"[yellow]note:[/] {escape(str(settings.images))} is a directory, not a link: left alone. "
            f"Set HEARTH_IMAGE_DIR={escape(str(img.path))} to use this image."
        )


def _show(out: Console, img: builder.BuiltImage) -> None:
    m: dict[str, Any] = img.manifest
    sizes = m.get("sizes", {})
    k = m.get("kernel", {})
    out.print(f"  kernel   {escape(str(k.get('package')))} {escape(str(k.get('version')))} ({k.get('compression')})")
    for label, key in (("rootfs", "rootfs_dir"), ("ext4", "rootfs_ext4"), ("vmlinux", "vmlinux"), ("initrd", "initrd")):
        if key in sizes:
            out.print(f"  {label:<8} {_human(sizes[key])}")
    out.print(f"  CLIs     {_cli_versions(m)}")
    if "rootfs_ext4_allocated" in sizes:
        out.print(f"  ext4 allocated on disk: {_human(sizes['rootfs_ext4_allocated'])}")


def _cli_versions(m: dict[str, Any]) -> str:
    """The provider CLIs (and Node) an image carries, from its manifest: `claude-code 2.1.328, codex 0.169.0, …`."""
    versions = m.get("versions", {})
    shown = [
        f"{name.rsplit('/', 1)[-1]} {v}"
        for name, v in sorted(versions.items())
        if name.startswith("@") or name.startswith("node-")
    ]
    return escape(", ".join(shown)) or "none (rebuild)"


@image_app.command("list")
def list_cmd(cache: Path | None = typer.Option(None, help="image cache directory")) -> None:
    """Images in the cache; the one <HEARTH_DATA_DIR>/image points at is marked current."""
    settings = settings_or_exit()
    where = cache_dir(settings, cache)
    current = builder.current_link_target(settings.images)
    wanted = builder.current_spec().hash
    table = Table(title=f"images in {where}")
    for col in ("hash", "created", "chromium", "ext4", "rootfs", "kernel", "CLIs", ""):
        table.add_column(col)
    for img in builder.list_images(where):
        m = img.manifest
        sizes = m.get("sizes", {})
        flags = []
        if current is not None and current == img.path.resolve():
            flags.append("current")
        if img.hash == wanted:
            flags.append("matches this source")
        table.add_row(
            img.hash,
            str(m.get("created_at", "?")),
            "yes" if m.get("inputs", {}).get("chromium") else "no",
            _human(sizes.get("rootfs_ext4", 0)),
            _human(sizes.get("rootfs_dir", 0)),
            str(m.get("kernel", {}).get("release", "?")),
            _cli_versions(m),
            ", ".join(flags),
        )
    Console().print(table)


@image_app.command("gc")
def gc_cmd(cache: Path | None = typer.Option(None, help="image cache directory")) -> None:
    """Remove every cached image except the current one (and leftovers of interrupted builds)."""
    settings = settings_or_exit()
    where = cache_dir(settings, cache)
    current = builder.current_link_target(settings.images)
    keep = {current.name} if current is not None and current.parent == where.resolve() else set()
    if not keep:
        keep = {builder.current_spec().hash}
    removed = builder.gc(where, keep)
    out = Console()
    for path in removed:
        out.print(f"removed {escape(str(path))}")
    out.print(f"kept {', '.join(sorted(keep))}; removed {len(removed)}")


@image_app.command("oci")
def oci_cmd(
    out: Path = typer.Argument(..., help="the OCI image layout archive to write (e.g. hearth-node.tar)"),
    force: bool = typer.Option(False, "--force", help="rebuild every layer, even those the cache holds"),
    package: list[str] = typer.Option([], "--package", help="an extra Debian package (repeat), e.g. qemu-system-x86"),
    ref: str = typer.Option(
        "", help="the image name in index.json (default localhost/hearth:<version>, as deploy/kubernetes uses)"
    ),
    cache: Path = typer.Option(node.DEFAULT_CACHE, help="layer cache (the debootstrap base and the layer blobs)"),
    mirror: str = typer.Option(MIRROR, help="Debian mirror for debootstrap and apt"),
    security_mirror: str = typer.Option(SECURITY_MIRROR, help="Debian security mirror"),
) -> None:
    """Build the node's container image from Debian's archive (no base image is pulled): Xvnc, Chromium, openbox,
    bubblewrap, nftables, hearth with noVNC in a venv, the pinned provider CLIs; written as an OCI archive (load it
    with `skopeo copy oci-archive:OUT docker://…`, `podman load -i OUT` or `ctr image import OUT`). Layers are
    cached by their inputs' digest: a source change rebuilds only the hearth layer. Needs root."""
    out_console = Console()
    try:
        spec = node.current_spec(tuple(package))
        out_console.print(f"node image [bold]{spec.hash}[/] → {escape(str(out))} (layer cache {escape(str(cache))})")
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=out_console
        ) as bars:
            img = node.ensure(
                out.absolute(),
                spec,
                cache=cache.absolute(),
                ref=ref,
                force=force,
                progress=RichProgress(bars),
                mirror=mirror,
                security_mirror=security_mirror,
            )
    except HearthError as exc:
        fail(exc.reason)
    built = ", ".join(img.built) or "nothing (every layer cached)"
    out_console.print(f"[green]wrote[/] {escape(str(img.path))} in {img.seconds}s; built: {built}")
    out_console.print(f"  manifest {img.manifest}")
    for kind, blob in img.layers.items():
        out_console.print(f"  {kind:<7} {blob.digest[:19]}… {_human(blob.size)}")
    out_console.print(f"  archive  {_human(img.path.stat().st_size)}")
