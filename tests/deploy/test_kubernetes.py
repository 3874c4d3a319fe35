"""deploy/kubernetes: every manifest validated strictly against Kubernetes' own schemas (kubernetes-validate), and
what the manifests promise checked against hearth itself: the node's host access is exactly what it needs, probes
hit routes the apps really serve, every HEARTH_ variable is one hearth reads, every secret key exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from hearth.config import known_variables
from hearth.edge.app import create_edge_app
from hearth.store.db import Database

K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSION = "1.32.0"


def docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def everything() -> list[dict[str, Any]]:
    return [d for f in sorted(K8S.glob("*.yaml")) if f.name != "kustomization.yaml" for d in docs(f.name)]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [d for d in everything() if d["kind"] == kind]
    return found


def pod(kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(kind)["spec"]["template"]["spec"]
    return spec


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_each_manifest_is_valid_kubernetes_strictly(path: str) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_a_misspelt_field_is_caught_by_the_validation() -> None:
    """The check above can fail: an unknown field (strict) is an error."""
    ds = by_kind("DaemonSet")
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSION, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    (k,) = docs("kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(k["resources"]) == files


def test_the_node_gets_host_network_and_exactly_the_host_paths_it_needs() -> None:
    spec = pod("DaemonSet")
    assert spec["hostNetwork"] is True
    paths = {v["hostPath"]["path"] for v in spec["volumes"]}
    assert paths == {"/dev/kvm", "/dev/net/tun", "/run/netns", "/var/lib/hearth"}
    (c,) = spec["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/run/netns"]["mountPropagation"] == "Bidirectional"
    assert [m for m in mounts.values() if "mountPropagation" in m] == [mounts["/run/netns"]]
    assert c["command"] == ["hearth", "node", "run"]
    assert spec["automountServiceAccountToken"] is False


def test_the_edge_is_unprivileged() -> None:
    spec = pod("Deployment")
    (c,) = spec["containers"]
    assert spec.get("hostNetwork") is not True and not spec.get("volumes", [{}])[0].get("hostPath")
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["command"] == ["hearth", "edge"]


def test_env_names_are_read_by_hearth_and_secret_keys_exist() -> None:
    known = set(known_variables())
    secret = by_kind("Secret")["stringData"]
    for kind in ("DaemonSet", "Deployment", "Job"):
        for c in pod(kind)["containers"]:
            for env in c["env"]:
                if env["name"].startswith("HEARTH_"):
                    assert env["name"] in known, f"{kind}: {env['name']} is not a hearth setting"
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "hearth" and ref["key"] in secret


def test_probes_hit_routes_the_apps_serve(make_settings: Any) -> None:
    """The node runs the controller app (its /health and /ready are the real checks); the edge its own app."""
    from typing import cast

    from hearth.api import health
    from hearth.api.app import Controller

    node_paths = {getattr(r, "path", "") for r in health.make_router(cast(Controller, None)).routes}
    s = make_settings()
    db = Database(s.db_url)
    edge_paths = {getattr(r, "path", "") for r in create_edge_app(s, db).routes}
    db.dispose()
    for kind, served in (("DaemonSet", node_paths), ("Deployment", edge_paths)):
        (c,) = pod(kind)["containers"]
        ports = {p["name"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] in served and get["port"] in ports
