#!/usr/bin/env bash
# Set everything up, then run the main job on the embedded default (local backend,
# local keyfile): create a demo volume, store files through sealfs, and show that
# the store holds only ciphertext.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SEALFS=.venv/bin/sealfs
DEMO=${SEALFS_DEMO_DIR:-/tmp/sealfs-demo}
export SEALFS_STATE_DIR="$DEMO/state"
rm -rf "$DEMO" && mkdir -p "$DEMO"
export SEALFS_KEYFILE="$DEMO/volume.key"

echo "== sealfs init (a new 32-byte keyfile, mode 0600)"
$SEALFS init "$DEMO/store" --chunk-size 64K
echo "The quick brown fox SEALFS-DEMO-MARKER" > "$DEMO/hello.txt"
head -c 3M /dev/urandom > "$DEMO/random.bin"
$SEALFS mkdir "$DEMO/store" /documents
$SEALFS put "$DEMO/store" "$DEMO/hello.txt" /documents/hello.txt
$SEALFS put "$DEMO/store" "$DEMO/random.bin" /random.bin
echo "== sealfs ls -R"
$SEALFS ls "$DEMO/store" / -l -R
echo "== sealfs cat /documents/hello.txt"
$SEALFS cat "$DEMO/store" /documents/hello.txt
echo "== what the store holds (encrypted names, sealed chunks)"
find "$DEMO/store" | sed "s|$DEMO/||"
if grep -rq SEALFS-DEMO-MARKER "$DEMO/store"; then
  echo "FAIL: plaintext found in the store" >&2; exit 1
fi
echo "no plaintext marker in the store: ok"
$SEALFS get "$DEMO/store" /random.bin "$DEMO/random.out"
cmp "$DEMO/random.bin" "$DEMO/random.out" && echo "3 MiB round trip: ok"
