"""A provider definition as the agent receives it in `POST /v1/login`: the schema of hearth/providers/model.py
(name, cli, credential_files, timeout, flows{loopback|paste_code|device_code: command, env, prompts, url_pattern,
url_must_contain, display, code_pattern, code_prompt}, prompt: hearth_agent/promptdef.py), checked with the stdlib.
Unknown keys (e.g. display_name) are ignored; paths must be relative to HOME without `..`. The one validator of the
rules: the controller's pydantic model calls it (hearth/providers/model.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

from hearth_agent.contract.signin import FLOWS
from hearth_agent.homefs import relative_parts
from hearth_agent.promptdef import PromptSpec, parse_prompt_section
from hearth_agent.record import dataclass  # not dataclasses: it imports inspect (hearth_agent/record.py)
from hearth_agent.sha import sha256

DEFAULT_URL_PATTERN = r"https?://[^\s\x1b\"'<>]+"
_NAME = re.compile(r"^[a-z0-9_]{1,64}$")
_BIN = re.compile(r"^[A-Za-z0-9._-]+$")
_ESCAPES = re.compile(r"\\(r|n|t|e|\\|x[0-9a-fA-F]{2})")


class UnknownFlow(ValueError):
    """The definition does not declare the requested flow (the message names the flows it has)."""


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
class FlowDef:
    name: str
    command: list[str]
    env: dict[str, str]
    prompts: list[PromptDef]
    url_pattern: re.Pattern[str]
    url_must_contain: str
    display: bool
    code_pattern: re.Pattern[str] | None  # device_code: finds (?P<code>...) on the screen
    code_prompt: re.Pattern[str] | None  # paste_code: the screen waits for the pasted code


@dataclass(frozen=True)
class ProviderDef:
    name: str
    cli_bin: str | None  # the CLI's binary (None: not an npm CLI, e.g. example)
    files: list[FileDef]
    timeout: float
    flows: dict[str, FlowDef]
    prompt: PromptSpec | None = None  # how to run the CLI non-interactively (hearth_agent/promptdef.py)

    def flow(self, name: str | None) -> FlowDef:
        """The named flow; without a name, `loopback` if declared, else the only flow."""
        if name is None:
            if "loopback" in self.flows or len(self.flows) == 1:
                return self.flows.get("loopback") or next(iter(self.flows.values()))
            raise UnknownFlow(f"{self.name} declares several flows; name one of: {', '.join(self.flows)}")
        if name not in self.flows:
            raise UnknownFlow(f"{self.name} has no {name!r} flow; it has: {', '.join(self.flows)}")
        return self.flows[name]


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


def parse_flow(name: str, d: Any) -> FlowDef:
    what = f"provider.flows.{name}"
    if not isinstance(d, dict):
        raise ValueError(f"{what} must be an object")
    command = d.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise ValueError(f"{what}.command must be a non-empty list of strings")
    prompts = []
    for p in d.get("prompts") or []:
        if not isinstance(p, dict) or not isinstance(p.get("send"), str):
            raise ValueError(f"{what}.prompts must be [{{expect, send, once}}]")
        prompts.append(
            PromptDef(_regex(p.get("expect"), f"{what} prompt expect"), unescape(p["send"]), bool(p.get("once", True)))
        )
    must = d.get("url_must_contain", "")
    if not isinstance(must, str):
        raise ValueError(f"{what}.url_must_contain must be a string")
    code_pattern = None if d.get("code_pattern") is None else _regex(d["code_pattern"], f"{what}.code_pattern")
    code_prompt = None if d.get("code_prompt") is None else _regex(d["code_prompt"], f"{what}.code_prompt")
    if name == "device_code" and (code_pattern is None or "code" not in code_pattern.groupindex):
        raise ValueError(f"{what}.code_pattern must be a regex with a named group (?P<code>...)")
    if name == "paste_code" and code_prompt is None:
        raise ValueError(f"{what}.code_prompt is required (a regex matching the screen asking for the code)")
    return FlowDef(
        name=name,
        command=list(command),
        env=str_map(d.get("env"), f"{what}.env"),
        prompts=prompts,
        url_pattern=_regex(d.get("url_pattern", DEFAULT_URL_PATTERN), f"{what}.url_pattern"),
        url_must_contain=must,
        display=d.get("display") is True,
        code_pattern=code_pattern,
        code_prompt=code_prompt,
    )


def definition_digest(d: Any) -> str:
    """sha256 of a provider definition as canonical JSON (the controller names the ones an agent may run)."""
    canonical = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256(canonical.encode()).hex()


def parse_provider(d: Any) -> ProviderDef:
    if not isinstance(d, dict):
        raise ValueError("provider must be a provider definition object")
    name = d.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError("provider.name must match ^[a-z0-9_]{1,64}$")
    cli = d.get("cli")
    cli_bin = None
    if cli is not None:
        if not isinstance(cli, dict) or not isinstance(cli.get("bin"), str) or not _BIN.match(cli["bin"]):
            raise ValueError("provider.cli must be {package, bin} with a plain binary name")
        cli_bin = cli["bin"]
    raw_flows = d.get("flows")
    if not isinstance(raw_flows, dict) or not raw_flows:
        raise ValueError(f"provider.flows must be an object with at least one of: {', '.join(FLOWS)}")
    unknown = sorted(set(raw_flows) - set(FLOWS))
    if unknown:
        raise ValueError(f"provider.flows has unknown flows {unknown}; flows are: {', '.join(FLOWS)}")
    flows = {n: parse_flow(n, raw_flows[n]) for n in FLOWS if n in raw_flows}
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
    prompt = None if d.get("prompt") is None else parse_prompt_section(d["prompt"])
    return ProviderDef(name, cli_bin, files, float(timeout), flows, prompt)
