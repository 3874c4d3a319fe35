"""Load and validate every provider definition (`defs/*.json`, plus any extra directory)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from hearth.providers.model import Provider

BUILTIN = Path(__file__).resolve().parent / "defs"


class ProviderError(Exception):
    """A definition is invalid, or a requested provider does not exist."""


def load(*dirs: Path) -> dict[str, Provider]:
    out: dict[str, Provider] = {}
    for d in (BUILTIN, *dirs):
        for path in sorted(d.glob("*.json")):
            try:
                provider = Provider.model_validate(json.loads(path.read_text()))
            except (ValidationError, json.JSONDecodeError) as exc:
                raise ProviderError(f"provider definition {path} is invalid: {exc}") from exc
            if provider.name != path.stem:
                raise ProviderError(f"{path}: name {provider.name!r} must match the file name {path.stem!r}")
            out[provider.name] = provider
    return out


def get(providers: dict[str, Provider], name: str) -> Provider:
    try:
        return providers[name]
    except KeyError:
        raise ProviderError(f"unknown provider {name!r}; known: {', '.join(sorted(providers))}") from None
