"""`hearth config check` refuses bad proxy / CA settings through the real command line, naming the fix and never
echoing the proxy's password; the parsed forms render the credentials only where asked."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from hearth.cli.main import app
from hearth.config import LEGACY_NAMES, PLAIN_NAMES
from hearth.config.proxy import (
    ProxySettingError,
    parse_ports,
    parse_proxy,
    port_at,
    port_count,
    read_bundle,
)

PROXY = "http://alice:s3cr%40t@proxy.example.com:{port}"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HEARTH_") or name in PLAIN_NAMES or name in LEGACY_NAMES:
            monkeypatch.delenv(name)


def check(env: dict[str, str], tmp_path: Path) -> tuple[Result, list[str]]:
    args = ["config", "check", "--json", "--env-file", str(tmp_path / "absent.env")]
    res = CliRunner().invoke(app, args, env=env)
    assert "Traceback" not in res.output, res.output
    assert "s3cr" not in res.output  # the proxy's password is never shown
    out = json.loads(res.stdout)
    return res, out.get("problems", [])


def make_ca(tmp_path: Path) -> Path:
    key, crt = tmp_path / "ca.key", tmp_path / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
         str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=hearth test CA"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return crt


def test_a_valid_proxy_and_bundle_pass_and_the_password_stays_hidden(tmp_path: Path) -> None:
    env = {
        "HEARTH_EGRESS_PROXY": PROXY,
        "HEARTH_EGRESS_PROXY_PORTS": "10001-19999",
        "HEARTH_EXTRA_CA_CERTS": str(make_ca(tmp_path)),
        "HEARTH_EGRESS": "signin",
    }
    res, problems = check(env, tmp_path)
    assert res.exit_code == 0 and problems == [], res.output
    rows = {r["variable"]: r for r in json.loads(res.stdout)["settings"]}
    assert rows["HEARTH_EGRESS_PROXY"]["value"] == "<set, hidden>"
    table = CliRunner().invoke(app, ["config", "check", "--env-file", str(tmp_path / "x.env")], env=env)
    assert table.exit_code == 0 and "s3cr" not in table.output and "alice" not in table.output


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"HEARTH_EGRESS_PROXY": "http://a:b@proxy:3128", "HEARTH_EGRESS_PROXY_PORTS": "10001-19999"}, "{port}"),
        ({"HEARTH_EGRESS_PROXY": PROXY}, "HEARTH_EGRESS_PROXY_PORTS is empty; give the proxy's port range"),
        ({"HEARTH_EGRESS_PROXY": PROXY, "HEARTH_EGRESS_PROXY_PORTS": "19999-10001"}, "is empty (LO after HI)"),
        ({"HEARTH_EGRESS_PROXY": PROXY, "HEARTH_EGRESS_PROXY_PORTS": "10001-12000,11000-13000"}, "overlap"),
        ({"HEARTH_EGRESS_PROXY": PROXY, "HEARTH_EGRESS_PROXY_PORTS": "10001-99999"}, "1-65535"),
        ({"HEARTH_EGRESS_PROXY": PROXY.replace("http", "socks5"), "HEARTH_EGRESS_PROXY_PORTS": "1-2"}, "http://"),
        ({"HEARTH_EGRESS_PROXY_PORTS": "10001-19999"}, "without HEARTH_EGRESS_PROXY"),
        ({"HEARTH_EXTRA_CA_CERTS": "/nonexistent/bundle.pem"}, "cannot be read"),
        ({"HEARTH_EXTRA_CA_CERTS": "/etc/hostname"}, "holds no PEM certificate"),
        # sandboxes must be able to reach it: a way out, an address they may reach, or the bridge's open ports
        (
            {"HEARTH_EGRESS_PROXY": PROXY, "HEARTH_EGRESS_PROXY_PORTS": "10001", "HEARTH_EGRESS": "false"},
            "set HEARTH_EGRESS=signin",
        ),
        (
            {
                "HEARTH_EGRESS_PROXY": "http://u:p@10.9.8.7:{port}",
                "HEARTH_EGRESS_PROXY_PORTS": "1-2",
                "HEARTH_EGRESS": "signin",
            },
            "add 10.9.8.7/32 to HEARTH_EGRESS_ALLOW",
        ),
        (
            {
                "HEARTH_EGRESS_PROXY": "http://u:p@192.168.100.1:{port}",
                "HEARTH_EGRESS_PROXY_PORTS": "3128-3129",
                "HEARTH_FABRIC_OPEN_PORTS": "3128",
            },
            "lacks e.g. 3129",
        ),
    ],
)
def test_config_check_refuses_naming_the_fix(env: dict[str, str], words: str, tmp_path: Path) -> None:
    res, problems = check(env, tmp_path)
    assert res.exit_code == 2, res.output
    assert any(words in p for p in problems), problems


def test_an_unreadable_bundle_is_refused_for_the_user_hearth_runs_as(tmp_path: Path) -> None:
    bundle = make_ca(tmp_path)
    bundle.chmod(0)
    if os.access(bundle, os.R_OK):  # root reads anything: a directory stands in for "cannot be read"
        bundle = tmp_path
    res, problems = check({"HEARTH_EXTRA_CA_CERTS": str(bundle)}, tmp_path)
    assert res.exit_code == 2 and any("cannot be read" in p and "HEARTH_EXTRA_CA_CERTS" in p for p in problems)


def test_parsed_forms() -> None:
    t = parse_proxy(PROXY)
    assert (t.host, t.username, t.password) == ("proxy.example.com", "alice", "s3cr@t")
    assert t.url(10005) == "http://alice:s3cr@t@proxy.example.com:10005"
    assert t.shown(10005) == "http://***@proxy.example.com:10005" and "s3cr" not in repr(t)
    assert t.authorization() == "Basic YWxpY2U6czNjckB0"
    ranges = parse_ports("20000-20001, 10001-10003")
    assert port_count(ranges) == 5 and [port_at(ranges, i) for i in range(5)] == [10001, 10002, 10003, 20000, 20001]
    with pytest.raises(ProxySettingError, match="overlap"):
        parse_ports("5-10,10")


def test_a_bundle_keeps_only_its_certificates(tmp_path: Path) -> None:
    crt = make_ca(tmp_path)
    mixed = tmp_path / "mixed.pem"
    mixed.write_text("subject=CN = x\n" + crt.read_text() + "\ntrailing words\n")
    text = read_bundle(mixed)
    assert text.startswith("-----BEGIN CERTIFICATE-----") and text.count("BEGIN CERTIFICATE") == 1


@pytest.mark.parametrize(
    "env",
    [
        {"HEARTH_EGRESS_PROXY": "http://u:p@10.9.8.7:{port}", "HEARTH_EGRESS_PROXY_PORTS": "1-2",
         "HEARTH_EGRESS": "signin", "HEARTH_EGRESS_ALLOW": "10.9.8.0/24"},
        {"HEARTH_EGRESS_PROXY": "http://u:p@192.168.100.1:{port}", "HEARTH_EGRESS_PROXY_PORTS": "3128-3129",
         "HEARTH_FABRIC_OPEN_PORTS": "3128,3129"},
        {"HEARTH_EGRESS_PROXY": PROXY, "HEARTH_EGRESS_PROXY_PORTS": "10001", "HEARTH_EGRESS": "true"},
    ],
)  # fmt: skip
def test_a_reachable_proxy_passes(env: dict[str, str], tmp_path: Path) -> None:
    res, problems = check(env, tmp_path)
    assert res.exit_code == 0 and problems == [], res.output
