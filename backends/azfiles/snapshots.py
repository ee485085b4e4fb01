"""Share snapshots and share soft delete on Azure Files (share- and account-level operations).

A share snapshot copies the whole share at one instant, read-only; its id is its time,
as Azure names it (2024-05-01T10:00:00.0000000Z). Creating, listing and deleting them
are share-level operations: the account key or an account SAS (srt=sc) reaches them, a
share SAS and the Entra ID data roles do not (Azure RBAC then needs a management role,
e.g. Storage Account Contributor, through the resource provider, which sealfs does not
speak). Reading a snapshot is a data operation: any credential that reads the share does.

Share soft delete is an account setting. The File service REST API answers it in its
service properties only where the service includes it; otherwise it is reported unknown.
"""

from __future__ import annotations

import errno
import re
import xml.etree.ElementTree as ET
from typing import Any

from ..base import BackendError, Snapshot, SoftDelete
from .rest import parse_time

SNAPSHOT_ID = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,7})?Z$")
SHARE_LEVEL = ("share snapshots are share-level operations: use the account key or an account SAS "
               "(ss=f, srt=sc); a share SAS and the Entra ID data roles cannot reach them")
SERVICE_LEVEL = "reading it needs the account key or an account SAS with srt=s"
METADATA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_snapshot_id(snapshot_id: str) -> str:
    """An id as Azure writes it; anything else is refused before a request is made (an
    empty one would make Delete Share delete the live share)."""
    if not SNAPSHOT_ID.match(snapshot_id or ""):
        raise ValueError(f"{snapshot_id!r} is not an Azure share snapshot id "
                         "(like 2024-05-01T10:00:00.0000000Z: see `sealfs snapshot list`)")
    return snapshot_id


class SnapshotOps:
    """Mixed into AzureFilesBackend: it provides _client, _client_args, _connect_lock, _run."""

    target: Any
    makes_snapshots = True

    def _service_client(self) -> Any:
        """The account's ShareServiceClient (snapshots, service properties), on the same
        credential and connection pool as the share's."""
        from azure.storage.fileshare import ShareServiceClient
        self._client()
        with self._connect_lock:
            if self._service is None:
                credential, kwargs = self._client_args
                self._service = ShareServiceClient(self.target.account_url, credential=credential, **kwargs)
            return self._service

    async def create_snapshot(self, metadata: dict[str, str]) -> Snapshot:
        for name in metadata:
            if not METADATA_NAME.match(name):
                raise ValueError(f"snapshot metadata name {name!r} is not allowed (letters, digits, _)")
        client = self._client()
        try:
            answer = await self._run(lambda: client.create_snapshot(metadata=metadata), "", idempotent=False)
        except PermissionError as exc:
            raise PermissionError(errno.EACCES, f"{exc.strerror}; {SHARE_LEVEL}") from None
        snap = str(answer["snapshot"])
        return Snapshot(snap, parse_time(snap), {k.lower(): v for k, v in metadata.items()})

    async def snapshots(self) -> list[Snapshot]:
        service, share = self._service_client(), self.target.share

        def listing() -> list[Any]:
            return [s for s in service.list_shares(name_starts_with=share, include_metadata=True,
                                                   include_snapshots=True)
                    if s.name.lower() == share.lower() and s.snapshot]
        try:
            shares = await self._run(listing, "", idempotent=True)
        except PermissionError as exc:
            raise PermissionError(errno.EACCES, f"{exc.strerror}; {SHARE_LEVEL}") from None
        out = [Snapshot(str(s.snapshot), parse_time(str(s.snapshot)), dict(s.metadata or {})) for s in shares]
        return sorted(out, key=lambda s: (s.time_ns, s.id))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        snapshot_id = check_snapshot_id(snapshot_id)
        client = self._service_client().get_share_client(self.target.share, snapshot=snapshot_id)
        if client.snapshot != snapshot_id:        # never a Delete Share without ?sharesnapshot=
            raise OSError(errno.EINVAL, f"snapshot {snapshot_id} not addressed; nothing deleted")
        try:
            await self._run(client.delete_share, "", idempotent=False)
        except PermissionError as exc:
            raise PermissionError(errno.EACCES, f"{exc.strerror}; {SHARE_LEVEL}") from None
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            raise BackendError(f"share snapshot {snapshot_id} does not exist", errno.ENOENT) from None

    async def soft_delete(self) -> SoftDelete:
        service = self._service_client()
        bodies: list[bytes] = []

        def hook(response: Any) -> None:
            bodies.append(response.http_response.body())

        try:
            await self._run(lambda: service.get_service_properties(raw_response_hook=hook), "",
                            idempotent=True)
        except PermissionError:
            return SoftDelete(None, why=f"this credential cannot read the account's settings; "
                                        f"{SERVICE_LEVEL}")
        return soft_delete_from(bodies[-1] if bodies else b"")


def soft_delete_from(body: bytes) -> SoftDelete:
    """ShareDeleteRetentionPolicy from a Get File Service Properties answer (raw XML: the
    SDK's model drops it)."""
    try:
        policy = ET.fromstring(body).find("ShareDeleteRetentionPolicy")
    except ET.ParseError:
        policy = None
    if policy is None:
        return SoftDelete(None, why="the File service did not report it: see `az storage account "
                                    "file-service-properties show`")
    enabled = (policy.findtext("Enabled") or "").strip().lower() == "true"
    days = policy.findtext("Days")
    return SoftDelete(enabled, int(days) if enabled and days and days.strip().isdigit() else None)
