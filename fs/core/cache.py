"""A byte-bounded LRU of decrypted chunks, shared by all files of a volume.

Keyed by (file id, chunk index): hard links share one file id, so they share
cached plaintext. Only committed (clean) plaintext lives here; dirty chunks stay
with their file until write-back.
"""

from __future__ import annotations

from collections import OrderedDict


class ChunkCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._by_file: dict[bytes, set[int]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, file_id: bytes, index: int) -> bytes | None:
        key = (file_id, index)
        data = self._entries.get(key)
        if data is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return data

    def put(self, file_id: bytes, index: int, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        key = (file_id, index)
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._entries[key] = data
        self._by_file.setdefault(file_id, set()).add(index)
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            (fid, idx), evicted = self._entries.popitem(last=False)
            self.bytes -= len(evicted)
            indices = self._by_file.get(fid)
            if indices is not None:
                indices.discard(idx)
                if not indices:
                    del self._by_file[fid]

    def discard(self, file_id: bytes, index: int) -> None:
        data = self._entries.pop((file_id, index), None)
        if data is not None:
            self.bytes -= len(data)
            indices = self._by_file.get(file_id)
            if indices is not None:
                indices.discard(index)

    def drop_file(self, file_id: bytes, from_index: int = 0) -> None:
        for index in [i for i in self._by_file.get(file_id, ()) if i >= from_index]:
            self.discard(file_id, index)
        if not self._by_file.get(file_id):
            self._by_file.pop(file_id, None)

    def clear(self) -> None:
        self._entries.clear()
        self._by_file.clear()
        self.bytes = 0
