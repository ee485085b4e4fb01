"""Azure Files over HTTPS: the File service REST API through azure-storage-file-share.

For networks that block port 445, and for credentials narrower than the account key:
Entra ID (RBAC roles), SAS tokens restricted to HTTPS, or the account key.

REST has no open handles: a Handle here is a path (it follows renames made through this
backend) plus the file's size, shared by every handle on that path, because Put Range
cannot write past the end of a file: a write that grows the file resizes it first. The
volume hides unlinked open files itself (unlink_open_files=False), as on SMB, since
deleting the name deletes the data here too.

Times: REST exposes creation, last-write and change times, not the last access time, and
sets none of them on read. The access time is kept in the creation-time field, which
sealfs has no other use for: set_times is one Set File Properties, and a listing returns
both times. Creating, deleting or renaming an entry over REST moves no time of its
directory, and nothing reports a directory's link count: the volume stamps the directory
(stamp_dir) and counts subdirectories itself.

Requests: a path's kind (file or directory) is asked of the service one request per kind:
a File GET on a directory answers 404 ResourceNotFound, as for a missing name, so the
error tells nothing of the other kind. The backend remembers the kind it last saw at each
path (stat, listing, create, rename) and asks that kind first: a stale memory costs one
request more, never a wrong answer. ResourceNotFound (not ParentNotFound) says the parent
is a directory, so a missing name needs no walk up its ancestors. Create, Rename and Set
Properties answer with the file's times and id: a new or renamed file's stat comes from
that answer, not from a second request.

Requests that Azure throttles (429, 503 ServerBusy) were not executed and are retried
whatever they are, honouring Retry-After; other server errors (500, 502, 504) and lost
responses are retried only for idempotent requests (reads, writes of a range, setting a
size or times). Retrying stops after a bounded time, then the request fails with EIO.
"""

from .backend import AzureFilesBackend, AzureHandle
from .config import CONTRIBUTOR_ROLE, RANGE, READER_ROLE, AzureSettings, AzureTarget, check_sas

__all__ = ["CONTRIBUTOR_ROLE", "RANGE", "READER_ROLE", "AzureFilesBackend", "AzureHandle",
           "AzureSettings", "AzureTarget", "check_sas"]
