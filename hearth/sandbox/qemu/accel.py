"""Which QEMU accelerator really works here — found by booting, not by looking at /dev/kvm.

`/dev/kvm` can exist and still be unusable: on a paravirtual (nested) KVM stock guest kernels crash, or QEMU aborts
setting an MSR. So the probe boots the image's own kernel and initramfs under `-M microvm -accel kvm` with a bounded
timeout; the initramfs, told `hearth.probe=kvm`, prints a marker once the root disk appeared and reboots (QEMU
exits: -no-reboot). The result is cached in `<data_dir>/qemu-accel.json`, keyed by the kernel, the QEMU binary and
the host kernel, so only the first controller start on a host pays for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.guest import files as guest
from hearth.guest.layout import GuestImage
from hearth.sandbox.qemu.cmdline import Accel, probe_argv

CACHE_FILE = "qemu-accel.json"
PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class Probe:
    accel: Accel | None  # None: QEMU cannot run at all
    kvm_ok: bool
    reason: str
    seconds: float = 0.0
    cached: bool = False


def _file_key(path: Path) -> str:
    st = os.stat(path)
    return f"{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"


def cache_key(image: GuestImage, binary: str) -> dict[str, str]:
    exe = shutil.which(binary) or binary
    return {
        "kernel": _file_key(image.kernel),
        "initrd": _file_key(image.initrd) if image.initrd else "",
        "qemu": _file_key(Path(exe)) if os.path.exists(exe) else exe,
        "host": os.uname().release,
    }


def tail(text: str, lines: int = 3) -> str:
    useful = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(useful[-lines:])


def boot_probe(image: GuestImage, accel: Accel, binary: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str, float]:
    """Boot the image's kernel to the root-disk marker under `accel`. Returns (ok, what happened, seconds)."""
    with tempfile.TemporaryDirectory(prefix="hearth-probe-") as tmp:
        console = Path(tmp) / "console.log"
        t0 = time.monotonic()
        proc = subprocess.Popen(
            probe_argv(image, accel, console, binary),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            timed_out = True
        seconds = time.monotonic() - t0
        text = console.read_text(errors="replace") if console.exists() else ""
    if guest.MARK_PROBE_OK in text:
        return True, f"{accel}: booted to the root disk in {seconds:.1f}s", seconds
    said = tail(out.decode(errors="replace")) or tail(text) or "no output"
    if timed_out:
        return False, f"{accel}: no boot within {timeout:.0f}s (last: {said})", seconds
    return False, f"{accel}: QEMU exited with {proc.returncode} before the guest booted ({said})", seconds


def kvm_usable() -> str | None:
    """Why KVM cannot even be tried (None when /dev/kvm is there and read/writable)."""
    if not os.path.exists("/dev/kvm"):
        return "no /dev/kvm (no hardware virtualisation, or nested virtualisation is off)"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "/dev/kvm is not read/writable by this user"
    return None


def tcg_available(binary: str) -> str | None:
    """Why TCG cannot be used (None when the binary runs and lists tcg)."""
    exe = shutil.which(binary)
    if exe is None:
        return f"{binary} not found (apt-get install qemu-system-x86)"
    try:
        done = subprocess.run([exe, "-accel", "help"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{binary} does not run: {exc}"
    if "tcg" not in done.stdout.split():
        return f"{binary} has no TCG accelerator"
    return None


def probe(data_dir: Path, image: GuestImage, binary: str = "qemu-system-x86_64", use_cache: bool = True) -> Probe:
    """KVM if a real boot under KVM works, else TCG if QEMU runs, else None — with the reason."""
    no_tcg = tcg_available(binary)
    if no_tcg is not None:
        return Probe(None, False, no_tcg)
    why_not = kvm_usable()
    if why_not is not None:
        return Probe("tcg", False, f"KVM unusable: {why_not}; TCG available")
    missing = [p for p in (image.kernel, image.rootfs) if not p.is_file()]
    if missing:
        return Probe(
            "tcg", False, f"KVM not probed: the guest image is missing {missing[0]} (run `hearth image build`)"
        )
    key = cache_key(image, binary)
    cache = data_dir / CACHE_FILE
    if use_cache:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            got: dict[str, Any] = json.loads(cache.read_text())
            if got["key"] == key:
                return Probe(got["accel"], bool(got["kvm_ok"]), str(got["reason"]), float(got["seconds"]), True)
    ok, what, seconds = boot_probe(image, "kvm", binary)
    result = (
        Probe("kvm", True, what, seconds)
        if ok
        else Probe("tcg", False, f"KVM does not boot the guest kernel ({what}); TCG available", seconds)
    )
    with contextlib.suppress(OSError):
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
        tmp.write_text(
            json.dumps(
                {
                    "key": key,
                    "accel": result.accel,
                    "kvm_ok": result.kvm_ok,
                    "reason": result.reason,
                    "seconds": seconds,
                }
            )
        )
        os.replace(tmp, cache)
    return result
