"""The SMB 3 backend: sealed chunks on a Samba server or an Azure Files share.

Transport encryption is *required*, not requested: only SMB 3 dialects are offered, the
session is set up with encryption on, and after the session and after every tree connect
the backend checks that every request it sends is encrypted and refuses
(TransportSecurityError) before any data moves if not. Responses are held to the same
rule: a plaintext message from the server on an encrypting session kills the connection
(smbprotocol alone would accept it if it were merely signed, or not even signed).

smbprotocol is blocking and thread-based (one receive thread per connection), so every
call runs in ``trio.to_thread.run_sync`` behind a CapacityLimiter. Reads and writes are
pipelined: a big write becomes many SMB2 WRITE requests in flight at once, bounded by the
credits the server granted. Each channel (connection + session + tree) reconnects on the
next request after a drop and re-verifies encryption; open handles are reopened lazily
on the new channel. Idempotent operations are retried once after a reconnect, the rest
raise BackendError (EIO): a write is reported done only once the server acknowledged
every byte of it.

The modules, each importing only those above it in this list:

- ``config``: SmbTarget (the store URL) and SmbSettings (the smb_* options);
- ``messages``: request builders, response parsers, NTSTATUS to errno; no I/O;
- ``wire``: smbprotocol's connection and transport, with the inbound encryption check
  and copy-free send and receive paths;
- ``channel``: one connection + session + tree, its credits, retries and pipelining;
- ``handles``: open handles, the idle-handle cache, reads spread over channels;
- ``backend``: SmbBackend, the Backend interface on top of them.
"""

from .backend import SmbBackend
from .config import SmbSettings, SmbTarget
from .handles import SmbHandle

__all__ = ["SmbBackend", "SmbHandle", "SmbSettings", "SmbTarget"]
