"""A stand-in for the `firecracker` binary, for tests only.

The real Firecracker binary cannot be obtained on the machines these tests run on, so this script plays its
part: same command line (`--api-sock`, `--id`, and what the jailer appends), same refusal to start on an existing
socket path, and the API served over HTTP/1.1 on that Unix socket with the endpoints, status codes (204 / 200 /
400 `{"fault_message": ...}`) and pre-boot/post-boot rules of Firecracker's OpenAPI spec. Every body is validated
with `fcspec.FirecrackerSpec` — the same validator the tests use — against Firecracker's own firecracker.yaml.
It does what Firecracker does with the host resources the driver prepares: it opens the log file (must exist),
the kernel/initrd/drive files (must exist; writable unless read-only), and the TAP (`TUNSETIFF` on /dev/net/tun in
its own network namespace — so it holds the TAP exactly like the real VMM). It boots nothing.

Test knobs (`--fake-*`, never passed by the driver; the per-test wrapper script adds them):
  --fake-fail METHOD PATH MESSAGE   answer that request 400 with MESSAGE as fault_message
  --fake-exit-on METHOD PATH        exit(1) on receiving that request (a VMM crash)
  --fake-exit-at-start              exit(1) before opening the socket
  --fake-stall METHOD PATH          never answer that request
  --fake-ignore-ctrl-alt-del        keep running after SendCtrlAltDel (a guest without i8042)
  --fake-record FILE                append every request as a JSON line
  --fake-pidfile FILE               write our pid
Jail emulation (set by the fake jailer): FAKE_FC_ROOT = the chroot all paths are relative to, FAKE_FC_UID/GID =
the identity whose access to the files is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import stat
import struct
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # run as a script: the repository root
from tests.sandbox.firecracker.fcspec import FirecrackerSpec

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
PRE_BOOT_ONLY = ("/boot-source", "/drives/", "/network-interfaces/", "/machine-config", "/logger", "/metrics")


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="firecracker")
    ap.add_argument("--api-sock", default="/run/firecracker.socket")
    ap.add_argument("--id", default="anonymous-instance")
    ap.add_argument("--start-time-us")
    ap.add_argument("--start-time-cpu-us")
    ap.add_argument("--fake-fail", nargs=3, action="append", default=[])
    ap.add_argument("--fake-exit-on", nargs=2)
    ap.add_argument("--fake-exit-at-start", action="store_true")
    ap.add_argument("--fake-stall", nargs=2)
    ap.add_argument("--fake-ignore-ctrl-alt-del", action="store_true")
    ap.add_argument("--fake-record")
    ap.add_argument("--fake-pidfile")
    return ap.parse_args()


class Refused(Exception):
    pass


class Vmm:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.spec = FirecrackerSpec()
        self.root = Path(os.environ.get("FAKE_FC_ROOT", "/"))
        self.uid = int(os.environ.get("FAKE_FC_UID", os.getuid()))
        self.gid = int(os.environ.get("FAKE_FC_GID", os.getgid()))
        self.started = False
        self.config: dict[str, Any] = {"drives": {}, "net": {}}
        self.log: Any = None
        self.taps: list[int] = []

    def host(self, path: str) -> Path:
        """A path as the (possibly jailed) VMM sees it → the host path."""
        p = Path(path)
        if os.environ.get("FAKE_FC_ROOT"):
            if not p.is_absolute():
                raise Refused(f"path {path} is not absolute inside the jail")
            return self.root / p.relative_to("/")
        return p

    def can(self, path: Path, write: bool) -> bool:
        """Access as the VMM's uid/gid would have it (root: anything)."""
        try:
            st = path.stat()
        except OSError:
            return False
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            bits = (stat.S_IRUSR, stat.S_IWUSR)
        elif st.st_gid == self.gid:
            bits = (stat.S_IRGRP, stat.S_IWGRP)
        else:
            bits = (stat.S_IROTH, stat.S_IWOTH)
        return bool(st.st_mode & bits[0]) and (not write or bool(st.st_mode & bits[1]))

    def info(self, line: str) -> None:
        if self.log is not None:
            self.log.write(f"[{self.args.id}:fc_api:INFO] {line}\n")
            self.log.flush()

    def handle(self, method: str, path: str, raw: bytes) -> tuple[int, Any, bool]:
        """(status, json or None, exit after answering)."""
        body = json.loads(raw) if raw else None
        shown = f' with body "{raw.decode()}"' if raw else ""
        self.info(f'The API server received a {method.capitalize()} request on "{path}"{shown}.')
        if self.args.fake_exit_on and [method, path] == self.args.fake_exit_on:
            print(f"fake firecracker: simulated crash on {method} {path}", file=sys.stderr, flush=True)
            os._exit(1)
        for m, p, message in self.args.fake_fail:
            if (m, p) == (method, path):
                return 400, {"fault_message": message}, False
        errors = self.spec.errors(method, path, body)
        if errors:
            return 400, {"fault_message": "; ".join(errors)}, False
        try:
            return self.apply(method, path, body)
        except Refused as exc:
            return 400, {"fault_message": str(exc)}, False

    def apply(self, method: str, path: str, body: Any) -> tuple[int, Any, bool]:
        if method == "GET" and path == "/version":
            return 200, {"firecracker_version": "0.0.0-fake"}, False
        if method == "GET" and path == "/":
            state = "Running" if self.started else "Not started"
            return 200, {"app_name": "Firecracker", "id": self.args.id, "state": state, "vmm_version": "fake"}, False
        if method != "PUT":
            raise Refused(f"{method} {path} is not emulated by the stand-in")
        if self.started and path.startswith(PRE_BOOT_ONLY):
            raise Refused("The requested operation is not supported after starting the microVM.")
        if path == "/logger":
            if self.log is not None:
                raise Refused("Logger: the logger was already initialized")
            target = self.host(body["log_path"])
            if not target.exists() or not self.can(target, write=True):
                raise Refused(
                    f"Logger: Failed to open target file: {body['log_path']}: No such file or permission denied"
                )
            self.log = open(target, "a")  # lives as long as the VMM
        elif path == "/metrics":
            target = self.host(body["metrics_path"])
            if not target.exists() or not self.can(target, write=True):
                raise Refused(f"Metrics: Failed to open target file: {body['metrics_path']}")
        elif path == "/boot-source":
            for key in ("kernel_image_path", "initrd_path"):
                if key in body and not self.can(self.host(body[key]), write=False):
                    raise Refused(f"Invalid {key}: cannot open {body[key]}: No such file or directory (os error 2)")
            self.config["boot"] = body
        elif path.startswith("/drives/"):
            target = self.host(body["path_on_host"])
            if not self.can(target, write=not body["is_read_only"]):
                raise Refused(f"Unable to create the block device: cannot open {body['path_on_host']}")
            if body["is_root_device"] and any(
                d["is_root_device"] and k != body["drive_id"] for k, d in self.config["drives"].items()
            ):
                raise Refused("A root block device already exists!")
            self.config["drives"][body["drive_id"]] = body
        elif path.startswith("/network-interfaces/"):
            name = body["host_dev_name"]
            try:
                fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
                except OSError:
                    os.close(fd)
                    raise
            except OSError as exc:
                raise Refused(
                    f"Could not create the network device: Open tap device failed: {name}: {exc.strerror} "
                    f"(os error {exc.errno})"
                ) from exc
            self.taps.append(fd)
            self.config["net"][body["iface_id"]] = body
        elif path == "/machine-config":
            self.config["machine"] = body
        elif path == "/actions":
            action = body["action_type"]
            if action == "InstanceStart":
                if self.started:
                    raise Refused("The requested operation is not supported after starting the microVM.")
                if "boot" not in self.config:
                    raise Refused("Cannot start microvm without kernel configuration.")
                self.started = True
                self.info("Successfully started microvm (stand-in: nothing booted)")
            elif action == "SendCtrlAltDel":
                if not self.started:
                    raise Refused("The requested operation is not supported before starting the microVM.")
                return 204, None, not self.args.fake_ignore_ctrl_alt_del
        else:
            raise Refused(f"PUT {path} is not emulated by the stand-in")
        return 204, None, False


async def serve(vmm: Vmm, sock: Path) -> None:
    stall = vmm.args.fake_stall

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await reader.readline()
            if not line:
                break
            method, target, _ = line.decode().split(" ", 2)
            headers = {}
            while True:
                h = await reader.readline()
                if h in (b"\r\n", b"\n", b""):
                    break
                k, _, v = h.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0"))
            raw = await reader.readexactly(n) if n else b""
            if vmm.args.fake_record:
                with open(vmm.args.fake_record, "a") as rec:
                    rec.write(json.dumps({"method": method, "path": target, "body": json.loads(raw) if raw else None}))
                    rec.write("\n")
            if stall and [method, target] == stall:
                await asyncio.Event().wait()
            status, payload, leave = vmm.handle(method, target, raw)
            data = json.dumps(payload).encode() if payload is not None else b""
            reason = {200: "OK", 204: "No Content", 400: "Bad Request"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
            if leave:  # the guest reset after Ctrl-Alt-Del: Firecracker exits
                os._exit(0)

    server = await asyncio.start_unix_server(conn, path=str(sock))
    async with server:
        await server.serve_forever()


def main() -> None:
    args = parse()
    if args.fake_pidfile:
        Path(args.fake_pidfile).write_text(str(os.getpid()))
    if args.fake_exit_at_start:
        print("fake firecracker: simulated failure before opening the API socket", file=sys.stderr, flush=True)
        sys.exit(1)
    vmm = Vmm(args)
    sock = vmm.host(args.api_sock)
    if os.path.lexists(sock):  # like Firecracker: never binds over an existing path
        print(f"Failed to open the API socket at {args.api_sock}: Address in use (os error 98)", file=sys.stderr)
        sys.exit(1)
    print(f"Running Firecracker stand-in (id {args.id}) on {args.api_sock}", flush=True)
    asyncio.run(serve(vmm, sock))


if __name__ == "__main__":
    main()
