# Shared helpers for berth's scripts: install what is missing, quietly.
# shellcheck shell=bash

set -euo pipefail

BERTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export BERTH_ROOT

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# ensure_debian_packages PKG... : installs the Debian packages that are missing.
ensure_debian_packages() {
  local missing=()
  for package in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$package")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The packages that building berth needs (RocksDB is built from source with bindgen).
ensure_build_dependencies() {
  ensure_debian_packages clang libclang-dev
  if ! command -v cargo >/dev/null; then
    echo "cargo is missing: install Rust (https://rustup.rs) first" >&2
    exit 1
  fi
}

# What running containers needs: runc and the network tools of the local runtime.
ensure_runtime_dependencies() {
  ensure_debian_packages runc iproute2 iptables
}

# What the tests need besides: busybox for test images, skopeo to check
# archives, the docker CLI's Python SDK.
ensure_test_dependencies() {
  ensure_runtime_dependencies
  ensure_debian_packages busybox-static skopeo tar
  # vcsim, the vSphere simulator, built from Debian's govmomi sources.
  "$BERTH_ROOT/scripts/vcsim.sh" >/dev/null
  if ! command -v docker >/dev/null; then
    ensure_debian_packages docker.io
  fi
  if ! python3 -c 'import docker' 2>/dev/null; then
    log "installing the Python docker SDK"
    python3 -m pip install --quiet 'docker>=7,<8' || python3 -m pip install --quiet --break-system-packages 'docker>=7,<8'
  fi
  ensure_pyvmomi
}

# pyvmomi, the vSphere Python SDK: the vSphere tests list vcsim's inventory
# through it, independently of berth's own client (tests/python/vsphere_inventory.py).
ensure_pyvmomi() {
  if ! python3 -c 'import pyVmomi' 2>/dev/null; then
    log "installing pyvmomi, the vSphere Python SDK"
    python3 -m pip install --quiet 'pyvmomi>=8,<10' || python3 -m pip install --quiet --break-system-packages 'pyvmomi>=8,<10'
  fi
}
