"""Sandboxes outlive the node process only in the host's PID namespace (issue 24, item 4; why the node DaemonSet sets
`hostPID: true`). A real `hearth serve` run as PID 1 of a new PID namespace (`unshare --pid --fork --mount-proc`, as
a container without hostPID runs it) warns at start, and when it is SIGKILLed the kernel kills its sandboxes with it.
The same controller in the host's PID namespace is SIGKILLed, its sandbox processes live on, and the next controller
adopts them (the session is still ready, the same sandbox processes). `hearth config check` warns as PID 1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.fabric.netlink import list_netns
from hearth.sandbox.hostscope import in_scope
from tests.restartkit import Controller, controller_env, sandbox_pids
from tests.waits import eventually_sync

pytestmark = [pytest.mark.netns]
AS_PID_1 = ["unshare", "--pid", "--fork", "--mount-proc"]  # a PID namespace and its own /proc, as in a container


def in_pid_namespace(inode: int) -> list[int]:
    """Host PIDs of every process in the PID namespace `inode`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.stat(entry / "ns" / "pid").st_ino == inode:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def start_session(ctl: Controller) -> str:
    with httpx.Client(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
        r = http.post("/api/auth/start", json={"user_id": "pidns-user"})
        assert r.status_code == 201, r.text
        sid = str(r.json()["session_id"])

        def past_starting() -> str | None:
            status = str(http.get(f"/api/auth/session/{sid}").json()["status"])
            return status if status != "starting" else None

        status = eventually_sync(past_starting, 90, "the session past starting", interval=0.2)
        assert status == "ready", status
        return sid


def adopted(ctl: Controller) -> bool:
    """The probe of a restart: the controller's log says it adopted a sandbox (else its tail, as the last look)."""
    log = ctl.log.read_text(errors="replace")
    assert "sandbox adopted" in log, log[-3000:]
    return True


@dataclass
class Pid1Controller(Controller):
    """`hearth serve` as PID 1 of a PID namespace of its own (`proc` is `unshare`; `init` is hearth, its child)."""

    init: int = 0

    def start(self, timeout: float = 60, drain: bool = False) -> float:
        self.proc = subprocess.Popen(
            [*AS_PID_1, sys.executable, "-m", "hearth", "serve"],
            env=controller_env(self.settings, self.sessions, self.extra_env),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.settings.data_dir,
        )
        proc = self.proc

        def healthy() -> bool:
            if proc.poll() is not None:  # not one of NOT_YET: fails at once
                raise RuntimeError(f"unshare exited with {proc.returncode}: {self.log.read_text()}")
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if not children:
                return False
            self.init = int(children[0])
            try:
                return httpx.get(f"{self.base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            eventually_sync(healthy, timeout, "the controller healthy")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.log.read_text()[-2000:]}") from None
        return time.monotonic()

    def kill(self) -> None:
        if self.init and Path(f"/proc/{self.init}").exists():
            os.kill(self.init, signal.SIGKILL)
        super().kill()
        # Its namespaces were mounted in its own mount namespace (gone with it): only their empty files are left
        # under /run/netns. Remove this controller's (by exact name), so the fixture's teardown finds none.
        for name in list_netns():
            stale = Path(f"/run/netns/{name}")
            mine = name == self.settings.fabric_netns or name.startswith(f"{self.settings.fabric_netns}-")
            if mine and not os.path.ismount(stale):
                subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10, check=False)


def test_a_node_as_pid_1_of_a_pid_namespace_takes_its_sandboxes_with_it(
    restart_settings: Settings, tmp_path: Path
) -> None:
    ctl = Pid1Controller(restart_settings, tmp_path / "controller.log", 2)
    try:
        ctl.start()
        pidns = os.stat(f"/proc/{ctl.init}/ns/pid").st_ino
        assert pidns != os.stat("/proc/self/ns/pid").st_ino
        start_session(ctl)
        inside = in_pid_namespace(pidns)
        node_net = os.stat(f"/proc/{ctl.init}/ns/net").st_ino
        sandboxed = [p for p in inside if os.stat(f"/proc/{p}/ns/net").st_ino != node_net]
        assert sandboxed, f"no sandbox process in the node's PID namespace: {inside}"
        assert "PID 1 of its PID namespace" in ctl.log.read_text() and "hostPID: true" in ctl.log.read_text()

        os.kill(ctl.init, signal.SIGKILL)  # the container's PID 1 dies (an upgrade, a liveness failure, an eviction)

        def gone() -> bool:
            left = [p for p in sandboxed if Path(f"/proc/{p}").exists()]
            assert not left, f"sandbox processes {left} outlived PID 1"  # the last look, should it time out
            return True

        eventually_sync(gone, 30, "the sandbox processes gone with PID 1", interval=0.1)
        assert in_pid_namespace(pidns) == []  # the kernel killed every process in the namespace
    finally:
        ctl.kill()


def test_in_the_host_pid_namespace_sandboxes_outlive_a_sigkilled_node_and_the_next_one_adopts_them(
    restart_settings: Settings, tmp_path: Path
) -> None:
    s = restart_settings
    ctl = Controller(s, tmp_path / "controller.log", 2)
    try:
        ctl.start()
        sid = start_session(ctl)
        # the sandbox's lasting processes: a desktop that just became ready may still start and end short-lived
        # helpers (the browser's), whose own exit says nothing about the container's removal
        first = set(sandbox_pids(s))
        time.sleep(1.0)
        before = sorted(first & set(sandbox_pids(s)))
        assert before
        assert "PID 1 of its PID namespace" not in ctl.log.read_text()
        ctl.stop(signal.SIGKILL, 10)  # no drain, no cleanup: as a node pod's container is killed
        time.sleep(1.0)  # a grace period in which dying processes would go (not a timing assertion)
        assert sorted(sandbox_pids(s)) == before, "sandboxes died with the node"
        ctl.start(drain=True)  # the next pod; --drain: its stop below ends the session and removes the sandbox
        with httpx.Client(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            eventually_sync(lambda: adopted(ctl), 60, "the sandbox adopted", interval=0.2)
            assert http.get(f"/api/auth/session/{sid}").json()["status"] == "ready"
        assert sorted(sandbox_pids(s)) == before  # the same sandbox processes, now the new node's
        ctl.stop(signal.SIGTERM)  # --drain: the session ends, its sandbox is removed
        assert sandbox_pids(s) == []
    finally:
        ctl.kill()


def test_config_check_warns_when_it_runs_as_pid_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    cmd = [sys.executable, "-m", "hearth", "config", "check", "--env-file", str(tmp_path / "absent.env")]
    as_pid_1 = subprocess.run([*AS_PID_1, *cmd], env=env, capture_output=True, text=True, timeout=60)
    assert as_pid_1.returncode == 0, as_pid_1.stderr
    assert "PID 1 of its PID namespace" in as_pid_1.stderr and "hostPID: true" in as_pid_1.stderr
    host = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert host.returncode == 0 and "PID 1" not in host.stderr, host.stderr


def test_the_node_daemonset_runs_in_the_host_pid_namespace() -> None:
    from tests.deploy.test_kubernetes import pod

    assert pod("DaemonSet")["hostPID"] is True
    assert pod("Deployment").get("hostPID") is not True  # the edge starts no sandbox


def cgroup2_root() -> Path | None:
    """Where a cgroup v2 hierarchy is mounted in this namespace (None: none)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split(" ")[0] == "cgroup2":
            return Path(left.split(" ")[4])
    return None


@dataclass
class ScopedController(Controller):
    """`hearth serve` started inside cgroup `home` (the node container's cgroup, as a runtime starts it)."""

    home: Path = Path("/nonexistent")

    def start(self, timeout: float = 60, drain: bool = False) -> float:
        self.proc = subprocess.Popen(
            in_scope([sys.executable, "-m", "hearth", "serve", *(["--drain"] if drain else [])], self.home),
            env=controller_env(self.settings, self.sessions, self.extra_env),
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.settings.data_dir,
        )
        proc = self.proc

        def healthy() -> bool:
            if proc.poll() is not None:  # not one of NOT_YET: fails at once
                raise RuntimeError(f"controller exited: {self.log.read_text()[-2000:]}")
            try:
                return httpx.get(f"{self.base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually_sync(healthy, timeout, "the controller healthy")
        return time.monotonic()


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def destroy_container(cgroup: Path) -> None:
    """What runc's destroy does to a container sharing the host's PID namespace: SIGKILL every process in its cgroup."""
    for _ in range(50):  # bounded: processes forked meanwhile are caught by the next round
        pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"processes still in {cgroup}")


@pytest.mark.parametrize("scoped", [False, True], ids=["node-cgroup", "sandbox-cgroup"])
def test_removing_the_node_container_kills_sandboxes_in_its_cgroup_unless_they_have_their_own(
    restart_settings: Settings, tmp_path: Path, scoped: bool
) -> None:
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted here")
    s = restart_settings
    node_cg, sandbox_cg = root / f"{s.fabric_netns}-node", root / f"{s.fabric_netns}-sandboxes"
    node_cg.mkdir()
    extra = {"HEARTH_SANDBOX_CGROUP": str(sandbox_cg)} if scoped else {}
    ctl = ScopedController(s, tmp_path / "controller.log", 2, extra_env=extra, home=node_cg)
    try:
        ctl.start()
        sid = start_session(ctl)
        # the sandbox's lasting processes: a desktop that just became ready may still start and end short-lived
        # helpers (the browser's), whose own exit says nothing about the container's removal
        first = set(sandbox_pids(s))
        time.sleep(1.0)
        before = sorted(first & set(sandbox_pids(s)))
        assert before
        where = {Path(f"/proc/{p}/cgroup").read_text().split("::")[-1].strip() for p in before}
        assert where == {"/" + (sandbox_cg if scoped else node_cg).name}, where
        destroy_container(node_cg)  # the node pod's container is removed (hostPID: its PID 1 dying kills nothing)
        assert ctl.proc is not None and ctl.proc.wait(10) == -signal.SIGKILL
        deadline = time.monotonic() + (10 if not scoped else 1)  # a grace period for dying processes to go
        while (alive := sorted(p for p in before if running(p))) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not scoped:
            assert alive == [], "sandboxes in the node's cgroup outlived the container's removal"
            return
        assert alive == before, "sandboxes in a cgroup of their own died with the node's container"
        ctl.start(drain=True)  # the next pod adopts them; --drain: its stop ends the session, removes the sandbox
        eventually_sync(lambda: adopted(ctl), 60, "the sandbox adopted", interval=0.2)
        with httpx.Client(base_url=ctl.base, headers=ctl.headers, timeout=30) as http:
            assert http.get(f"/api/auth/session/{sid}").json()["status"] == "ready"
        ctl.stop(signal.SIGTERM)
        assert sandbox_pids(s) == []
    finally:
        ctl.kill()
        for cg in (sandbox_cg, node_cg):
            if cg.exists():
                destroy_container(cg)  # what a failed assertion left (only this test's processes are in them)
                with contextlib.suppress(OSError):
                    cg.rmdir()
