#!/usr/bin/env bash
# Install everything sealfs needs on a fresh Debian machine (run as root):
# system packages, then a virtual environment in .venv with sealfs installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  python3 python3-venv python3-dev build-essential pkg-config
  fuse3 libfuse3-dev attr acl libcap2-bin
  samba samba-vfs-modules samba-testsuite smbclient tcpdump
  softhsm2 opensc
  sqlite3 rsync git tar systemd util-linux
  gocryptfs rclone fio cryfs securefs
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# samba's package may start daemons on install; sealfs tests run their own smbd.
for svc in smbd nmbd samba-ad-dc; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test,bench]'
echo "setup: ready (.venv/bin/sealfs)" >&2
