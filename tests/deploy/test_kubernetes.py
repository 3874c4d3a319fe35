"""deploy/kubernetes: every manifest validated strictly against the schemas of three Kubernetes versions
(kubernetes-validate), and what the manifests promise checked against hearth itself: the node's host access is
exactly what it needs, probes hit routes the apps really serve, every HEARTH_ variable is one hearth reads, every
secret key exists, the node's memory limit and session limit agree with the sizing in docs/kubernetes.md, the preStop
drain and its lifting by the next pod work on a real store, the migration Job is named for its image's version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

from hearth import __version__
from hearth.cluster import nodes
from hearth.config import Settings, known_variables
from hearth.edge.app import create_edge_app
from hearth.store.db import Database
from hearth.store.nodestates import NodeState

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
VERSIONS = ("1.35.0", "1.36.0", "1.37.0")  # the three newest kubernetes-validate 1.37.0 (pinned) ships
MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


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


def container(kind: str) -> dict[str, Any]:
    c: dict[str, Any]
    (c,) = pod(kind)["containers"]
    return c


def env_of(kind: str) -> dict[str, str]:
    """The literal `value:` variables of a pod's container."""
    return {e["name"]: e["value"] for e in container(kind)["env"] if "value" in e}


def mib(quantity: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    m = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert m, f"memory quantity {quantity!r}: write it in Mi or Gi"
    return int(m[1]) * units[m[2]]


def pod_of(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]["template"]["spec"]
    return spec


def image_tag() -> str:
    images = {
        c["image"]
        for d in everything()
        if "template" in d.get("spec", {})
        for c in pod_of(d)["containers"] + pod_of(d).get("initContainers", [])
    }
    (image,) = images  # one image, one version, everywhere
    return str(image.rsplit(":", 1)[1])


def test_the_validated_versions_are_the_three_newest_the_validator_ships() -> None:
    assert sorted(set(all_versions()), key=lambda v: tuple(map(int, v.split("."))))[-3:] == list(VERSIONS)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS)
def test_each_manifest_is_valid_kubernetes_strictly(path: str, version: str) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_misspelt_field_is_caught_by_the_validation(version: str) -> None:
    """The check above can fail: an unknown field (strict) is an error."""
    ds = by_kind("DaemonSet")
    ds["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, version, strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    (k,) = docs("kustomization.yaml")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(k["resources"]) == files


def test_the_node_gets_host_network_and_exactly_the_host_paths_it_needs() -> None:
    spec = pod("DaemonSet")
    assert spec["hostNetwork"] is True
    paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert paths == {"/dev/kvm", "/dev/net/tun", "/run/netns", "/var/lib/hearth", "/sys/fs/cgroup"}
    (c,) = spec["containers"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    # the sandboxes' cgroup is made inside the host's hierarchy, outside this container's (HEARTH_SANDBOX_CGROUP)
    cgroup_volume = next(v["name"] for v in spec["volumes"] if v.get("hostPath", {}).get("path") == "/sys/fs/cgroup")
    (cgroup_mount,) = [m for m in c["volumeMounts"] if m["name"] == cgroup_volume]
    assert env_of("DaemonSet")["HEARTH_SANDBOX_CGROUP"].startswith(cgroup_mount["mountPath"] + "/")
    assert env_of("DaemonSet")["HEARTH_DRIVER"] == "netns"  # the driver that joins it (auto may pick a VM driver)
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
    # edges send nodes an HMAC made with the node credential, never the caller's API key: both roles hold the ring
    for kind in ("DaemonSet", "Deployment"):
        refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for e in container(kind)["env"]}
        assert refs["HEARTH_NODE_CREDENTIAL"] == "node-credential", kind


def test_probes_hit_routes_the_apps_serve(make_settings: Any) -> None:
    """The node runs the controller app (its /health and /ready are the real checks); the edge its own app."""
    from hearth.api import health
    from hearth.fabric.fabric import Fabric

    s = make_settings()
    db = Database(s.db_url)
    node_paths = {getattr(r, "path", "") for r in health.make_router(s, db, Fabric(s), "netns", lambda: 0).routes}
    edge_paths = {getattr(r, "path", "") for r in create_edge_app(s, db).routes}
    db.dispose()
    for kind, served in (("DaemonSet", node_paths), ("Deployment", edge_paths)):
        (c,) = pod(kind)["containers"]
        ports = {p["name"] for p in c["ports"]}
        for probe in ("livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] in served and get["port"] in ports
            # the node serves TLS only (HEARTH_NODE_TLS_CERT): a plain-HTTP probe would fail every time
            assert get.get("scheme", "HTTP") == ("HTTPS" if kind == "DaemonSet" else "HTTP"), (kind, probe)
    assert container("DaemonSet")["startupProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_the_edges_have_a_disruption_budget_and_spread_over_hosts() -> None:
    """One edge at a time may be evicted (never all: maxUnavailable below the replicas), and edges spread one per
    host before doubling up; no budget selects the node pods (pdb.yaml says why)."""
    deploy = by_kind("Deployment")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind("PodDisruptionBudget")
    selected = pdb["spec"]["selector"]["matchLabels"]
    assert selected.items() <= labels.items()
    assert not selected.items() <= by_kind("DaemonSet")["spec"]["template"]["metadata"]["labels"].items()
    assert 1 <= pdb["spec"]["maxUnavailable"] < deploy["spec"]["replicas"]
    spread = {c["topologyKey"]: c for c in pod("Deployment")["topologySpreadConstraints"]}
    host = spread["kubernetes.io/hostname"]
    assert host["whenUnsatisfiable"] == "DoNotSchedule" and host["maxSkew"] == 1
    for c in spread.values():
        assert c["labelSelector"]["matchLabels"].items() <= labels.items()


def test_the_node_pods_have_their_priority_class() -> None:
    pc = by_kind("PriorityClass")
    assert pod("DaemonSet")["priorityClassName"] == pc["metadata"]["name"]
    assert pc["globalDefault"] is False and 0 < pc["value"] <= 1_000_000_000  # user classes stop at one billion
    assert "priorityClassName" not in pod("Deployment")


SIZING = re.compile(r"sandbox memory\.max = (\d+) sessions × (\d+) MiB = (\d+) MiB; pod memory limit = (\d+) MiB")


def test_node_memory_and_session_limit_agree_with_the_documented_sizing(
    make_settings: Callable[..., Settings],
) -> None:
    """docs/kubernetes.md derives the sessions' budget from the measured per-session cost: it is the sandbox cgroup's
    memory.max (HEARTH_SANDBOX_MEMORY_MAX, the sandboxes live outside the pod) and HEARTH_MAX_SESSIONS_PER_NODE
    keeps the sessions inside it; the pod's limit and request (equal) are the node process alone. hearth reads the
    values as written (the sessions within the node's address pool, or the pool would be the bound)."""
    (line,) = SIZING.findall((ROOT / "docs" / "kubernetes.md").read_text())
    sessions, per_session, budget, node = map(int, line)
    assert sessions * per_session == budget
    res = container("DaemonSet")["resources"]
    assert mib(res["limits"]["memory"]) == mib(res["requests"]["memory"]) == node
    assert res["requests"]["cpu"] and res["limits"]["cpu"]
    env = env_of("DaemonSet")
    assert int(env["HEARTH_MAX_SESSIONS_PER_NODE"]) == sessions
    assert mib(env["HEARTH_SANDBOX_MEMORY_MAX"]) == budget
    s = make_settings(**{k: v for k, v in env.items() if k.startswith(("HEARTH_MAX_", "HEARTH_SANDBOX_"))})
    assert s.max_sessions_per_node == sessions and s.pool_size >= sessions
    assert s.sandbox_memory_max == budget * 1024 * 1024 and s.sandbox_cpu_max
    edge = container("Deployment")["resources"]
    assert edge["requests"]["cpu"] and edge["limits"]["cpu"]
    assert mib(edge["requests"]["memory"]) <= mib(edge["limits"]["memory"])


def hook(name: str) -> list[str]:
    command: list[str] = container("DaemonSet")["lifecycle"][name]["exec"]["command"]
    return command


def test_the_prestop_drain_fits_in_the_grace_period() -> None:
    """Each hearth call in the hooks is bounded by `timeout`; the preStop's together leave the node time to stop."""
    pre = hook("preStop")[-1]
    assert "hearth node drain" in pre
    bounds = [int(n) for n in re.findall(r"timeout (\d+) hearth", pre)]
    assert len(bounds) == pre.count("hearth node")
    assert sum(bounds) + 10 <= pod("DaemonSet")["terminationGracePeriodSeconds"]
    post = hook("postStart")[-1]
    assert len(re.findall(r"timeout \d+ hearth", post)) == post.count("hearth node")
    assert pre.endswith("exit 0") and post.endswith("exit 0")  # a failing postStart would kill the container


def run_hook(name: str, node_id: str, env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(
        hook(name), env={**env, "HEARTH_NODE_ID": node_id}, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_prestop_drains_the_node_and_the_next_pod_lifts_only_that_drain(
    make_settings: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    """The manifest's own hook commands, run by sh with hearth's CLI on a real store: a stopping pod drains its node
    under the preStop's reason; the next pod's postStart makes it `up` again; an operator's drain survives both; a
    node whose id is a prefix of another's is never mistaken for it."""
    s = make_settings()
    db = Database(s.db_url)
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HEARTH_DATA_DIR": str(s.data_dir),
        **({"HEARTH_DATABASE_URL": database_url} if database_url else {}),
    }

    def state(node_id: str) -> tuple[NodeState, str | None]:
        (v,) = [v for v in db.call(nodes.list_nodes) if v.id == node_id]
        return v.state, v.reason

    def beat(node_id: str) -> None:
        nodes.heartbeat(db, nodes.Registration(node_id, f"http://{node_id}:4000", 24, 253, ("netns",), "0.1.0"))

    try:
        run_hook("postStart", "host-1", env, tmp_path)  # a first start: no node registered yet, nothing to lift
        beat("host-1")
        beat("host-10")
        run_hook("preStop", "host-1", env, tmp_path)
        assert state("host-1") == (NodeState.DRAINING, "pod stopping (preStop)")
        assert state("host-10") == (NodeState.UP, None)
        beat("host-1")  # the pod restarting: a draining node's beat keeps it draining
        run_hook("postStart", "host-1", env, tmp_path)
        assert state("host-1") == (NodeState.UP, None)

        nodes.set_state(db, "host-1", NodeState.DRAINING, "host maintenance")
        run_hook("preStop", "host-10", env, tmp_path)
        run_hook("preStop", "host-1", env, tmp_path)
        assert state("host-1") == (NodeState.DRAINING, "host maintenance")
        run_hook("postStart", "host-1", env, tmp_path)  # host-10's preStop drain is not host-1's
        assert state("host-1") == (NodeState.DRAINING, "host maintenance")
        assert state("host-10") == (NodeState.DRAINING, "pod stopping (preStop)")
    finally:
        db.dispose()


def test_the_hooks_never_fail_the_container_when_the_store_is_down(tmp_path: Path) -> None:
    """A failed postStart kills the container: with no store answering (a closed port), both hooks give up (the
    postStart after its retries) and exit 0."""
    from hearth.serving.local import free_port

    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HEARTH_DATA_DIR": str(tmp_path),
        "HEARTH_DATABASE_URL": f"postgresql+psycopg://hearth@127.0.0.1:{free_port()}/hearth?connect_timeout=2",
    }
    for name in ("preStop", "postStart"):
        run_hook(name, "host-1", env, tmp_path)


def test_the_migration_job_is_named_for_its_version_and_expires() -> None:
    """A Job's template is immutable: one per version (so an upgrade's apply creates a new one and re-applying the
    same version changes nothing), removed after it finished, bounded while it runs."""
    job = by_kind("Job")
    tag = image_tag()
    assert tag == __version__  # the image built from this repo is tagged with hearth's version (`hearth image oci`)
    name = job["metadata"]["name"]
    assert name == f"hearth-db-upgrade-{tag.replace('.', '-')}" and len(name) <= 63
    assert job["metadata"]["labels"]["app.kubernetes.io/version"] == tag
    assert job["spec"]["ttlSecondsAfterFinished"] > 0 and job["spec"]["activeDeadlineSeconds"] > 0
    assert container("Job")["command"] == ["hearth", "db", "upgrade"]
    walkthrough = (ROOT / "docs" / "kubernetes.md").read_text()
    assert "wait --for=condition=complete job/hearth-db-upgrade-" in walkthrough  # install and upgrade wait for it


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (its built-in kustomize) is not installed")
def test_the_kustomization_renders_valid_objects_in_the_right_scope() -> None:
    """What `kubectl apply -k` sends: the cluster-scoped PriorityClass and Namespace carry no namespace, every other
    object is in `hearth`, and each is valid for every version."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert {d["kind"] for d in rendered} == {d["kind"] for d in everything() if d["kind"] != "Secret"}
    for d in rendered:
        cluster_scoped = d["kind"] in ("PriorityClass", "Namespace")
        assert d["metadata"].get("namespace") == (None if cluster_scoped else "hearth"), d["kind"]
        for version in VERSIONS:
            kubernetes_validate.validate(d, version, strict=True)
