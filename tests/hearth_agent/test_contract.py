"""The controller↔agent contract (hearth_agent/contract/): each rule written once and used by both sides — the
agent-config document built and parsed, the identity the pool's hand-over replaces whole, the pasted-code check (C0
and C1 control characters refused on both sides), the one sign-in timeout, the provider validator's errors."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from pydantic import ValidationError

from hearth.fabric.slot import slot_for
from hearth.guest import configdrive, hearth_boot
from hearth.providers.model import Provider
from hearth.sandbox.base import SandboxSpec
from hearth.signin import callbacks, flow, prompts
from hearth_agent import config as agent_config
from hearth_agent import loginrun, providerdef
from hearth_agent.contract import document, routes, signin
from hearth_agent.contract.document import ConfigError, Identity
from hearth_agent.controller import Outbox
from hearth_agent.record import FrozenInstanceError

SECRET = "s" * 24
DIGESTS = ["a" * 64, "b" * 64]


def built(**kw: object) -> dict[str, object]:
    return document.build(SECRET, "sess-1", DIGESTS, "http://192.168.100.1:8700", **kw)  # type: ignore[arg-type]


def test_build_then_parse_round_trips() -> None:
    doc = built(
        ip="192.168.100.7",
        screen="1024x768x24",
        start_url="https://example.test/",
        chromium=False,
        browser_on_request=True,
        desktop=False,
        vnc_server="x11vnc",
        agent_port=8081,
        rfb_port=5901,
        nameservers=["192.168.100.1"],
        egress_proxy={"listen_port": 3128, "upstream": None, "allow": []},
        extra_ca_certs="PEM",
    )
    cfg = document.parse(doc)
    assert cfg.identity == Identity(SECRET, "sess-1", tuple(DIGESTS))
    assert (cfg.ip, cfg.screen, cfg.start_url, cfg.callback) == (
        "192.168.100.7",
        "1024x768x24",
        "https://example.test/",
        "http://192.168.100.1:8700",
    )
    assert (cfg.chromium, cfg.browser_on_request, cfg.desktop, cfg.vnc_server) == (False, True, False, "x11vnc")
    assert (cfg.agent_port, cfg.rfb_port) == (8081, 5901)
    assert cfg.raw["egress_proxy"] == {"listen_port": 3128, "upstream": None, "allow": []}
    assert cfg.raw["extra_ca_certs"] == "PEM" and cfg.raw["nameservers"] == ["192.168.100.1"]
    assert not set(document.IDENTITY_KEYS) & set(cfg.raw)  # the identity lives in one place only
    assert SECRET not in repr(cfg)
    assert agent_config.parse_config is document.parse  # the agent parses with the contract


def test_a_vm_guest_completes_the_document_with_its_kernels_address() -> None:
    doc = built()
    assert "ip" not in doc
    placed = document.locate(doc, ip="192.168.100.9", default_callback="http://192.168.100.1:9999")
    assert placed["ip"] == "192.168.100.9" and placed["callback"] == "http://192.168.100.1:8700"  # the drive's wins
    assert document.locate({**doc, "callback": ""}, default_callback="http://gw:1")["callback"] == "http://gw:1"
    assert document.parse(placed).ip == "192.168.100.9"


def test_every_driver_gives_its_agent_the_contracts_document() -> None:
    slot = slot_for(
        "hearth", IPv4Network("192.168.100.0/24"), IPv4Address("192.168.100.1"), IPv4Address("192.168.100.2"), 3
    )
    spec = SandboxSpec("sess", slot, Path("/nonexistent"), SECRET, providers=tuple(DIGESTS), chromium=False)
    drive = configdrive.decode(configdrive.encode(configdrive.document(spec, 8700)))  # a VM's config drive
    assert "ip" not in drive  # a VM guest's address comes from its kernel's ip= argument
    cmdline = hearth_boot.parse_cmdline(f"ip={slot.ip}::{slot.gateway}:255.255.255.0::eth0:off")
    cfg = document.parse(hearth_boot.agent_config(drive, cmdline))
    assert cfg.identity == Identity(SECRET, "sess", tuple(DIGESTS)) and cfg.ip == str(slot.ip)
    assert cfg.callback == f"http://{slot.gateway}:8700" and cfg.chromium is False
    assert set(drive) == set(built())  # the same keys as the contract builds


def test_problems_are_all_named_without_the_secret() -> None:
    with pytest.raises(ConfigError) as err:
        document.parse({"ip": "nope", "secret": "short-secret", "agent_port": 0, "providers": "x", "vnc_server": "vnc"})
    text = str(err.value)
    for needle in ("ip must be", "secret must be", "agent_port must be", "providers must be", "vnc_server must be"):
        assert needle in text
    assert "short-secret" not in text


def test_the_identity_is_immutable_and_replaced_whole() -> None:
    cfg = document.parse(built(ip="127.0.0.1"))
    with pytest.raises(FrozenInstanceError):
        cfg.identity.secret = "x" * 24  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        cfg.identity = Identity("x" * 24)  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.raw["secret"] = "x" * 24  # type: ignore[index]
    new = Identity("n" * 24, "sess-2", ("c" * 64,))
    assert document.parse_identity(document.personalise_body(new)) == new
    assert new.allows("c" * 64) and not new.allows(DIGESTS[0]) and Identity(SECRET).allows("anything")
    with pytest.raises(ValueError, match="secret must be") as err:
        document.parse_identity({"secret": "short", "session_id": "s", "providers": []})
    assert "short" not in str(err.value).replace("secret must be", "")


C1 = ["\x80", "\x85", "\x9b", "\x9f"]  # 0x9b: CSI, an escape sequence in one character
C0 = ["\x00", "\x1b", "\r", "\n", "\t", "\x7f"]


@pytest.mark.parametrize("bad", C0 + C1)
def test_control_characters_are_refused_on_both_sides(bad: str) -> None:
    # the controller checks a pasted code before it sends it; the agent again before typing it into the CLI
    agent_check = vars(loginrun)["check_code"]  # what LoginRun.submit_code checks with
    controller_check = vars(flow)["check_code"]  # what SignInFlow.submit_code checks with
    assert controller_check is signin.check_code and agent_check is signin.check_code
    for check in (controller_check, agent_check):
        with pytest.raises(signin.CodeRefused, match="control characters") as err:
            check(f"ABCD{bad}EFGH")
        assert err.value.status == 400
    assert signin.check_code("  ABCD-\u00a0EFGH  ") == "ABCD-\u00a0EFGH"  # U+00A0 is not a control character


def test_the_sign_in_timeout_is_the_requests() -> None:
    body = signin.login_body({"name": "x"}, "loopback", timeout=42.5, env={"HEARTH_X": "1"}, probe_page=True)
    assert body == {
        "provider": {"name": "x"},
        "flow": "loopback",
        "timeout": 42.5,
        "env": {"HEARTH_X": "1"},
        "probe_page": True,
    }
    assert signin.login_timeout(body) == 42.5
    assert signin.login_timeout({}) == signin.SIGNIN_TIMEOUT
    for bad in (0, -1, "10", True, None):
        with pytest.raises(ValueError, match="timeout must be"):
            signin.login_timeout({"timeout": bad})


def test_flows_are_one_list() -> None:
    assert vars(providerdef)["FLOWS"] is signin.FLOWS and vars(prompts)["FLOWS"] is signin.FLOWS


BASE: dict[str, object] = {
    "name": "x",
    "display_name": "X",
    "flows": {"loopback": {"command": ["x"]}},
    "credential_files": [{"source": "a", "target": "a"}],
}
ERRORS = [
    ({"name": "X!"}, "provider.name must match ^[a-z0-9_]{1,64}$"),
    ({"flows": {}}, "provider.flows must be an object with at least one of: loopback, paste_code, device_code"),
    ({"flows": {"device_code": {"command": ["x"], "code_pattern": "[A-Z]+"}}},
     "provider.flows.device_code.code_pattern must be a regex with a named group (?P<code>...)"),
    ({"flows": {"paste_code": {"command": ["x"]}}},
     "provider.flows.paste_code.code_prompt is required (a regex matching the screen asking for the code)"),
    ({"flows": {"loopback": {"command": []}}}, "provider.flows.loopback.command must be a non-empty list of strings"),
    ({"credential_files": [{"source": "/etc/passwd", "target": "a"}]},
     "'/etc/passwd' is absolute; paths are relative to the home directory"),
    ({"credential_files": [{"source": "a", "target": "a", "mode": 0o1777}]},
     "credential file mode must be an integer between 0 and 0o777"),
    ({"timeout": 0}, "provider.timeout must be a positive number of seconds"),
    ({"cli": {"package": "x", "bin": "x y"}}, "provider.cli must be {package, bin} with a plain binary name"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "message"), ERRORS)
def test_one_validator_the_same_errors_on_both_sides(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as agent_side:
        providerdef.parse_provider({**BASE, **change})
    assert str(agent_side.value) == message  # the agent's messages, unchanged
    with pytest.raises(ValidationError, match=re.escape(message)):  # the controller's model says the same
        Provider.model_validate({**BASE, **change})


def test_routes_are_unique_api_paths_and_pushes_reach_the_listener() -> None:
    paths = [v for k, v in vars(routes).items() if k.isupper() and not k.startswith("PUSH_")]
    assert len(paths) == len(set(paths)) and all(p == "/health" or p.startswith("/v1/") for p in paths)
    pushed = Outbox("http://192.168.100.1:8700/", "sess 1", SECRET).base  # where the agent pushes
    assert pushed == "http://192.168.100.1:8700/agent/v1/sessions/sess%201"
    for kind in routes.PUSH_KINDS:  # what the controller's listener takes
        assert callbacks._ROUTE.fullmatch(f"{routes.PUSH_PREFIX}/sess-1/{kind}")
