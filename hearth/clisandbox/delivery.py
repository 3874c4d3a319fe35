"""What a sign-in delivers into the user's CLI sandbox, as its agent's `POST /v1/files` body: the sealed credential
files (written whole, with their modes) and the provider's settings the CLI needs to count as signed in (merged into
the person's existing settings file by the agent: hearth_agent/homefs.py). The conformance suite installs the same
body into a fresh home and asks the CLI itself (hearth/standins/conformance.py).
"""

from __future__ import annotations

import base64
from typing import Any

from hearth.providers.model import Provider
from hearth.vault.store import CredentialFile


def files_body(files: list[CredentialFile], provider: Provider | None) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"target": f.path, "mode": f.mode, "data_b64": base64.b64encode(f.data).decode()} for f in files
    ]
    if provider is not None:
        items += [{"target": s.target, "mode": s.mode, "merge_json": s.merge} for s in provider.settings_files]
    return {"files": items}
