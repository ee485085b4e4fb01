"""smb-raw sequential write/read with a sealing loop beside it: in the same process (a
thread, as the mount does) or in another process. Shows what GIL sharing costs the SMB client."""
import os, sys, time, threading, multiprocessing, tempfile
from pathlib import Path
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

def seal_loop(stop, rate_mib):
    a = AESGCM(os.urandom(32)); data = os.urandom(65536); out = bytearray(65536 + 16)
    n = 0; t0 = time.perf_counter()
    while not stop.is_set():
        # seal at about rate_mib MiB/s in 64 KiB chunks, the way the mount's write-back does
        for _ in range(16):
            a.encrypt_into(os.urandom(12), data, b"aad", out)
        n += 1
        ahead = n / rate_mib - (time.perf_counter() - t0)
        if ahead > 0: time.sleep(ahead)

def fuse_like(stop, rate_mib):
    src = os.urandom(1 << 20); n = 0; t0 = time.perf_counter()
    while not stop.is_set():
        b = bytes(memoryview(src))                       # pyfuse3's copy of the WRITE
        v = memoryview(b)
        chunks = [bytearray() for _ in range(16)]
        for i in range(16):                               # into 64 KiB dirty chunks
            chunks[i][0:65536] = v[i * 65536:(i + 1) * 65536]
        n += 1
        ahead = n / rate_mib - (time.perf_counter() - t0)
        if ahead > 0: time.sleep(ahead)

def main():
    mode = sys.argv[1]
    from sealfs.bench.samba import BenchSamba
    from sealfs.bench.smb_raw import SmbRawTarget
    with BenchSamba() as server, tempfile.TemporaryDirectory() as work:
        for m in [mode]:
            if m == "none":
                stop = None
            elif m == "fuse":
                stop = threading.Event(); th = threading.Thread(target=fuse_like, args=(stop, 500), daemon=True); th.start()
            elif m == "thread":
                stop = threading.Event(); th = threading.Thread(target=seal_loop, args=(stop, 500), daemon=True); th.start()
            else:
                stop = multiprocessing.Event(); th = multiprocessing.Process(target=seal_loop, args=(stop, 500), daemon=True); th.start()
            with SmbRawTarget(Path(work), server.share()) as t:
                res = [t.sequential(512) for _ in range(2)]
            if stop is not None: stop.set(); th.join()
            print(m, {k: round(sum(r[k] for r in res) / 2) for k in res[0]})

main()
