"""The SMB gateway: the system's smbd serving a sealfs mount, with encryption required.

This package runs processes (a `sealfs mount` child and smbd) and writes smbd's private
configuration; it never touches the volume itself, so it imports nothing of fs/core.
"""
