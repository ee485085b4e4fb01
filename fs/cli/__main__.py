"""`python -m sealfs.fs.cli`: the `sealfs` command (tests and the daemon start it so)."""

from .main import main

main()
