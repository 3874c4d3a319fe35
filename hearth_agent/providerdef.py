"""A provider definition as the agent receives it in `POST /v1/login`: the schema of hearth/providers/model.py
(name, command, env, prompts, url_pattern, url_must_contain, credential_files, timeout), checked with the stdlib.
Unknown keys (e.g. display_name) are ignored; paths must be relative to HOME without `..`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from hearth_agent.homefs import relative_parts

DEFAULT_URL_PATTERN = r"https?://[^\s\x1b\"'<>]+"
_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
_ESCAPES = re.compile(r"\\(r|n|t|e|\\|x[0-9a-fA-F]{2})")


@dataclass(frozen=True)
class PromptDef:
    expect: re.Pattern[str]
    send: str
    once: bool


@dataclass(frozen=True)
class FileDef:
    source: str
    target: str
    mode: int
    require_json: bool


@dataclass(frozen=True)
class ProviderDef:
    name: str
    command: list[str]
    env: dict[str, str]
    prompts: list[PromptDef]
    url_pattern: re.Pattern[str]
    url_must_contain: str
    files: list[FileDef]
    timeout: float


def unescape(s: str) -> str:
    """Interpret \\r \\n \\t \\e \\\\ \\xNN written literally in a definition (real control characters pass)."""
    table = {"r": "\r", "n": "\n", "t": "\t", "e": "\x1b", "\\": "\\"}
    return _ESCAPES.sub(lambda m: table.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), s)


def _regex(value: Any, what: str) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise ValueError(f"{what} is not a valid regular expression: {exc}") from None


def str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\x00" not in k + v
        for k, v in value.items()
    ):
        raise ValueError(f"{what} must be an object of string names to string values")
    return dict(value)


def definition_digest(d: Any) -> str:
    """sha256 of a provider definition as canonical JSON (the controller names the ones an agent may run)."""
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_provider(d: Any) -> ProviderDef:
    if not isinstance(d, dict):
        raise ValueError("provider must be a provider definition object")
    name = d.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError("provider.name must match ^[a-z0-9_]{1,64}$")
    command = d.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise ValueError("provider.command must be a non-empty list of strings")
    prompts = []
    for p in d.get("prompts") or []:
        if not isinstance(p, dict) or not isinstance(p.get("send"), str):
            raise ValueError("provider.prompts must be [{expect, send, once}]")
        prompts.append(
            PromptDef(_regex(p.get("expect"), "prompt expect"), unescape(p["send"]), bool(p.get("once", True)))
        )
    files = []
    for f in d.get("credential_files") or []:
        if not isinstance(f, dict):
            raise ValueError("provider.credential_files must be [{source, target, mode, require_json}]")
        mode = f.get("mode", 0o600)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError("credential file mode must be an integer between 0 and 0o777")
        source, target = relative_parts(f.get("source")), relative_parts(f.get("target"))
        files.append(FileDef("/".join(source), "/".join(target), mode, bool(f.get("require_json", True))))
    if not files:
        raise ValueError("provider.credential_files must not be empty")
    timeout = d.get("timeout", 600)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError("provider.timeout must be a positive number of seconds")
    must = d.get("url_must_contain", "")
    if not isinstance(must, str):
        raise ValueError("provider.url_must_contain must be a string")
    pattern = _regex(d.get("url_pattern", DEFAULT_URL_PATTERN), "provider.url_pattern")
    env = str_map(d.get("env"), "provider.env")
    return ProviderDef(name, list(command), env, prompts, pattern, must, files, float(timeout))
