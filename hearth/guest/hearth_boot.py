"""PID 1 of a hearth VM after `/sbin/hearth-init` (stdlib only; copied into the image as /opt/hearth/hearth_boot.py).

hearth-init has mounted the pseudo filesystems and applied the kernel's `ip=` argument (the guest's one network
mechanism). This script then:

1. reads the config drive named by `hearth.config=` (default /dev/vdb; root-only device node) — the secret and the
   desktop settings — and adds `ip` (from `ip=`) and a default `callback` on the gateway;
2. writes Chromium's managed policies (hearth_agent/policy.py) to /etc/chromium, root-owned;
3. starts `python3 -m hearth_agent --config /dev/fd/N` as the unprivileged user `hearth`, its output on the serial
   console — the config (with the secret) goes through a pipe the agent reads once, never a file the desktop user
   (the same uid) could read;
4. reaps every orphan (it is PID 1), and when the agent exits — or on SIGTERM/SIGINT — stops it and reboots, which
   ends the VM (QEMU runs with -no-reboot; Firecracker exits on reboot).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import signal
import sys
import time
from typing import Any

from hearth_agent.contract import document as contract  # /opt/hearth/hearth_agent beside this script in the image

MAGIC = b"HEARTHCFG1\n"
CONFIG_DEFAULT = "/dev/vdb"
GUEST_USER = "hearth"
CALLBACK_PORT = 8700
RB_AUTOBOOT = 0x01234567


def say(msg: str) -> None:
    sys.stdout.write(f"hearth-boot: {msg}\n")
    sys.stdout.flush()


def parse_cmdline(text: str) -> dict[str, str]:
    """`key=value` words of the kernel command line (bare words map to "")."""
    out: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        out[key] = value
    return out


def parse_ip_arg(value: str) -> dict[str, str]:
    """`ip=<client>:<server>:<gw>:<netmask>:<hostname>:<device>:<autoconf>` (kernel nfsroot.rst)."""
    parts = (value.split(":") + [""] * 7)[:7]
    return {"client": parts[0], "gateway": parts[2], "netmask": parts[3], "hostname": parts[4], "device": parts[5]}


def read_drive(path: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"config drive {path} did not appear within {timeout:.0f}s")
        time.sleep(0.02)
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a hearth config drive (bad magic)")
    doc = json.loads(data[len(MAGIC) :].split(b"\0", 1)[0])
    if not isinstance(doc, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return doc


def agent_config(drive: dict[str, Any], cmdline: dict[str, str]) -> dict[str, Any]:
    """The agent's configuration: the drive's settings, plus what the command line says about the network."""
    ip = parse_ip_arg(cmdline.get("ip", ""))  # the guest's address has one source only: the kernel's ip= argument
    callback = f"http://{ip['gateway']}:{CALLBACK_PORT}" if ip["gateway"] else ""
    return contract.locate(drive, ip=ip["client"], default_callback=callback)


def config_pipe(cfg: dict[str, Any]) -> int:
    """A pipe holding the agent's config; returns its read end (the write end is closed: the agent reads to EOF)."""
    r, w = os.pipe()
    try:
        os.write(w, json.dumps(cfg).encode())  # far below a pipe's capacity
    finally:
        os.close(w)
    return r


def start_agent(user: pwd.struct_passwd, config_fd: int) -> int:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": user.pw_dir,
        "USER": user.pw_name,
        "LOGNAME": user.pw_name,
        "PYTHONPATH": "/opt/hearth",
        "PYTHONDONTWRITEBYTECODE": "1",
        "BROWSER": "/opt/hearth/hearth_agent/browser_hook.py",
        "LANG": "C.UTF-8",
    }
    pid = os.fork()
    if pid == 0:  # child: drop to the sandbox user and become the agent
        try:
            os.setsid()
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.chdir(user.pw_dir)
            os.set_inheritable(config_fd, True)
            argv = ["python3", "-m", "hearth_agent", "--config", f"/dev/fd/{config_fd}"]
            os.execve("/usr/bin/python3", argv, env)
        except BaseException as exc:
            sys.stderr.write(f"hearth-boot: cannot start the agent: {exc}\n")
        os._exit(127)
    os.close(config_fd)
    return pid


def write_resolv(cfg: dict[str, Any], path: str = "/etc/resolv.conf") -> None:
    """The guest resolves through the fabric's DNS forwarder: the config document's `nameservers`."""
    servers = [s for s in cfg.get("nameservers") or [] if isinstance(s, str) and s.replace(".", "").isdigit()]
    if not servers:
        return
    try:
        with open(path, "w") as f:
            f.write("".join(f"nameserver {s}\n" for s in servers) + "options timeout:2 attempts:2\n")
    except OSError as exc:
        say(f"WARNING: {path} not written: {exc}")


def end_vm(code: int) -> None:
    """Reboot, which ends the VM (-no-reboot / Firecracker); PID 1 must never simply exit."""
    say(f"shutting down (agent status {code})")
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(RB_AUTOBOOT)
    while True:  # pragma: no cover - only reached when reboot(2) is refused
        time.sleep(3600)


def main() -> int:
    with open("/proc/cmdline") as f:
        cmdline = parse_cmdline(f.read())
    user = pwd.getpwnam(GUEST_USER)
    try:
        cfg = agent_config(read_drive(cmdline.get("hearth.config") or CONFIG_DEFAULT), cmdline)
        config_fd = config_pipe(cfg)
    except (OSError, ValueError) as exc:
        say(f"FATAL: {exc}")
        end_vm(1)
        return 1
    try:
        from hearth_agent.policy import write_policy  # /opt/hearth, beside this script

        proxy = cfg.get("egress_proxy")
        port = proxy.get("listen_port") if isinstance(proxy, dict) else None
        extra_ca = cfg.get("extra_ca_certs")
        write_policy(
            "/etc/chromium", port if isinstance(port, int) else None, extra_ca if isinstance(extra_ca, str) else ""
        )
    except (ImportError, OSError) as exc:
        say(f"WARNING: Chromium policies not written: {exc}")
    write_resolv(cfg)
    agent = start_agent(user, config_fd)
    say(f"agent started pid={agent} ip={cfg.get('ip')}")
    stopping = {"flag": False}

    def stop(_sig: int, _frame: Any) -> None:
        if not stopping["flag"]:
            stopping["flag"] = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(agent, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    status = 0
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == agent:
            status = os.waitstatus_to_exitcode(raw)
            say(f"agent exited with {status}")
            break
    end_vm(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
