"""The pure parts of egress: who goes out, which names, what config check refuses, the ruleset and its counters."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings, load_settings
from hearth.egress import rules
from hearth.egress.dns import host_nameservers
from hearth.egress.policy import BLOCKED, allow_problems, name_allowed, resolv_conf, wants_egress
from hearth.errors import ConfigError

Make = Callable[..., Settings]


@pytest.fixture
def make(tmp_path: Path) -> Make:
    def build(**env: str) -> Settings:
        return load_settings({"HEARTH_DATA_DIR": str(tmp_path), **env}, env_file=None)

    return build


def test_the_default_is_sign_in_and_cli_sandboxes(make: Make) -> None:
    s = make()
    assert s.egress == "signin" and s.egress_policy == "open"
    assert wants_egress(s, cli=True, provider=None) and wants_egress(s, cli=False, provider="codex")
    assert not wants_egress(s, cli=False, provider=None)
    assert make(HEARTH_EGRESS="true").egress is True and make(HEARTH_EGRESS="false").egress is False


def test_names_within_a_domain_only() -> None:
    domains = ("claude.ai", "Anthropic.com.")
    assert name_allowed("claude.ai.", domains) and name_allowed("api.ANTHROPIC.com", domains)
    assert not name_allowed("evilclaude.ai", domains) and not name_allowed("claude.ai.evil.test", domains)
    assert not name_allowed("anything", ())


def test_config_check_refuses_an_allow_entry_covering_the_fabric(make: Make) -> None:
    for entry, what in (("192.168.0.0/16", "INTERNAL_NETWORK"), ("169.254.0.0/16", "HEARTH_UPLINK_NETWORK"),
                        ("192.168.100.1/32", "INTERNAL_NETWORK")):  # fmt: skip
        with pytest.raises(ConfigError) as err:
            make(HEARTH_EGRESS_ALLOW=entry)
        text = str(err.value)
        assert f"HEARTH_EGRESS_ALLOW entry {entry} covers the fabric ({what}" in text and "e.g." in text, text
    ok = make(HEARTH_EGRESS_ALLOW="10.20.0.0/16, 172.20.0.0/16")
    assert ok.egress_allow == (IPv4Network("10.20.0.0/16"), IPv4Network("172.20.0.0/16"))
    assert allow_problems(ok) == []


def test_the_ruleset_blocks_the_ranges_and_counts_per_sandbox(make: Make) -> None:
    s = make(HEARTH_EGRESS_ALLOW="10.20.0.0/16", HEARTH_EGRESS_BANDWIDTH="0")
    objs = rules.ruleset(s, [IPv4Address("192.168.100.7")])
    sets = {o["set"]["name"]: o["set"] for o in objs if "set" in o}
    assert sets["granted"]["elem"] == ["192.168.100.7"]
    assert sets["allow"]["elem"] == [{"prefix": {"addr": "10.20.0.0", "len": 16}}]
    blocked = {(e["prefix"]["addr"], e["prefix"]["len"]) for e in sets["blocked"]["elem"]}
    assert {("169.254.0.0", 16), ("10.0.0.0", 8), ("100.64.0.0", 10), ("127.0.0.0", 8)} <= blocked
    assert len(blocked) == len(BLOCKED)
    assert all(sets[f"drop_{r}"]["stmt"] == [{"counter": None}] for r in rules.REASONS)
    assert "bw_up" not in str([o for o in objs if "rule" in o])  # bandwidth 0: unlimited, no rule
    listing: list[dict[str, Any]] = [{"set": {"name": "drop_blocked", "elem": [{"elem": {"val": "192.168.100.7", "counter": {"packets": 3}}}]}},
               {"set": {"name": "drop_fabric", "elem": [{"elem": {"val": "192.168.100.7", "counter": {"packets": 0}}}]}},
               {"set": {"name": "granted", "elem": ["192.168.100.7"]}}]  # fmt: skip
    assert rules.drops(listing) == {"192.168.100.7": {"blocked": 3}}
    assert rules.set_elements(listing, "granted") == ["192.168.100.7"]


def test_resolv_conf_and_the_hosts_nameservers(make: Make, tmp_path: Path) -> None:
    assert resolv_conf(make()).startswith("nameserver 192.168.100.1\n")
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 10.0.0.2\nnameserver ::1\nnameserver 9.9.9.9\nsearch x\n")
    assert host_nameservers(conf) == ["10.0.0.2", "9.9.9.9"]
    assert host_nameservers(tmp_path / "absent") == []
