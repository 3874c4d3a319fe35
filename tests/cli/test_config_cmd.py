"""`hearth config check` through the real command line: every documented variable (the README's configuration
table), with a valid and an invalid value, passes or names the fix; every variable hearth reads, with junk, never
shows a traceback (deploy/hearth.service runs the check before starting: a crash there is a service that cannot
start)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from hearth.cli.main import app
from hearth.config import LEGACY_NAMES, PLAIN_NAMES, known_variables

README = Path(__file__).resolve().parents[2] / "README.md"
KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes
WHSEC = "whsec_" + KEY

# variable → (a valid value, an invalid value, words the problem must contain besides the variable's name)
CASES: dict[str, tuple[str, str, str]] = {
    "INTERNAL_NETWORK": ("192.168.0.0/16", "10.77.0.0/33", "INTERNAL_NETWORK"),
    "BRIDGE_DEVICE": ("hbr0", "a bridge", "use e.g. br0"),
    "BRIDGE_IP": ("192.168.100.1", "192.168.7.1", "set BRIDGE_IP to an address in"),
    "IP_POOL_START": ("192.168.100.10", "192.168.100.1", "move the pool"),
    "IP_POOL_END": ("192.168.100.200", "192.168.104.9", "keep the pool inside the network"),
    "HEARTH_API_LISTEN": ("127.0.0.1:4100", "127.0.0.1:99999", "e.g. 127.0.0.1:4000"),
    "HEARTH_API_KEYS": ("k1,k2", "", ""),  # empty is valid (no key): the invalid case is skipped below
    "HEARTH_DATA_DIR": ("/var/lib/hearth-test", "", ""),
    "HEARTH_DATABASE_URL": ("postgresql+psycopg://u:pw@db/hearth", "mysql://u@db/x", "PostgreSQL or SQLite URL"),
    "HEARTH_FABRIC_NETNS": ("hx1", "bad name", "valid namespace name"),
    "HEARTH_DRIVER": ("netns", "kvm", "'firecracker'"),
    "HEARTH_EGRESS": ("signin", "maybe", "bool"),
    "HEARTH_SIGNIN_MODE": ("direct", "phone", "'remote_browser'"),
    "MAX_BROWSER_SESSIONS": ("4", "-1", "greater than or equal to 0"),
    "MAX_SESSIONS_PER_USER": ("1", "many", "integer"),
    "HEARTH_MAX_SESSIONS_PER_NODE": ("8", "-1", "greater than or equal to 0"),
    "HEARTH_MIN_FREE_MB": ("512", "lots", "integer"),
    "HEARTH_NODE_ID": ("h1", "Bad Name", "must be 1-63"),
    "HEARTH_NODE_ADDRESS": ("http://10.0.0.5:4000", "10.0.0.5:4000", "http(s)://HOST:PORT"),
    "HEARTH_NODE_HEARTBEAT": ("1", "0", "greater than 0"),
    "HEARTH_NODE_DEAD_AFTER": ("30", "3", "twice HEARTH_NODE_HEARTBEAT"),
    "HEARTH_TOKEN_SECRET": ("k1:" + "x" * 32, "k1:short", "at least 16 bytes"),
    "HEARTH_VNC_SERVER": ("x11vnc", "tightvnc", "'xvnc'"),
    "HEARTH_MAX_BOOTS": ("2", "0", "greater than or equal to 1"),
    "HEARTH_BROWSER_START": ("at_boot", "later", "'queued'"),
    "HEARTH_POOL_SIZE": ("remote_browser:2,direct:1", "phone:2", "MODE:COUNT"),
    "HEARTH_POOL_MAX_IDLE": ("60", "-5", "greater than 0"),
    "HEARTH_SANDBOX_UID_BASE": ("3000000", "12", "greater than or equal to 1000"),
    "HEARTH_FABRIC_OPEN_PORTS": ("8443,9000", "70000", "1-65535"),
    "HEARTH_SCREEN": ("800x600x24", "big", "WIDTHxHEIGHTxDEPTH"),
    "HEARTH_PUBLIC_URL": ("https://example.com/hearth", "example.com", "http(s) URL"),
    "HEARTH_MASTER_KEY": (KEY, "abc", "32 bytes"),
    "HEARTH_EMBED_ORIGINS": ("https://app.example.com,https://b.example.com", "app.example.com/x", "not an origin"),
    "HEARTH_WEBHOOK_URL": ("https://app.example.com/hooks", "hooks", "http(s) URL"),
    "HEARTH_WEBHOOK_SECRET": (WHSEC, "secret", "whsec_"),
    "HEARTH_WEBHOOK_BACKOFF_MAX": ("60", "0", "greater than or equal to 1"),
}
CASES |= {
    "HEARTH_NODE_CREDENTIAL": ("n2:" + "a" * 32 + ",n1:" + "b" * 32, "n1:short", "at least 16 bytes"),
    "HEARTH_NODE_TLS_CERT": ("/etc/passwd", "/nonexistent/node.pem", "not a readable file"),
    "HEARTH_NODE_TLS_KEY": ("/etc/passwd", "/nonexistent/node.key", "not a readable file"),
    "HEARTH_NODE_CA": ("/etc/passwd", "/nonexistent/ca.pem", "not a readable file"),
    "HEARTH_METRICS_LISTEN": ("127.0.0.1:9400", "127.0.0.1:0", "e.g. 127.0.0.1:9400"),
    "HEARTH_SANDBOX_CGROUP": ("/sys/fs/cgroup/hearth-sandboxes", "relative/cgroup", "must be an absolute path"),
    "HEARTH_SANDBOX_MEMORY_MAX": ("7680Mi", "8 gigs", "valid integer"),
    "HEARTH_SANDBOX_CPU_MAX": ("6", "0", "greater than 0"),
    "HEARTH_EGRESS_PROXY": ("http://u:pw@proxy.example.com:{port}", "http://u:pw@proxy:3128", "{port}"),
    "HEARTH_EGRESS_PROXY_PORTS": ("10001-19999", "19999-10001", "without HEARTH_EGRESS_PROXY"),
    "HEARTH_EXTRA_CA_CERTS": ("/etc/ssl/certs/ISRG_Root_X1.pem", "/nonexistent/ca.pem", "cannot be read"),
    "HEARTH_EGRESS_ALLOW": ("10.20.0.0/16,172.20.0.0/16", "192.168.0.0/16", "covers the fabric"),
    "HEARTH_EGRESS_POLICY": ("provider", "strict", "'provider'"),
    "HEARTH_DNS_UPSTREAM": ("9.9.9.9,1.1.1.1", "dns.example", "IPv4"),
    "HEARTH_EGRESS_CONN_MAX": ("512", "0", "greater than or equal to 1"),
    "HEARTH_EGRESS_CONN_RATE": ("100", "0", "greater than or equal to 1"),
    "HEARTH_EGRESS_BANDWIDTH": ("0", "-1", "greater than or equal to 0"),
    "HEARTH_UPLINK_NETNS": ("hearth-up", "bad name!", "valid namespace name"),
}
# what a variable's valid value needs beside it
WITH = {
    "HEARTH_WEBHOOK_URL": {"HEARTH_WEBHOOK_SECRET": WHSEC},
    "HEARTH_NODE_TLS_CERT": {"HEARTH_NODE_TLS_KEY": "/etc/passwd"},
    "HEARTH_NODE_TLS_KEY": {"HEARTH_NODE_TLS_CERT": "/etc/passwd"},
    "HEARTH_SANDBOX_MEMORY_MAX": {"HEARTH_SANDBOX_CGROUP": "/sys/fs/cgroup/hearth-sandboxes"},
    "HEARTH_SANDBOX_CPU_MAX": {"HEARTH_SANDBOX_CGROUP": "/sys/fs/cgroup/hearth-sandboxes"},
    "HEARTH_EGRESS_PROXY": {"HEARTH_EGRESS_PROXY_PORTS": "10001-19999", "HEARTH_EGRESS": "signin"},
    "HEARTH_EGRESS_PROXY_PORTS": {
        "HEARTH_EGRESS_PROXY": "http://u:pw@proxy.example.com:{port}",
        "HEARTH_EGRESS": "signin",
    },
}
JUNK = ["", "x", "-1", "1e999", "99999999999999999999", "[/]", "a,b,,", "k:v", "é\u2028"]


def documented() -> list[str]:
    """The variables named in the first column of the README's configuration table."""
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for line in section.splitlines():
        if line.startswith("| `"):
            names += re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1])
    return names


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check reads the whole environment: only what a test gives it counts."""
    for name in list(os.environ):
        if name.startswith("HEARTH_") or name in PLAIN_NAMES or name in LEGACY_NAMES:
            monkeypatch.delenv(name)


def run(env: dict[str, str], tmp_path: Path, *, as_json: bool = False) -> Result:
    args = ["config", "check", "--env-file", str(tmp_path / "absent.env"), *(["--json"] if as_json else [])]
    res = CliRunner().invoke(app, args, env=env)
    assert "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (env, repr(res.exception), res.output)
    assert res.exit_code in (0, 2), (env, res.exit_code, res.output)
    return res


def test_the_readme_documents_only_variables_that_are_read_and_each_has_a_case() -> None:
    names = documented()
    assert "HEARTH_FABRIC_OPEN_PORTS" in names and len(names) >= 25
    known = known_variables()
    assert [n for n in names if n not in known] == []
    missing = [n for n in names if n not in CASES]
    assert missing == [], f"add a valid and an invalid value for {missing} to CASES in {__file__}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_variable_passes_with_a_valid_value_and_names_the_fix_for_an_invalid_one(
    name: str, tmp_path: Path
) -> None:
    good, bad, words = CASES[name]
    ok = run({name: good, **WITH.get(name, {})}, tmp_path, as_json=True)
    assert ok.exit_code == 0, ok.output
    rows = {r["variable"]: r for r in json.loads(ok.stdout)["settings"]}
    assert rows[name]["source"] == "env"
    assert "pw@" not in ok.stdout and KEY not in ok.stdout  # credentials are never shown
    table = run({name: good, **WITH.get(name, {})}, tmp_path)
    assert table.exit_code == 0 and "configuration OK" in table.output, table.output
    if not words:
        return
    refused = run({name: bad}, tmp_path, as_json=True)
    assert refused.exit_code == 2, refused.output
    problems = json.loads(refused.stdout)["problems"]
    assert any(name in p and words in p for p in problems), problems
    shown = run({name: bad}, tmp_path)
    assert shown.exit_code == 2 and "configuration problems" in shown.output


def test_open_ports_are_shown_not_a_type_error(tmp_path: Path) -> None:
    """The crash of issue 21: HEARTH_FABRIC_OPEN_PORTS (integers) joined as strings for the table."""
    res = run({"HEARTH_FABRIC_OPEN_PORTS": "8443, 9000"}, tmp_path)
    assert res.exit_code == 0 and "8443,9000" in res.output, res.output


@pytest.mark.parametrize("name", sorted(known_variables()))
def test_junk_in_any_variable_passes_or_names_the_variable(name: str, tmp_path: Path) -> None:
    for value in JUNK:
        for as_json in (False, True):
            res = run({name: value}, tmp_path, as_json=as_json)
            if res.exit_code == 2 and as_json:
                problems = json.loads(res.stdout)["problems"]
                assert problems and all(p.strip() for p in problems), res.stdout
                assert any(name in p for p in problems), (name, value, problems)


VALUES = sorted({v for good, bad, _ in CASES.values() for v in (good, bad)} | set(JUNK))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(env=st.dictionaries(st.sampled_from(sorted(known_variables())), st.sampled_from(VALUES), max_size=6))
def test_any_combination_passes_or_names_the_fix(env: dict[str, str], tmp_path: Path) -> None:
    """Every setting combination the check is given (any variables, each valid, invalid or junk): it passes, or
    exits 2 listing problems — never a traceback."""
    res = run(env, tmp_path, as_json=True)
    out = json.loads(res.stdout)
    assert out["ok"] is (res.exit_code == 0)
    if res.exit_code == 2:
        assert out["problems"] and all(p.strip() for p in out["problems"])
    run(env, tmp_path)  # the table too


def test_a_dotenv_file_that_is_not_text_names_the_fix(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"HEARTH_DRIVER=netns\n\xff\xfe\n")
    res = CliRunner().invoke(app, ["config", "check", "--json", "--env-file", str(env_file)])
    assert res.exit_code == 2 and isinstance(res.exception, SystemExit | None), res.output
    assert json.loads(res.stdout)["problems"] == [
        f"the dotenv file {env_file} is not UTF-8 text; fix it or point --env-file elsewhere"
    ]
