"""The golden image for tests: built once per session, cached across runs on the same machine.

Cache: `$HEARTH_IMAGE_CACHE`, else `/var/tmp/hearth-tests/images` (beside the tests' data directories, traversable
by the sandbox user: the netns driver runs the image's rootfs as that user, and a checkout's parents may not be). An unchanged source tree reuses the image (the
content hash covers every input). The default cache drops images no session used for 6 hours; a younger one may
belong to a concurrent test session of another source tree state (several engineers, one machine).
"""

from __future__ import annotations

import os
from pathlib import Path

from hearth.image.build import BuiltImage, PrintProgress, current_spec, ensure, gc

TESTS_BASE = Path("/var/tmp/hearth-tests")  # 0711: the tests' data directories and the image cache live here


def cache_dir() -> tuple[Path, bool]:
    """(cache directory, whether it is the repository's own default cache)."""
    env = os.environ.get("HEARTH_IMAGE_CACHE")
    if env:
        return Path(env).absolute(), False
    TESTS_BASE.mkdir(mode=0o711, exist_ok=True)
    return TESTS_BASE / "images", True


def golden_image() -> BuiltImage:
    cache, default = cache_dir()
    img, built = ensure(cache, current_spec(for_tests=True), progress=PrintProgress())
    print(f"\nguest image {img.hash}: {'built in ' + str(img.manifest['build_seconds']) + 's' if built else 'cached'}")
    os.utime(img.path)  # "in use": concurrent sessions on this machine (another source tree state) keep it
    if default:
        gc(cache, keep={img.hash}, unused_for=6 * 3600)
    return img
