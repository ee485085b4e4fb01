#!/usr/bin/env bash
# Set everything up, then run the whole test suite. The tests start what they need
# (a Samba server on loopback, SoftHSM tokens, a local Key Vault-compatible server)
# and stop it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
