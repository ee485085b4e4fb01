"""The key broker: unwraps each DEK once per process and caches it.

KMS calls are slow, metered and sometimes throttled, and a mount may open thousands
of files; so concurrent requests for the same DEK share one unwrap, and the result
stays cached. Providers are blocking and run in worker threads.
"""

from __future__ import annotations

import trio

from .config import VolumeConfig, WrappedDek
from .errors import KeyAccessError
from .kms import KekProvider


class KeyBroker:
    def __init__(self, provider: KekProvider, config: VolumeConfig) -> None:
        self.provider = provider
        self.config = config
        self._cache: dict[int, bytearray] = {}
        self._inflight: dict[int, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(4)

    async def dek(self, dek_id: int) -> bytes:
        while True:
            key = self._cache.get(dek_id)
            if key is not None:
                return bytes(key)
            event = self._inflight.get(dek_id)
            if event is None:
                break
            await event.wait()
            if dek_id not in self._cache:
                raise KeyAccessError(f"DEK {dek_id} could not be unwrapped")
        event = self._inflight[dek_id] = trio.Event()
        try:
            wrapped = self.config.dek(dek_id)
            result = await trio.to_thread.run_sync(self.provider.unwrap, wrapped, limiter=self._limiter)
            self._cache[dek_id] = result.dek
            return bytes(result.dek)
        finally:
            del self._inflight[dek_id]
            event.set()

    def dek_sync(self, dek_id: int) -> bytes:
        """For code outside trio (init, tests)."""
        key = self._cache.get(dek_id)
        if key is None:
            key = self.provider.unwrap(self.config.dek(dek_id)).dek
            self._cache[dek_id] = key
        return bytes(key)

    def add_unwrapped(self, wrapped: WrappedDek, dek: bytes) -> None:
        self._cache[wrapped.id] = bytearray(dek)

    def close(self) -> None:
        for key in self._cache.values():
            key[:] = bytes(len(key))
        self._cache.clear()
        self.provider.close()
