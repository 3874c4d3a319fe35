#!/usr/bin/env bash
# Sets up everything hearth needs on a fresh Debian 12 machine (run as root). Idempotent and quick when done.
#   1. Debian packages: the sandbox desktop (Xvfb, Openbox, x11vnc, Chromium), bubblewrap, nftables, QEMU, …
#   2. .venv with hearth and its pinned dependencies (pyproject.toml)
#   3. noVNC from the npm registry (pinned in web/package-lock.json), copied into hearth/static/novnc
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

APT_PACKAGES=(
  xvfb openbox x11vnc chromium fonts-dejavu-core bubblewrap util-linux procps iproute2 nftables libnftables1
  qemu-system-x86 qemu-utils debootstrap e2fsprogs cpio busybox-static zstd xz-utils kmod
  python3 python3-venv ca-certificates
)
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "apt: installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then echo "run as root (apt-get, network namespaces)" >&2; exit 1; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  step "apt: all ${#APT_PACKAGES[@]} packages present"
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  step "venv: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.hearth-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  step "pip: installing hearth and pinned dependencies"
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
else
  step "pip: up to date"
fi

step "noVNC: from the npm registry (pinned), built into hearth/static/novnc"
if [ ! -f hearth/static/novnc/core/rfb.js ] || [ web/package-lock.json -nt hearth/static/novnc/core/rfb.js ]; then
  (cd web && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
  rm -rf hearth/static/novnc
  mkdir -p hearth/static/novnc
  cp -r web/node_modules/@novnc/novnc/core web/node_modules/@novnc/novnc/vendor hearth/static/novnc/
  cp web/node_modules/@novnc/novnc/LICENSE.txt hearth/static/novnc/
  node -e 'console.log("noVNC " + require("./web/node_modules/@novnc/novnc/package.json").version)'
else
  echo "already built"
fi
step "setup done"
