"""sealfs: a transparent encrypting filesystem.

The real code lives in the top-level folders fs/, crypto/ and backends/, mapped to
sealfs.fs, sealfs.crypto and sealfs.backends by pyproject.toml; this package only
roots the namespace so nothing generic lands in site-packages.
"""

__version__ = "0.1.0"
