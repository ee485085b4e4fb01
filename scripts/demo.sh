#!/usr/bin/env bash
# Set everything up, then run the main job on the embedded default (local backend,
# local keyfile): mount an encrypted volume, use it like a disk, and show that the
# store holds only ciphertext. The mount stays up; the last line says how to unmount.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SEALFS=$PWD/.venv/bin/sealfs
DEMO=${SEALFS_DEMO_DIR:-/var/tmp/sealfs-demo}
export SEALFS_STATE_DIR="$DEMO/state"
export SEALFS_KEYFILE="$DEMO/volume.key"
STORE="$DEMO/store" MNT="$DEMO/mnt"

if mountpoint -q "$MNT" 2>/dev/null; then $SEALFS umount "$MNT"; fi
mkdir -p "$DEMO" "$MNT"
if [ ! -e "$STORE/sealfs.json" ]; then
  echo "== sealfs init $STORE (new 32-byte keyfile $SEALFS_KEYFILE, mode 0600)"
  $SEALFS init "$STORE" --chunk-size 64K
fi

echo "== sealfs mount $STORE $MNT"
$SEALFS mount "$STORE" "$MNT" --daemon --log-file "$DEMO/mount.log"
mkdir -p "$MNT/documents"
echo "The quick brown fox SEALFS-DEMO-MARKER" > "$MNT/documents/hello.txt"
head -c 8M /dev/urandom > "$DEMO/random.bin"
cp "$DEMO/random.bin" "$MNT/random.bin"
cp -a /etc/os-release "$MNT/documents/"
ln -sf documents/hello.txt "$MNT/hello-link"
echo "== the mounted volume"
ls -lR "$MNT"
cat "$MNT/hello-link"
cmp "$DEMO/random.bin" "$MNT/random.bin" && echo "8 MiB round trip through the mount: ok"
sync
echo "== what the store holds: encrypted names, sealed chunks"
find "$STORE" -maxdepth 2 | sed "s|$DEMO/||" | head -20
if grep -rq SEALFS-DEMO-MARKER "$STORE"; then
  echo "FAIL: plaintext found in the store" >&2; exit 1
fi
echo "no plaintext in the store: ok"
echo "== the mount-less CLI reads the same volume"
$SEALFS ls "$STORE" /documents -l
echo
echo "Mounted: $MNT (store $STORE, key $SEALFS_KEYFILE)."
echo "Unmount with: $SEALFS umount $MNT"
