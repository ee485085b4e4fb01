"""Does Samba fail a related WRITE after the WRITE before it failed (disk full)? Run as root
from the repo: PYTHONPATH=. python docs/bench/2026-11-29d-smb/compound.py"""
import os, subprocess, trio
from tests.servers.samba import SambaServer
from sealfs.backends.smb import _write_msg, _RELATED_FID
from sealfs.backends.registry import open_backend, BackendOptions

with SambaServer() as s:
    sp = s.share_path
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(sp)], check=True)
    try:
        async def main():
            b = open_backend(s.store_url, BackendOptions(smb_password=lambda: s.password))
            await b.connect()
            h = await b.open("f.dat", write=True, create=True)
            await b.write(h, 0, b"OLDHEADER")
            with open(sp / "filler", "wb") as f:
                f.write(os.urandom(3 * 1024 * 1024))
            ch = h.channel
            fid = b._fid(h)
            for second_fid in ("related", "real"):
                def op():
                    f2 = _RELATED_FID if second_fid == "related" else fid
                    reqs = ch._send([_write_msg(fid, 1 << 20, os.urandom(2 << 20)),
                                     _write_msg(f2, 0, b"NEWHEADER")], True)
                    out = []
                    for r in reqs:
                        try:
                            resp = ch._receive(r)
                            out.append("ok")
                        except Exception as e:
                            out.append("err " + repr(e)[:120])
                    return out
                res = await trio.to_thread.run_sync(op)
                await b.flush(h)
                print(second_fid, res, "offset 0 now:", open(sp / "f.dat", "rb").read(9))
                await b.write(h, 0, b"OLDHEADER")
            await b.close(h)
            await b.aclose()
        trio.run(main)
    finally:
        subprocess.run(["umount", "-l", str(sp)])
