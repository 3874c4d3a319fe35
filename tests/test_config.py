"""Config validation: every error names the fix; legacy names are refused; provenance is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.config import load_settings, origins, unknown_variable_problems
from hearth.errors import ConfigError


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env, env_file=None)
    return info.value.problems


def test_defaults_match_the_seed_network() -> None:
    s = load_settings({}, env_file=None)
    assert str(s.internal_network) == "192.168.100.0/22"  # a node of 1,000 sandboxes (issue 25)
    assert s.bridge_device == "br0"
    assert str(s.bridge_ip) == "192.168.100.1"
    assert (str(s.ip_pool_start), str(s.ip_pool_end)) == ("192.168.100.2", "192.168.103.254")
    assert s.api_listen == "127.0.0.1:4000"
    assert s.fabric_netns == "hearth"
    assert s.driver == "auto"
    assert s.pool_size == 1021


def test_bridge_and_pool_follow_the_network_unless_set() -> None:
    s = load_settings({"INTERNAL_NETWORK": "10.20.0.0/21"}, env_file=None)
    assert (str(s.bridge_ip), str(s.ip_pool_start), str(s.ip_pool_end), s.pool_size) == (
        "10.20.0.1",
        "10.20.0.2",
        "10.20.7.254",
        2045,
    )
    s = load_settings({"INTERNAL_NETWORK": "10.20.0.0/24", "BRIDGE_IP": "10.20.0.254"}, env_file=None)
    assert (str(s.ip_pool_start), str(s.ip_pool_end)) == ("10.20.0.1", "10.20.0.253")  # around the bridge
    s = load_settings({"INTERNAL_NETWORK": "10.20.0.0/24", "IP_POOL_END": "10.20.0.9"}, env_file=None)
    assert (str(s.bridge_ip), str(s.ip_pool_start), s.pool_size) == ("10.20.0.1", "10.20.0.2", 8)
    (msg,) = problems({"INTERNAL_NETWORK": "10.20.0.0/21", "BRIDGE_IP": "192.168.100.1"})  # set: kept and checked
    assert "BRIDGE_IP=192.168.100.1 is outside INTERNAL_NETWORK=10.20.0.0/21" in msg and "e.g. 10.20.0.1" in msg


def test_hearth_prefixed_values_are_read() -> None:
    s = load_settings(
        {"HEARTH_API_KEYS": "k1, k2,", "HEARTH_DRIVER": "netns", "HEARTH_FABRIC_NETNS": "hx"}, env_file=None
    )
    assert s.api_keys == ("k1", "k2")
    assert s.driver == "netns"
    assert s.fabric_netns == "hx"


def test_legacy_pool_name_names_the_fix() -> None:
    (msg,) = problems({"VM_IP_POOL_START": "192.168.100.2"})
    assert "VM_IP_POOL_START" in msg and "did you mean IP_POOL_START?" in msg


def test_unknown_hearth_variable_gets_a_suggestion() -> None:
    (msg,) = problems({"HEARTH_DRIVR": "netns"})
    assert "did you mean HEARTH_DRIVER?" in msg


def test_bridge_ip_outside_network() -> None:
    (msg,) = problems({"BRIDGE_IP": "192.168.0.1"})
    assert "BRIDGE_IP=192.168.0.1 is outside INTERNAL_NETWORK=192.168.100.0/22" in msg


def test_pool_leaving_the_network() -> None:
    (msg,) = problems({"IP_POOL_END": "192.168.104.10"})
    assert "IP_POOL_END=192.168.104.10 is outside INTERNAL_NETWORK" in msg


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"IP_POOL_START": "192.168.100.0"}, "network address"),
        ({"IP_POOL_END": "192.168.103.255"}, "broadcast address"),
        ({"IP_POOL_START": "192.168.100.1"}, "BRIDGE_IP"),
    ],
)
def test_pool_containing_reserved_addresses(env: dict[str, str], needle: str) -> None:
    msgs = problems(env)
    assert any(needle in m and "move the pool" in m for m in msgs), msgs


def test_pool_start_after_end() -> None:
    msgs = problems({"IP_POOL_START": "192.168.100.200", "IP_POOL_END": "192.168.100.100"})
    assert any("is after IP_POOL_END" in m and "swap" in m for m in msgs)


@pytest.mark.parametrize("name", ["this-name-is-way-too-long", "br 0", ""])
def test_invalid_bridge_name(name: str) -> None:
    msgs = problems({"BRIDGE_DEVICE": name})
    assert any("not a valid interface name" in m for m in msgs)


def test_type_errors_name_the_variable() -> None:
    msgs = problems({"HEARTH_DRIVER": "kvm"})
    assert msgs[0].startswith("HEARTH_DRIVER:")


def test_all_problems_reported_at_once() -> None:
    msgs = problems({"VM_IP_POOL_END": "x", "BRIDGE_IP": "10.0.0.1"})
    assert len(msgs) == 2


def test_dotenv_is_read_and_origin_reported(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nBRIDGE_DEVICE=hbr0\nexport HEARTH_API_KEYS='secret-key'\n")
    s = load_settings({"HEARTH_DRIVER": "netns"}, env_file=env_file)
    assert s.bridge_device == "hbr0"
    rows = {o.variable: o for o in origins(s, {"HEARTH_DRIVER": "netns"}, env_file)}
    assert rows["BRIDGE_DEVICE"].source == ".env"
    assert rows["HEARTH_DRIVER"].source == "env"
    assert rows["IP_POOL_START"].source == "default"
    assert rows["HEARTH_API_KEYS"].value == "<set, hidden>"


def test_legacy_name_in_dotenv_is_also_refused(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("VM_IP_POOL_START=192.168.100.2\n")
    with pytest.raises(ConfigError, match="did you mean IP_POOL_START"):
        load_settings({}, env_file=env_file)


def test_settings_are_frozen() -> None:
    s = load_settings({}, env_file=None)
    with pytest.raises(Exception, match="frozen"):
        s.bridge_device = "x"


def test_node_settings_name_the_fix() -> None:
    for env, words in (
        ({"HEARTH_NODE_ID": "Bad Name"}, "HEARTH_NODE_ID"),
        ({"HEARTH_NODE_ADDRESS": "10.0.0.5:4000"}, "http(s)://HOST:PORT"),
        ({"HEARTH_NODE_HEARTBEAT": "5", "HEARTH_NODE_DEAD_AFTER": "8"}, "twice HEARTH_NODE_HEARTBEAT"),
        ({"HEARTH_TOKEN_SECRET": "k1:short"}, "at least 16 bytes"),
        ({"HEARTH_TOKEN_SECRET": "k1:" + "a" * 20 + ",k1:" + "b" * 20}, "distinct non-empty key ids"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(env, env_file=None)
        assert words in str(caught.value), (env, caught.value)
    ok = load_settings(
        {"HEARTH_NODE_ID": "h0", "HEARTH_TOKEN_SECRET": "k2:" + "x" * 32 + ",k1:" + "y" * 32}, env_file=None
    )
    assert ok.node_id == "h0"


def test_variables_read_outside_the_settings_are_not_called_unread() -> None:
    """HEARTH_CLIS_CACHE (where setup installed the CLIs) is read by hearth/guest/clis.py: `hearth config check`
    must not call it unread (the node image sets it); a misspelling of it still is."""
    assert unknown_variable_problems({"HEARTH_CLIS_CACHE": "/var/cache/hearth/clis", "HEARTH_CLIS_BIN": "/x"}) == []
    (problem,) = unknown_variable_problems({"HEARTH_CLIS_CACHES": "/var/cache/hearth/clis"})
    assert problem.startswith("HEARTH_CLIS_CACHES is set but not read"), problem
