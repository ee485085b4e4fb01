"""The key broker: unwraps each DEK once per process and caches it.

KMS calls are slow, metered and sometimes throttled, and a mount may open thousands
of files; so concurrent requests for the same DEK share one unwrap, and the result
stays cached. Providers are blocking and run in worker threads.

Cache policy:
* TTL counts from the last use and evicts only idle keys: a key acquired by an open
  file (acquire/release, or ``async with broker.using(id)``) stays until released.
* At most ``max_entries`` keys; beyond that the least recently used idle key goes.
* Keys live in the locked arena (crypto/secmem.py: mlock()ed, MADV_DONTDUMP) and are
  zeroed on eviction and close(). Callers get a read-only memoryview of that memory,
  not a copy, so an evicted key is zero everywhere sealfs holds it; what KMS SDKs and
  `cryptography` copy internally cannot be zeroed (README, "Key handling").
* If the KMS becomes unreachable, cached keys keep serving until their TTL; new
  unwraps fail with KeyAccessError (one line, from the provider).
"""

from __future__ import annotations

import hmac
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from ...errors import KeyAccessError, SealfsError
from ..format.config import VolumeConfig, WrappedDek
from ..format.constants import KEY_SIZE
from ..secmem import SecretBuffer, libc, secret
from .audit import AuditLog
from .kms import KekProvider

DEFAULT_TTL = 3600.0
DEFAULT_MAX_ENTRIES = 256

# -- process hardening -----------------------------------------------------------------------

def harden_process() -> dict[str, bool]:
    """Best effort: no core dumps and no ptrace by other same-uid processes.

    PR_SET_DUMPABLE=0 keeps DEKs out of core files and /proc/PID/mem of peers; the
    core rlimit of 0 covers kernels where a core handler ignores dumpable.
    Returns which measures took effect (for a debug line, never fatal).
    """
    result = {"dumpable_off": False, "core_limit_zero": False}
    lib = libc()
    if lib is not None:
        PR_SET_DUMPABLE = 4
        result["dumpable_off"] = lib.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        result["core_limit_zero"] = True
    except (ImportError, ValueError, OSError):
        pass
    return result


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


# -- helpers used by init / add-dek / rotate-kek -----------------------------------------------

def _audit_call(audit: AuditLog, operation: str, provider: KekProvider, fn: Callable[[], object], *,
                dek_id: int | None, kek_version: str | None = None, volume_id: str | None = None,
                request_id: Callable[[object], str | None] = lambda r: getattr(r, "request_id", None),
                version_of: Callable[[object], str | None] = lambda r: None) -> object:
    """Run one KMS call and write its audit line, success or failure."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        audit.record(operation, provider=provider.provider, kek_id=provider.kek_id, kek_version=kek_version,
                     dek_id=dek_id, volume_id=volume_id, outcome="error",
                     latency_ms=(time.perf_counter() - t0) * 1000,
                     request_id=getattr(provider, "last_request_id", None),
                     error=f"{type(exc).__name__}: {exc}"[:300])
        raise
    audit.record(operation, provider=provider.provider, kek_id=provider.kek_id,
                 kek_version=version_of(result) or kek_version, dek_id=dek_id, volume_id=volume_id,
                 outcome="ok", latency_ms=(time.perf_counter() - t0) * 1000, request_id=request_id(result))
    return result


def wrap_new_dek(provider: KekProvider, dek_id: int, *, audit: AuditLog | None = None,
                 volume_id: str | None = None, verify: bool = True) -> tuple[WrappedDek, bytearray]:
    """Make a fresh random DEK and wrap it; returns (wrapped, plaintext).

    verify=True unwraps it again before returning: an RSA wrap needs only the public
    key, so without this an identity lacking unwrap permission would happily create
    a volume nobody can open.
    """
    audit = audit if audit is not None else AuditLog()
    dek = bytearray(os.urandom(KEY_SIZE))
    res = _audit_call(audit, "wrap", provider, lambda: provider.wrap(bytes(dek)), dek_id=dek_id,
                      volume_id=volume_id, version_of=lambda r: r.kek_version)  # type: ignore[attr-defined]
    wrapped = WrappedDek(dek_id, res.wrapped, res.algorithm, res.kek_version)  # type: ignore[attr-defined]
    if verify:
        _verify_unwrap(provider, wrapped, dek, audit, volume_id)
    return wrapped, dek


def _verify_unwrap(provider: KekProvider, wrapped: WrappedDek, expect: bytearray, audit: AuditLog,
                   volume_id: str | None) -> None:
    out = _audit_call(audit, "unwrap", provider, lambda: provider.unwrap(wrapped), dek_id=wrapped.id,
                      kek_version=wrapped.kek_version, volume_id=volume_id)
    got = out.dek  # type: ignore[attr-defined]
    try:
        if not hmac.compare_digest(bytes(got), bytes(expect)):
            raise KeyAccessError(f"KEK {provider.kek_id} unwrapped DEK {wrapped.id} to a different key; "
                                 f"refusing to use it")
    finally:
        _wipe(got)


# -- the broker ----------------------------------------------------------------------------

@dataclass
class _Entry:
    secret: SecretBuffer
    last_used: float
    refs: int = 0


@dataclass
class _Inflight:
    event: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


@dataclass
class BrokerStats:
    unwraps: int = 0          # provider.unwrap calls (success or failure)
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class KeyBroker:
    """DEK cache in front of one KEK provider for one volume."""

    def __init__(self, provider: KekProvider, config: VolumeConfig, *, ttl: float | None = DEFAULT_TTL,
                 max_entries: int = DEFAULT_MAX_ENTRIES, audit: AuditLog | None = None,
                 concurrency: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.provider = provider
        self.config = config
        self.ttl = ttl
        self.max_entries = max_entries
        self.audit = audit if audit is not None else AuditLog()
        self.stats = BrokerStats()
        self._clock = clock
        self._cache: dict[int, _Entry] = {}
        self._inflight: dict[int, _Inflight] = {}
        self._lock = threading.RLock()           # the cache is shared with worker threads (dek_sync)
        self._sync_locks: dict[int, threading.Lock] = {}
        self._limiter = trio.CapacityLimiter(concurrency)
        self._closed = False

    @property
    def volume_id(self) -> str:
        return self.config.volume_id.hex()

    # -- cache internals (call with self._lock held) ----------------------------------------
    def _expired(self, entry: _Entry, now: float) -> bool:
        return entry.refs == 0 and self.ttl is not None and now - entry.last_used >= self.ttl

    def _drop(self, dek_id: int) -> None:
        entry = self._cache.pop(dek_id, None)
        if entry is not None:
            entry.secret.wipe()
            self.stats.evictions += 1

    def _take(self, dek_id: int, acquire: bool) -> memoryview | None:
        with self._lock:
            now = self._clock()
            entry = self._cache.get(dek_id)
            if entry is None:
                return None
            if self._expired(entry, now):
                self._drop(dek_id)
                return None
            entry.last_used = now
            if acquire:
                entry.refs += 1
            self.stats.hits += 1
            return entry.secret.readonly()

    def _store(self, dek_id: int, key: bytearray, acquire: bool) -> memoryview:
        """Move a freshly unwrapped key into the cache (the caller's buffer is zeroed)."""
        with self._lock:
            old = self._cache.pop(dek_id, None)
            if old is not None:
                old.secret.wipe()
            entry = _Entry(secret(key), self._clock(), 1 if acquire else 0)
            _wipe(key)
            self._cache[dek_id] = entry
            self._evict_over_capacity()
            return entry.secret.readonly()

    def _evict_over_capacity(self) -> None:
        excess = len(self._cache) - self.max_entries
        if excess <= 0:
            return
        idle = sorted((e.last_used, i) for i, e in self._cache.items() if e.refs == 0)
        for _, dek_id in idle[:excess]:
            self._drop(dek_id)

    def evict_expired(self) -> int:
        """Zero and drop idle keys past their TTL; returns how many went."""
        with self._lock:
            now = self._clock()
            gone = [i for i, e in self._cache.items() if self._expired(e, now)]
            for dek_id in gone:
                self._drop(dek_id)
            return len(gone)

    def cached_ids(self) -> list[int]:
        with self._lock:
            return sorted(self._cache)

    # -- unwrap -------------------------------------------------------------------------
    def _unwrap_blocking(self, dek_id: int) -> bytearray:
        """One audited provider.unwrap call (runs in a worker thread or the caller)."""
        wrapped = self.config.dek(dek_id)
        self.audit.record("cache_miss", provider=self.provider.provider, kek_id=self.provider.kek_id,
                          kek_version=wrapped.kek_version, dek_id=dek_id, volume_id=self.volume_id,
                          outcome="miss")
        with self._lock:
            self.stats.misses += 1
            self.stats.unwraps += 1
        try:
            result = _audit_call(self.audit, "unwrap", self.provider, lambda: self.provider.unwrap(wrapped),
                                 dek_id=dek_id, kek_version=wrapped.kek_version, volume_id=self.volume_id)
        except SealfsError:
            raise
        except Exception as exc:  # a provider bug or an unmapped library error: still one line
            raise KeyAccessError(f"unwrapping DEK {dek_id} with {self.provider.kek_id} failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
        key = result.dek  # type: ignore[attr-defined]
        if len(key) != KEY_SIZE:
            _wipe(key)
            raise KeyAccessError(f"KEK {self.provider.kek_id} returned a {len(key)}-byte DEK {dek_id}")
        return key

    async def _get(self, dek_id: int, acquire: bool) -> memoryview:
        if self._closed:
            raise KeyAccessError("the key broker is closed")
        while True:
            key = self._take(dek_id, acquire)
            if key is not None:
                return key
            flight = self._inflight.get(dek_id)
            if flight is None:
                break
            await flight.event.wait()
            if flight.error is not None:
                err = flight.error
                raise type(err)(*err.args) if isinstance(err, SealfsError) else KeyAccessError(str(err))
        flight = self._inflight[dek_id] = _Inflight()
        try:
            raw = await trio.to_thread.run_sync(self._unwrap_blocking, dek_id, limiter=self._limiter)
            return self._store(dek_id, raw, acquire)
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                flight.error = exc
            raise
        finally:
            del self._inflight[dek_id]
            flight.event.set()

    async def dek(self, dek_id: int) -> memoryview:
        """The DEK (cached; at most one unwrap in flight per DEK): a view of locked memory,
        valid until the key is evicted; use it before the next await, or acquire() it."""
        return await self._get(dek_id, acquire=False)

    async def acquire(self, dek_id: int) -> memoryview:
        """Like dek(), and pins the key until release(): TTL never evicts a key in use."""
        return await self._get(dek_id, acquire=True)

    def release(self, dek_id: int) -> None:
        with self._lock:
            entry = self._cache.get(dek_id)
            if entry is not None and entry.refs > 0:
                entry.refs -= 1
                entry.last_used = self._clock()

    @asynccontextmanager
    async def using(self, dek_id: int) -> AsyncIterator[memoryview]:
        key = await self.acquire(dek_id)
        try:
            yield key
        finally:
            self.release(dek_id)

    def dek_sync(self, dek_id: int) -> memoryview:
        """For code outside trio (init, CLI, tests); de-duplicated per DEK across threads."""
        if self._closed:
            raise KeyAccessError("the key broker is closed")
        key = self._take(dek_id, False)
        if key is not None:
            return key
        with self._lock:
            lock = self._sync_locks.setdefault(dek_id, threading.Lock())
        with lock:
            key = self._take(dek_id, False)
            if key is not None:
                return key
            return self._store(dek_id, self._unwrap_blocking(dek_id), False)

    def add_unwrapped(self, wrapped: WrappedDek, dek: bytes | bytearray) -> None:
        """Cache a DEK this process just created (init, add-dek): no unwrap needed."""
        self._store(wrapped.id, bytearray(dek), False)

    async def run_sweeper(self, interval: float = 30.0) -> None:
        """Run in the mount's nursery so idle keys are zeroed on time, not at next use."""
        while not self._closed:
            await trio.sleep(interval)
            self.evict_expired()

    # -- DEK and KEK lifecycle ------------------------------------------------------------
    def wrap_new_dek(self, dek_id: int | None = None, *, verify: bool = True) -> tuple[WrappedDek, bytearray]:
        """A new DEK under the current KEK, cached; the caller appends it to the config."""
        if dek_id is None:
            dek_id = max((d.id for d in self.config.deks), default=0) + 1
        wrapped, dek = wrap_new_dek(self.provider, dek_id, audit=self.audit, volume_id=self.volume_id,
                                    verify=verify)
        self.add_unwrapped(wrapped, dek)
        return wrapped, dek

    def rewrap_all(self, new_provider: KekProvider, *, verify: bool = True) -> list[WrappedDek]:
        """Wrap every DEK of the volume under new_provider (KEK rotation; no data re-encryption).

        Returns the new list for the caller to store with new_provider.config_entry();
        the config and provider held here change only via adopt(). Each new wrap is
        unwrapped again before it is returned, so a rotation cannot leave a volume
        that the new KEK cannot open.
        """
        out: list[WrappedDek] = []
        t0 = time.perf_counter()
        for old in self.config.deks:
            plain = bytearray(self.dek_sync(old.id))
            try:
                res = _audit_call(self.audit, "wrap", new_provider,
                                  lambda plain=plain: new_provider.wrap(bytes(plain)),
                                  dek_id=old.id, volume_id=self.volume_id,
                                  version_of=lambda r: r.kek_version)  # type: ignore[attr-defined]
                new = WrappedDek(old.id, res.wrapped, res.algorithm, res.kek_version,  # type: ignore[attr-defined]
                                 created=old.created)
                if verify:
                    _verify_unwrap(new_provider, new, plain, self.audit, self.volume_id)
            finally:
                _wipe(plain)
            self.audit.record("rotate", provider=new_provider.provider, kek_id=new_provider.kek_id,
                              kek_version=new.kek_version, dek_id=old.id, volume_id=self.volume_id,
                              outcome="ok", from_provider=self.provider.provider,
                              from_kek_id=self.provider.kek_id, from_kek_version=old.kek_version)
            out.append(new)
        self.audit.record("rotate", provider=new_provider.provider, kek_id=new_provider.kek_id,
                          volume_id=self.volume_id, outcome="ok",
                          latency_ms=(time.perf_counter() - t0) * 1000, deks=len(out))
        return out

    def adopt(self, new_provider: KekProvider, new_deks: list[WrappedDek]) -> None:
        """Switch to the rotated KEK once the new config is durably written (closes the old provider)."""
        old = self.provider
        self.config.kek = new_provider.config_entry()
        self.config.deks = list(new_deks)
        self.provider = new_provider
        if old is not new_provider:
            old.close()

    def close(self) -> None:
        """Zero every cached key and release the provider's sessions."""
        self._closed = True
        with self._lock:
            for dek_id in list(self._cache):
                self._drop(dek_id)
        self.provider.close()
