"""A stand-in for Firecracker's `jailer` binary, for tests only (the real one cannot be obtained here).

It does the parts of the jailer's documented operation (docs/jailer.md) that the driver depends on, and checks its
arguments the same way: `--id` of alphanumerics and hyphens (≤ 64), an `--exec-file` whose name contains
"firecracker", an existing `--netns` path; it creates `<chroot-base-dir>/<exec name>/<id>/root`, copies the exec
file into it, chowns that directory to uid:gid, joins the network namespace and execs the copied binary with
`--id=<id> --start-time-us=… --start-time-cpu-us=…` plus everything after `--` — keeping its pid, as the real
jailer does without `--daemonize`/`--new-pid-ns`. It cannot chroot a Python interpreter, so it tells the
firecracker stand-in where its root is (FAKE_FC_ROOT) and which uid/gid to check file access for.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"Jailer error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(prog="jailer")
    ap.add_argument("--id", required=True)
    ap.add_argument("--exec-file", required=True)
    ap.add_argument("--uid", required=True, type=int)
    ap.add_argument("--gid", required=True, type=int)
    ap.add_argument("--chroot-base-dir", default="/srv/jailer")
    ap.add_argument("--netns")
    ap.add_argument("--cgroup-version", choices=["1", "2"], default="1")
    ap.add_argument("--cgroup", action="append", default=[])
    ap.add_argument("--parent-cgroup")
    ap.add_argument("--resource-limit", action="append", default=[])
    ap.add_argument("--daemonize", action="store_true")
    ap.add_argument("--new-pid-ns", action="store_true")
    args = ap.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", args.id):
        fail(f"Invalid instance ID: {args.id}")
    exec_file = Path(args.exec_file)
    if not exec_file.is_file():
        fail(f"Failed to canonicalize path {exec_file}: No such file or directory")
    if "firecracker" not in exec_file.name:
        fail(f'Invalid filename. The filename of `--exec-file` option must contain "firecracker": {exec_file.name}')
    if args.netns and not Path(args.netns).exists():
        fail(f"Failed to open netns {args.netns}: No such file or directory")
    if os.geteuid() != 0:
        fail("the jailer must run as root")
    root = Path(args.chroot_base_dir) / exec_file.name / args.id / "root"
    root.mkdir(parents=True, exist_ok=True)
    target = root / exec_file.name
    shutil.copyfile(exec_file, target)
    target.chmod(0o755)
    os.chown(root, args.uid, args.gid)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FAKE_FC_ROOT": str(root),
        "FAKE_FC_UID": str(args.uid),
        "FAKE_FC_GID": str(args.gid),
    }
    cmd = [str(target), f"--id={args.id}", "--start-time-us=0", "--start-time-cpu-us=0", *extra]
    if args.netns:
        cmd = ["nsenter", f"--net={args.netns}", "--", *cmd]
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
