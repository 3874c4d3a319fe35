"""A cold desktop's agent side alone: spawn → the agent's API accepts a connection → its display (Xvnc) runs, for this
tree's agent and the agent of git revision --before, runs interleaved on loopback (no controller, no namespace, no
Chromium; Debian's /usr/bin/python3 -P -S as the netns driver runs it). Both are observed the same way — a connect
attempt and GET /health every 2 ms — so the ratio compares the agents, not their notifications.

    .venv/bin/python -m bench.agent_start -n 10 [--before b6bc2a9^]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = "/usr/bin/python3"
STEP = 0.002


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def running(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        body = json.loads(conn.getresponse().read())
        return bool(body["services"].get("xvnc", {}).get("state") == "running")
    except (OSError, ValueError, KeyError):
        return False
    finally:
        conn.close()


def once(pythonpath: str, tmp: Path) -> tuple[float, float]:
    """(seconds to listening, seconds to the display running) of one agent start."""
    port = free_port()
    cfg = {"ip": "127.0.0.1", "agent_port": port, "rfb_port": free_port(), "secret": "b" * 32, "chromium": False}
    path = tmp / "agent.json"
    path.write_text(json.dumps(cfg))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "PYTHONPATH": pythonpath, "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [PYTHON, "-P", "-S", "-m", "hearth_agent", "--config", str(path)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=str(tmp),
    )
    try:
        listening = display = 0.0
        deadline = t0 + 60
        while time.monotonic() < deadline:
            if not listening:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    listening = time.monotonic() - t0
                except OSError:
                    pass
            if listening and running(port):
                display = time.monotonic() - t0
                break
            time.sleep(STEP)
        if not display:
            raise SystemExit(f"the agent at {pythonpath} did not bring its display up within 60 s")
        return listening, display
    finally:
        proc.terminate()
        proc.wait(30)


def tree_of(rev: str, where: Path) -> str:
    raw = subprocess.run(["git", "-C", str(REPO), "archive", rev, "hearth_agent"], check=True, capture_output=True)
    (where / "agent.tar").write_bytes(raw.stdout)
    with tarfile.open(where / "agent.tar") as t:
        t.extractall(where, filter="data")
    subprocess.run([PYTHON, "-m", "compileall", "-q", str(where / "hearth_agent")], check=True)
    return str(where)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--before", default="b6bc2a9^", help="git revision of the agent to compare with")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hearth-b-agent-") as tmp:
        old = tree_of(a.before, Path(tmp))
        subprocess.run([PYTHON, "-m", "compileall", "-q", str(REPO / "hearth_agent")], check=True)
        arms = {a.before: old, "this tree": str(REPO)}
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in arms}
        load = os.getloadavg()[0]
        for _ in range(a.n):
            for name, path in arms.items():
                got[name].append(once(path, Path(tmp)))
        print(f"load average {load:.1f} → {os.getloadavg()[0]:.1f} (a shared machine: noisy); {a.n} runs each")
        med = {}
        for name, runs in got.items():
            med[name] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            print(f"{name:>12}: spawn → listening p50 {med[name][0] * 1000:6.1f} ms, → display running "
                  f"p50 {med[name][1] * 1000:6.1f} ms")  # fmt: skip
        (l_old, d_old), (l_new, d_new) = med[a.before], med["this tree"]
        print(f"ratio this tree / {a.before}: listening {l_new / l_old:.2f}×, display running {d_new / d_old:.2f}×")


if __name__ == "__main__":
    main()
