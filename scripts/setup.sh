#!/usr/bin/env bash
# Sets up everything hearth needs on a Debian 12 machine (run as root). Idempotent; a second run takes about a second.
#   1. Debian packages: the sandbox desktop (Xvnc; or Xvfb + x11vnc; Openbox, Chromium), bubblewrap, nftables, QEMU, tools
#   2. .venv with hearth and its pinned dependencies (pyproject.toml, extra "dev")
#   3. noVNC from the npm registry (exact version pinned in web/package-lock.json), copied into hearth/static/novnc
#   4. the provider CLIs (Node + claude, codex, gemini; clis/package-lock.json) into /var/cache/hearth/clis/<hash>
# Nothing is fetched at run time: hearth serves noVNC itself. Only apt, PyPI and npm are used, by package name.
# See docs/setup-notes.md for why each package is here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
START=$SECONDS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 npm_config_fund=false npm_config_audit=false \
  npm_config_update_notifier=false

step() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() {
  printf 'setup.sh: %s\n' "$*" >&2
  exit 1
}
# Runs a noisy command quietly; on failure shows the end of its output and stops.
quiet() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    rm -f "$log"
    die "failed: $*"
  fi
  rm -f "$log"
}
sha() { sha256sum "$@" | cut -d' ' -f1; }

# ---- 1. Debian packages --------------------------------------------------------------------------------------------
APT_PACKAGES=(
  # the desktop inside each sandbox
  tigervnc-standalone-server xvfb openbox x11vnc chromium fonts-dejavu-core xdotool
  # sandboxing and networking
  bubblewrap nftables libnftables1 iproute2 util-linux procps kmod iputils-ping arping
  # the VM drivers and their guest image
  qemu-system-x86 qemu-utils debootstrap e2fsprogs cpio busybox-static zstd xz-utils
  # the control plane itself
  python3 python3-venv ca-certificates
  # PostgreSQL 15: the second store the tests run against (scripts/test.sh starts a throwaway cluster)
  postgresql
)
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)

step "apt: Debian packages"
declare -A have=()
while IFS=$'\t' read -r pkg status; do
  [ "$status" = "install ok installed" ] && have[$pkg]=1
done < <(dpkg-query -W -f='${Package}\t${Status}\n' "${APT_PACKAGES[@]}" 2>/dev/null || true)
missing=()
for p in "${APT_PACKAGES[@]}"; do [ -n "${have[$p]:-}" ] || missing+=("$p"); done
if ((${#missing[@]})); then
  [ "$(id -u)" = 0 ] || die "missing Debian packages (${missing[*]}); run as root"
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: hearth's setup expects Debian 12"
  note "installing: ${missing[*]}"
  quiet apt-get update
  quiet env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
  note "all ${#APT_PACKAGES[@]} present"
fi
need=(Xvnc Xvfb openbox x11vnc chromium xdotool bwrap nft ip nsenter setpriv ping arping qemu-system-x86_64 qemu-img node npm)
absent=()
for c in "${need[@]}"; do command -v "$c" >/dev/null 2>&1 || absent+=("$c"); done
((${#absent[@]} == 0)) || die "commands still missing after apt: ${absent[*]}"
[ -e /dev/net/tun ] || note "warning: /dev/net/tun is missing (VM drivers need it: modprobe tun)"

# ---- 2. Python virtualenv ------------------------------------------------------------------------------------------
step "python: .venv with hearth[dev] (pinned in pyproject.toml)"
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null 2>&1 || die "$PY not found"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "hearth needs Python >= 3.11; $PY is $("$PY" -V 2>&1)"
if ! .venv/bin/python -c '' 2>/dev/null; then
  note "creating .venv with $("$PY" -V 2>&1) ($(command -v "$PY"))"
  quiet "$PY" -m venv --clear .venv
fi
want="$(sha pyproject.toml) $(.venv/bin/python -V 2>&1)"
stamp=.venv/.hearth-installed
# The editable install must point at this tree (a copied or moved .venv would import another one).
here=$( (cd / && "$ROOT/.venv/bin/python" -c 'import hearth, os; print(os.path.dirname(os.path.dirname(hearth.__file__)))') 2>/dev/null) || here=""
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ "$here" != "$ROOT" ]; then
  note "installing (pip)"
  quiet .venv/bin/python -m pip install -q --upgrade pip
  quiet .venv/bin/python -m pip install -q -e '.[dev]'
  printf '%s\n' "$want" >"$stamp"
else
  note "up to date"
fi

# ---- 3. noVNC ------------------------------------------------------------------------------------------------------
step "noVNC: npm package pinned in web/package-lock.json -> hearth/static/novnc"
DEST=hearth/static/novnc
lock=$(sha web/package.json web/package-lock.json | tr -d '\n')
if [ "$(cat "$DEST/.lock-sha256" 2>/dev/null)" != "$lock" ] || [ ! -f "$DEST/core/rfb.js" ]; then
  (cd web && quiet npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  SRC=web/node_modules/@novnc/novnc
  [ -f "$SRC/core/rfb.js" ] || die "npm ci did not produce $SRC/core/rfb.js"
  tmp=$(mktemp -d web/node_modules/.hearth-novnc.XXXXXX) # same filesystem, git-ignored
  cp -r "$SRC/core" "$SRC/vendor" "$SRC/LICENSE.txt" "$SRC/package.json" "$tmp/"
  printf '%s\n' "$lock" >"$tmp/.lock-sha256"
  chmod -R a+rX "$tmp"
  rm -rf "$DEST"
  mkdir -p "$(dirname "$DEST")"
  mv "$tmp" "$DEST"
  note "built noVNC $(node -p 'require("./'"$DEST"'/package.json").version')"
else
  note "noVNC $(node -p 'require("./'"$DEST"'/package.json").version') already built"
fi

# ---- 4. provider CLIs ----------------------------------------------------------------------------------------------
HEARTH_CLIS_CACHE=${HEARTH_CLIS_CACHE:-/var/cache/hearth/clis}
step "provider CLIs: Node + claude, codex, gemini pinned in clis/package-lock.json -> $HEARTH_CLIS_CACHE/<lock hash>"
# Outside the repo, world-readable (the sandbox user runs them; the netns driver binds the directory read-only at
# /opt/hearth/clis, `hearth image build` copies it into the image). Cached by lock hash: no download per test run.
clis_hash=$(cat clis/package.json clis/package-lock.json | sha | cut -c1-16)
CLIS="$HEARTH_CLIS_CACHE/$clis_hash"
if [ ! -x "$CLIS/node_modules/.bin/claude" ] || [ ! -x "$CLIS/node_modules/.bin/node" ]; then
  mkdir -p "$HEARTH_CLIS_CACHE"
  chmod a+rx "$HEARTH_CLIS_CACHE" "$(dirname "$HEARTH_CLIS_CACHE")"
  tmp=$(mktemp -d "$HEARTH_CLIS_CACHE/.tmp-XXXXXX")
  cp clis/package.json clis/package-lock.json "$tmp/"
  (cd "$tmp" && quiet npm ci --no-audit --no-fund --loglevel=error)
  chmod -R a+rX "$tmp"
  rm -rf "$CLIS"
  mv "$tmp" "$CLIS"
fi
for b in node claude codex gemini; do
  [ -x "$CLIS/node_modules/.bin/$b" ] || die "npm ci did not install $b into $CLIS"
done
note "$(PATH="$CLIS/node_modules/.bin:$PATH" bash -c 'echo "node $(node --version), claude $(claude --version | cut -d" " -f1), codex $(codex --version | cut -d" " -f2), gemini $(gemini --version)"')"

step "setup done in $((SECONDS - START))s"
