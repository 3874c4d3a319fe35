from __future__ import annotations

import json
from pathlib import Path

import pytest

from hearth.providers.model import FlowName, Provider, SigninMode, UnsupportedMode
from hearth.providers.registry import ProviderError, get, load


def test_builtin_definitions_load_and_keep_one_path_per_side() -> None:
    providers = load()
    assert set(providers) >= {"claude_code", "codex", "gemini_cli", "example"}
    assert providers["claude_code"].credential_files[0].source == ".claude/.credentials.json"
    assert providers["codex"].credential_files[0].target == ".codex/auth.json"
    assert providers["gemini_cli"].credential_files[0].target == ".gemini/oauth_creds.json"
    for p in providers.values():
        assert all(f.mode == 0o600 for f in p.credential_files)


def write(tmp_path: Path, name: str, body: dict[str, object]) -> Path:
    (tmp_path / f"{name}.json").write_text(json.dumps(body))
    return tmp_path


BASE = {
    "name": "x",
    "display_name": "X",
    "flows": {"loopback": {"command": ["x"]}},
    "credential_files": [{"source": "a", "target": "a"}],
}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"credential_files": [{"source": "/etc/passwd", "target": "a"}]}, "relative"),
        ({"credential_files": [{"source": "a", "target": "../../root/.ssh/authorized_keys"}]}, "contains '..'"),
        ({"flows": {"loopback": {"command": []}}}, "command"),
        ({"flows": {"loopback": {"command": ["x"], "prompts": [{"expect": "(", "send": "y"}]}}}, "prompt expect"),
        ({"flows": {}}, "flows"),
        ({"flows": {"magic_link": {"command": ["x"]}}}, "magic_link"),
        ({"flows": {"device_code": {"command": ["x"]}}}, "code_pattern must be a regex with a named group"),
        ({"flows": {"device_code": {"command": ["x"], "code_pattern": "[A-Z]+"}}}, "named group"),
        ({"flows": {"paste_code": {"command": ["x"]}}}, "code_prompt is required"),
        ({"unknown_field": 1}, "unknown_field"),
        ({"name": "y"}, "must match the file name"),
    ],
)
def test_invalid_definitions_are_refused_at_load(tmp_path: Path, change: dict[str, object], needle: str) -> None:
    with pytest.raises(ProviderError, match=needle):
        load(write(tmp_path, "x", {**BASE, **change}))


def test_unknown_provider_names_the_known_ones() -> None:
    with pytest.raises(ProviderError, match="known: claude_code, codex, example, gemini_cli"):
        get(load(), "copilot")


def test_modes_derive_from_flows() -> None:
    providers = load()
    for p in providers.values():
        assert p.modes(), p.name
    assert providers["codex"].flow_for("direct") == "device_code"  # device code preferred over a pasted code
    assert providers["claude_code"].flow_for("direct") == "paste_code"
    assert providers["gemini_cli"].flow_for(SigninMode.REMOTE_BROWSER) == "loopback"
    assert providers["gemini_cli"].flows[FlowName.LOOPBACK].display  # Gemini opens the URL itself (xdg-open)
    only_paste = Provider.model_validate({**BASE, "flows": {"paste_code": {"command": ["x"], "code_prompt": "code:"}}})
    assert only_paste.modes() == [SigninMode.DIRECT]
    with pytest.raises(UnsupportedMode, match="X cannot sign in in mode 'remote_browser'; it can: direct"):
        only_paste.flow_for("remote_browser")
    with pytest.raises(UnsupportedMode, match="unknown sign-in mode 'desktop'; use one of: remote_browser, direct"):
        only_paste.flow_for("desktop")
