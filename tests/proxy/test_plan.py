"""What a sandbox is given for egress, for both driver kinds: the agent-config document (netns pipe, VM config drive)
carries the local proxy's port and the user's upstream URL only when a proxy is configured, and the extra CAs; the
spec's repr never shows the URL; Chromium's policy points at the local proxy (no credential) and trusts the extra CAs
as DER; a VM guest's PID 1 writes the same policy from the drive."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Callable
from pathlib import Path

from hearth.config import Settings
from hearth.fabric.ipam import Ipam
from hearth.guest import configdrive
from hearth.lifecycle.egress import domains
from hearth.lifecycle.manager import SandboxManager
from hearth.sandbox.base import SandboxSpec
from hearth.sandbox.netns import NetnsDriver
from hearth.standins.standin import _certs
from hearth.store.db import Database
from hearth.vault.keys import KeyRing, MasterKey
from hearth_agent.policy import POLICY, policy, write_policy
from tests.sandbox.specs import spec_for

SECRET = "Plan-pw-3"


def test_the_document_carries_the_proxy_and_the_cas_only_when_configured(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings()
    ca = _certs(("x.test",))[0].decode()
    plain = configdrive.document(spec_for(s, 1), s.callback_port)
    assert plain["egress_proxy"] is None and plain["extra_ca_certs"] == ""
    spec: SandboxSpec = spec_for(
        s, 1, local_proxy=True, egress_proxy=f"http://alice:{SECRET}@proxy.test:10007", extra_ca=ca
    )
    assert SECRET not in repr(spec)
    doc = configdrive.decode(configdrive.encode(configdrive.document(spec, s.callback_port)))  # a VM's drive
    assert doc["egress_proxy"] == {
        "listen_port": 3128,
        "upstream": f"http://alice:{SECRET}@proxy.test:10007",
        "allow": [],
    }
    allowed = spec_for(s, 1, local_proxy=True, egress_proxy="http://p.test:10007", egress_allow=("10.20.0.0/16",))
    got = configdrive.decode(configdrive.encode(configdrive.document(allowed, s.callback_port)))
    assert got["egress_proxy"]["allow"] == ["10.20.0.0/16"]  # HEARTH_EGRESS_ALLOW reaches the agent's proxy
    assert doc["extra_ca_certs"] == ca


def test_chromiums_policy(tmp_path: Path) -> None:
    assert policy() == POLICY
    ca = _certs(("x.test",))[0].decode()
    got = json.loads(Path(write_policy(str(tmp_path), 3128, ca)).read_text())
    assert got["ProxySettings"] == {"ProxyMode": "fixed_servers", "ProxyServer": "http://127.0.0.1:3128"}
    assert [base64.b64decode(c) for c in got["CACertificates"]] == [ssl.PEM_cert_to_DER_cert(ca)]
    assert {k: got[k] for k in POLICY} == POLICY  # the lock-down stays


def test_the_manager_builds_specs_with_the_proxy_settings(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(_certs(("x.test",))[0])
    s = make_settings(
        HEARTH_EGRESS_PROXY=f"http://alice:{SECRET}@proxy.test:{{port}}",
        HEARTH_EGRESS_PROXY_PORTS="10001-10002",
        HEARTH_EXTRA_CA_CERTS=str(ca_file),
        HEARTH_EGRESS="signin",
        HEARTH_EGRESS_ALLOW="10.20.0.0/16",
    )
    s.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(s.db_url, s.data_dir)
    try:
        mgr = SandboxManager(s, db, NetnsDriver(s), Ipam(s, db), KeyRing([MasterKey.of(bytes(32))]))
        spec = mgr.spec("owner-1", mgr.ipam.slot(0), egress_proxy="http://alice:pw@proxy.test:10002")
        assert spec.local_proxy and spec.egress_proxy.endswith(":10002") and "BEGIN CERTIFICATE" in spec.extra_ca
        assert spec.egress_allow == ("10.20.0.0/16",)
        assert configdrive.document(spec, s.callback_port)["egress_proxy"]["allow"] == ["10.20.0.0/16"]
    finally:
        db.dispose()


def test_the_proxys_name_may_be_resolved_under_the_provider_policy(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(
        HEARTH_EGRESS_PROXY="http://alice:pw@proxy.corp.test:{port}",
        HEARTH_EGRESS_PROXY_PORTS="10001-10002",
        HEARTH_EGRESS="signin",
        HEARTH_EGRESS_POLICY="provider",
    )
    s.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(s.db_url, s.data_dir)
    try:
        ring = KeyRing([MasterKey.of(bytes(32))])
        mgr = SandboxManager(s, db, NetnsDriver(s), Ipam(s, db), ring, egress_domains={"d1": ("claude.ai",)})
        assert domains(s, mgr.egress_domains, mgr.egress, ("d1",)) == ("claude.ai", "proxy.corp.test")
        assert domains(s, mgr.egress_domains, mgr.egress, ()) == ("claude.ai", "proxy.corp.test")  # a CLI sandbox's
    finally:
        db.dispose()
