"""deploy/kubernetes: edge → node over TLS and the node's /metrics listener, as wired. The node DaemonSet's own init
container command runs (hearth's real CLI) against a CA laid out as the documented `kubectl create secret` makes it;
the node's settings as the manifest writes them load, and a TLS handshake with the issued pair verifies against the
CA file the edges are given, for the address the node registers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hearth.config import Settings
from tests.cluster.test_nodecert import handshake, make_ca
from tests.deploy.test_kubernetes import ROOT, container, env_of, pod

HOST_IP = "127.0.0.1"  # what status.hostIP gives the pod; loopback here


def expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], value)


def secret_keys_in_docs() -> set[str]:
    """The keys of the hearth-node-ca Secret as docs/kubernetes.md creates it (install and each rotation step)."""
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    commands = re.findall(r"create secret generic hearth-node-ca((?:[^\n]*\\\n)*[^\n]*)", text)
    keys = [set(re.findall(r"--from-file=([\w.]+)=", c)) for c in commands]
    assert len(keys) >= 4 and all(k == keys[0] for k in keys), keys  # install + the three rotation steps
    return keys[0]


def mounted(c: dict[str, Any], volumes: dict[str, Path]) -> Callable[[str], str]:
    """Map a path inside container `c` to where its volume lives in this test."""
    table = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"] if m["name"] in volumes}

    def at(path: str) -> str:
        for mount, there in table.items():
            if path == mount or path.startswith(mount + "/"):
                return str(there / path.removeprefix(mount).lstrip("/"))
        raise AssertionError(f"{path} is on no volume of container {c['name']}")

    return at


def test_every_variable_reference_is_defined_before_it() -> None:
    """Kubernetes expands $(VAR) only from variables listed earlier: otherwise it stays literal."""
    for kind in ("DaemonSet", "Deployment"):
        spec = pod(kind)
        for c in spec["containers"] + spec.get("initContainers", []):
            seen: set[str] = set()
            for e in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                    assert ref in seen, f"{kind}/{c['name']}: {e['name']} uses $({ref}) before it is defined"
                seen.add(e["name"])
            for arg in c.get("command", []) + c.get("args", []):
                for ref in re.findall(r"\$\((\w+)\)", arg):
                    assert ref in seen, f"{kind}/{c['name']}: {arg} uses an undefined $({ref})"


def test_only_the_init_container_sees_the_ca_key() -> None:
    spec = pod("DaemonSet")
    with_key = {
        v["name"] for v in spec["volumes"] if any(i["key"] == "ca.key" for i in v.get("secret", {}).get("items", []))
    }
    assert len(with_key) == 1
    (init,) = spec["initContainers"]
    assert {m["name"] for m in init["volumeMounts"]} & with_key == with_key
    assert not {m["name"] for m in container("DaemonSet")["volumeMounts"]} & with_key
    for v in pod("Deployment")["volumes"]:
        if "secret" in v and v["secret"]["secretName"] == "hearth-node-ca":
            assert [i["key"] for i in v["secret"]["items"]] == ["trust.crt"]
    # every key the manifests read from the Secret is one the documented command creates
    used = {
        i["key"]
        for kind in ("DaemonSet", "Deployment")
        for v in pod(kind)["volumes"]
        if v.get("secret", {}).get("secretName") == "hearth-node-ca"
        for i in v["secret"]["items"]
    }
    assert used == secret_keys_in_docs() == {"ca.crt", "ca.key", "trust.crt"}


def test_the_node_pod_issues_its_certificate_and_the_edges_verify_it(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # the Secret hearth-node-ca, as docs/kubernetes.md creates it (a fresh CA: trust.crt is its certificate)
    ca_crt, ca_key = make_ca(tmp_path / "made", "ca")
    secret = tmp_path / "secret"
    secret.mkdir()
    for name, source in (("ca.crt", ca_crt), ("ca.key", ca_key), ("trust.crt", ca_crt)):
        (secret / name).write_bytes(source.read_bytes())
    spec = pod("DaemonSet")
    volumes = {v["name"]: secret for v in spec["volumes"] if "secret" in v}
    volumes |= {v["name"]: tmp_path / v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for v in spec["volumes"]:
        if "emptyDir" in v:
            (tmp_path / v["name"]).mkdir()

    (init,) = spec["initContainers"]
    init_env = {"HOST_IP": HOST_IP}
    at = mounted(init, volumes)
    argv = [expand(a, init_env) for a in init["command"]]
    argv = [re.sub(r"^(--[\w-]+=)(/.*)$", lambda m: m[1] + at(m[2]), a) for a in argv]
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    node = container("DaemonSet")
    at = mounted(node, volumes)
    node_env = {"HOST_IP": HOST_IP}
    for name, value in env_of("DaemonSet").items():
        node_env[name] = expand(value, node_env)
    tls = {k: at(node_env[k]) for k in ("HEARTH_NODE_TLS_CERT", "HEARTH_NODE_TLS_KEY", "HEARTH_NODE_CA")}
    s = make_settings(**tls, HEARTH_NODE_ADDRESS=node_env["HEARTH_NODE_ADDRESS"])  # hearth's own checks pass
    assert s.node_address == f"https://{HOST_IP}:4000"

    edge = container("Deployment")
    edge_volumes = {v["name"]: secret for v in pod("Deployment")["volumes"] if "secret" in v}
    edge_ca = mounted(edge, edge_volumes)(env_of("Deployment")["HEARTH_NODE_CA"])
    assert s.node_tls_cert is not None
    host = urlsplit(s.node_address).hostname
    assert host == HOST_IP
    handshake(s.node_tls_cert.parent, Path(edge_ca), host)  # raises unless it verifies for that address


def test_metrics_are_served_on_the_host_ip_with_scrape_annotations() -> None:
    """The API port's /metrics needs an API key; the node's own listener serves it without one, on the host IP only
    (under hostNetwork, 0.0.0.0 would be every interface of the host), on a declared port Prometheus is told of."""
    listen = env_of("DaemonSet")["HEARTH_METRICS_LISTEN"]
    host, _, port = listen.rpartition(":")
    assert host == "$(HOST_IP)"
    ports = {p["name"]: p["containerPort"] for p in container("DaemonSet")["ports"]}
    assert ports["metrics"] == int(port) != ports["api"]
    from tests.deploy.test_kubernetes import by_kind

    notes = by_kind("DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == port
    assert notes["prometheus.io/path"] == "/metrics" and notes["prometheus.io/scheme"] == "http"
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert f"HEARTH_METRICS_LISTEN=$(HOST_IP):{port}" in docs
