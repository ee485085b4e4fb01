#!/usr/bin/env bash
# Set everything up, lint, then run the whole test suite (arguments go to pytest). The
# tests start what they need (a Samba server on loopback, SoftHSM tokens, a local Key
# Vault-compatible server) and stop it afterwards. A lint error fails the run before any
# test starts (ruff comes with the `test` extra; its rules are in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check .
# Two workers (pytest-xdist; one per core): much of the suite waits on FUSE, smbd and
# child processes, so the run takes ~12-15 minutes instead of ~24. `-n 0` after the
# command runs it in one process (debugging); tests marked `serial` run alone.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist worksteal "$@"
