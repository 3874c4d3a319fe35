"""The golden image for tests: built once per session, cached across runs on the same machine.

Cache: `$HEARTH_IMAGE_CACHE`, else `<repo>/.cache/hearth-images`. An unchanged source tree reuses the image (the
content hash covers every input); when the hash changes the default cache keeps only the newest image.
"""

from __future__ import annotations

import os
from pathlib import Path

from hearth.image.build import BuiltImage, PrintProgress, current_spec, ensure, gc

REPO = Path(__file__).resolve().parents[2]


def cache_dir() -> tuple[Path, bool]:
    """(cache directory, whether it is the repository's own default cache)."""
    env = os.environ.get("HEARTH_IMAGE_CACHE")
    if env:
        return Path(env).absolute(), False
    return REPO / ".cache" / "hearth-images", True


def golden_image() -> BuiltImage:
    cache, default = cache_dir()
    img, built = ensure(cache, current_spec(), progress=PrintProgress())
    print(f"\nguest image {img.hash}: {'built in ' + str(img.manifest['build_seconds']) + 's' if built else 'cached'}")
    if default:
        gc(cache, keep={img.hash})
    return img
