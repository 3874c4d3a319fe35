"""The provider definition schema. One definition serves both sides: the paths the CLI writes in the browser
sandbox and where they are installed in the user's CLI sandbox (the seed watched and injected different paths).

A definition declares the sign-in *flows* its CLI offers (`loopback`, `paste_code`, `device_code`), each with its
own command, environment, PTY prompts and URL filter. The sign-in *modes* a session can ask for derive from the
flows (`Provider.modes()`, `Provider.flow_for(mode)`): `remote_browser` needs `loopback`; `direct` takes
`device_code`, else `paste_code`. The rules the agent also applies (names, paths, modes, flows, regexes, the
code pattern's group, the timeout) are written once, in the stdlib validator the agent runs
(hearth_agent/providerdef.py): `Provider` calls it on its agent document. Here only: the types, no unknown keys, and
what the agent never receives or reads (display name, npm package, settings files, status check, egress domains).
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hearth_agent.homefs import relative_parts
from hearth_agent.promptdef import parse_prompt_section
from hearth_agent.providerdef import DEFAULT_URL_PATTERN, definition_digest, parse_provider


class FlowName(StrEnum):
    LOOPBACK = "loopback"  # redirect to a callback inside the sandbox: the in-sandbox browser completes it
    PASTE_CODE = "paste_code"  # the provider's page shows a code the person pastes back into the CLI
    DEVICE_CODE = "device_code"  # the person enters the CLI's code on the provider's page


class SigninMode(StrEnum):
    REMOTE_BROWSER = "remote_browser"  # desktop + Chromium in the sandbox, streamed to the person
    DIRECT = "direct"  # no desktop: the person opens the URL in their own browser


class UnsupportedMode(ValueError):
    """The provider's CLI cannot sign in in the requested mode; the message lists the modes it can do."""


def _relative_path(value: str) -> str:
    """`value` normalised ("./a//b" → "a/b"); refused as the agent refuses it (hearth_agent/homefs.py)."""
    return "/".join(relative_parts(value))


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


class Prompt(BaseModel):
    """When the rendered screen shows `expect`, type `send` (escapes like \\r are interpreted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expect: str
    send: str
    once: bool = True


class CredentialFileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="written by the CLI in the browser sandbox, relative to HOME")
    target: str = Field(description="installed in the user's CLI sandbox, relative to HOME")
    mode: int = 0o600
    require_json: bool = Field(True, description="complete only once the file parses as JSON")

    @field_validator("source", "target")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _relative_path(v)


class SettingsMerge(BaseModel):
    """A JSON settings file the CLI needs besides its credentials to count as signed in (Gemini CLI: the auth type
    in `.gemini/settings.json`). `merge` is deep-merged into the file in the user's CLI sandbox by its agent: the
    person's other settings there stay as they are."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field(description="relative to HOME in the user's CLI sandbox")
    merge: dict[str, Any] = Field(min_length=1, description="JSON object merged into the file (objects recursively)")
    mode: int = Field(0o600, ge=0, le=0o777, description="mode of a file created new (an existing file keeps its)")

    @field_validator("target")
    @classmethod
    def _relative(cls, v: str) -> str:
        return _relative_path(v)


class StatusCheck(BaseModel):
    """How the CLI itself says whether it is signed in. The conformance suite runs it with only the delivered files
    in a fresh home, offline against the providers' stand-in (hearth/standins/conformance.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    signed_in: str = Field(description="regex the output matches when the CLI counts as signed in")
    exit_code: int = Field(0, description="the exit status when signed in")

    @field_validator("signed_in")
    @classmethod
    def _regex(cls, v: str) -> str:
        return _regex(v)


class CliSpec(BaseModel):
    """The npm package that provides the CLI (pinned in clis/package-lock.json) and the binary it installs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str = Field(pattern=r"^(@[a-z0-9._-]+/)?[a-z0-9._-]+$")
    bin: str


class Flow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    prompts: list[Prompt] = Field(default_factory=list)
    url_pattern: str = Field(DEFAULT_URL_PATTERN, description="regex that finds the sign-in URL on screen")
    url_must_contain: str = Field("", description="substring the sign-in URL must contain (filters other links)")
    display: bool = Field(False, description="give the CLI the sandbox's DISPLAY (it opens the URL itself)")
    code_pattern: str | None = Field(None, description="device_code: regex with (?P<code>...) finding the code")
    code_prompt: str | None = Field(None, description="paste_code: regex matching the screen waiting for the code")


class PermissionFlags(BaseModel):
    """The CLI's flags per permission level: `read_only` → its read-only or plan mode; `workspace_write` → edits
    allowed inside the sandbox's workspace only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    read_only: list[str]
    workspace_write: list[str]


class PromptSection(BaseModel):
    """How to run the CLI non-interactively for one prompt, and how its JSON lines map to hearth's events
    (text, tool, usage, error, done). The rules' semantics live in one stdlib engine both sides use
    (hearth_agent/promptdef.py, checked here with it); docs/prompts.md is the reference."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] = Field(min_length=1, description="argv start; never run through a shell")
    resume: list[str] = Field(default_factory=list, description="after command to continue; has {conversation_id}")
    args: list[str] = Field(default_factory=list, description="after resume; '{prompt}' places an argument prompt")
    input: Literal["stdin", "argument"] = Field("stdin", description="the prompt on stdin, or as one argv item")
    permissions: PermissionFlags
    model: list[str] = Field(default_factory=list, description="appended when a model is asked for; has {model}")
    env: dict[str, str] = Field(default_factory=dict)
    workspace: str = Field("workspace", description="the CLI's working directory, relative to HOME")
    needs_signin: list[str] = Field(
        default_factory=list, description="regexes: the CLI says the credential is unusable"
    )
    events: list[dict[str, Any]] = Field(min_length=1, description="mapping rules (hearth_agent/promptdef.py)")

    @model_validator(mode="after")
    def _engine(self) -> PromptSection:
        try:
            parse_prompt_section(self.model_dump())
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return self


class Provider(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    display_name: str
    cli: CliSpec | None = Field(None, description="absent for CLIs that are not npm packages (example)")
    credential_files: list[CredentialFileSpec]
    settings_files: list[SettingsMerge] = Field(default_factory=list)
    status: StatusCheck | None = None
    # Not the sign-in's timeout (that is one: OAUTH_FLOW_TIMEOUT, sent in every POST /v1/login —
    # hearth_agent/contract/signin.py); kept so that existing definitions load.
    timeout: float = 600
    flows: dict[FlowName, Flow]
    prompt: PromptSection | None = Field(None, description="how its CLI answers prompts (absent: it cannot)")
    egress_domains: list[str] = Field(
        default_factory=list,
        description="domains its sign-in pages, token endpoints and API use (each covers its subdomains): under "
        "HEARTH_EGRESS_POLICY=provider the only names its sandboxes resolve",
    )

    @field_validator("egress_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        out = [d.strip().rstrip(".").lower() for d in v]
        bad = [d for d in out if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,62}\.)*[a-z0-9-]{1,63}", d)]
        if bad:
            raise ValueError(f"egress_domains: {bad[0]!r} is not a domain name (e.g. claude.ai)")
        return out

    @model_validator(mode="after")
    def _check(self) -> Provider:
        try:
            parse_provider(self.agent_document())  # the agent's own rules, written once
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        targets = [f.target for f in self.credential_files]
        if len(set(targets)) != len(targets):
            raise ValueError("credential_files targets must be unique")
        merged = [f.target for f in self.settings_files]
        if len(set(merged)) != len(merged) or set(merged) & set(targets):
            raise ValueError("settings_files targets must be unique and not credential_files targets")
        return self

    def agent_document(self) -> dict[str, Any]:
        """The definition as the agent receives it (`POST /v1/login`): plain JSON."""
        doc: dict[str, Any] = json.loads(self.model_dump_json())
        return doc

    def agent_digest(self) -> str:
        """What a sandbox's agent config names as the one definition it may run (see hearth_agent.providerdef)."""
        return definition_digest(self.agent_document())

    def modes(self) -> list[SigninMode]:
        out = []
        if FlowName.LOOPBACK in self.flows:
            out.append(SigninMode.REMOTE_BROWSER)
        if FlowName.DEVICE_CODE in self.flows or FlowName.PASTE_CODE in self.flows:
            out.append(SigninMode.DIRECT)
        return out

    def flow_for(self, mode: SigninMode | str) -> FlowName:
        """The flow a session in `mode` runs; UnsupportedMode (naming the modes this provider can do) otherwise."""
        try:
            m = SigninMode(mode)
        except ValueError:
            raise UnsupportedMode(
                f"unknown sign-in mode {mode!r}; use one of: {', '.join(x.value for x in SigninMode)}"
            ) from None
        order = [FlowName.LOOPBACK] if m is SigninMode.REMOTE_BROWSER else [FlowName.DEVICE_CODE, FlowName.PASTE_CODE]
        for flow in order:
            if flow in self.flows:
                return flow
        can = ", ".join(x.value for x in self.modes())
        raise UnsupportedMode(f"{self.display_name} cannot sign in in mode {m.value!r}; it can: {can}")
