"""`sealfs xattr`: a volume entry's extended attributes and POSIX ACLs without a mount.

Reads look like getfattr's (`# file:` then name="value" lines, values as text when
printable, else base64 `0s...`, or as asked with -e); -v/-x write as setfattr does. Writes
go through the same Volume calls as the mount's setxattr and removexattr, so the same
rules hold (namespaces, limits, XATTR_CREATE/REPLACE errors, ACL checks and the mode an
access ACL implies). The CLI runs as a trusted tool: trusted.* is shown and settable.
"""

from __future__ import annotations

import base64
import re
import stat as stat_module

import click

from ...errors import UsageError
from ..core import acl
from ..core.volume import Attr, Volume

_PRINTABLE = re.compile(rb"[\x20-\x7e\t\n]*\x00?")
_TAGS = {acl.USER_OBJ: "user", acl.USER: "user", acl.GROUP_OBJ: "group", acl.GROUP: "group",
         acl.MASK: "mask", acl.OTHER: "other"}


def encode(value: bytes, encoding: str | None) -> str:
    """A value as getfattr prints it: "text", 0x hex or 0s base64."""
    if encoding is None:
        encoding = "text" if _PRINTABLE.fullmatch(value) else "base64"
    if encoding == "hex":
        return "0x" + value.hex()
    if encoding == "base64":
        return "0s" + base64.b64encode(value).decode()
    text = value[:-1] if value.endswith(b"\0") else value
    out = "".join(chr(b) if 0x20 <= b < 0x7f and b not in b'"\\' else f"\\{b:03o}" for b in text)
    return f'"{out}"'


def decode(text: str) -> bytes:
    """A value as setfattr takes it: 0x hex, 0s base64, "quoted" (octal escapes) or raw."""
    try:
        if text[:2].lower() == "0x":
            return bytes.fromhex(text[2:])
        if text[:2].lower() == "0s":
            return base64.b64decode(text[2:], validate=True)
    except ValueError as exc:
        raise UsageError(f"bad value {text!r}: {exc}") from None
    if len(text) >= 2 and text[0] == text[-1] == '"':
        raw = text[1:-1].encode("utf-8", "surrogateescape")
        return re.sub(rb"\\([0-7]{3}|.)", lambda m: bytes([int(m[1], 8)]) if len(m[1]) == 3
                      else m[1], raw)
    return text.encode("utf-8", "surrogateescape")


def acl_text(attr: Attr, entries: dict[bytes, bytes]) -> list[str]:
    """getfacl -n's lines: the access ACL (or the one the mode bits are), then the
    default ACL's with a default: prefix."""
    lines = [f"# owner: {attr.uid}", f"# group: {attr.gid}"]
    flags = attr.mode & 0o7000
    if flags:
        lines.append("# flags: " + "".join(c if flags & bit else "-" for c, bit in
                                           (("s", 0o4000), ("s", 0o2000), ("t", 0o1000))))
    access = entries.get(acl.ACCESS)
    parsed = acl.parse(access) if access is not None else [
        (acl.USER_OBJ, attr.mode >> 6 & 7, 0), (acl.GROUP_OBJ, attr.mode >> 3 & 7, 0),
        (acl.OTHER, attr.mode & 7, 0)]
    lines += [_acl_line(e) for e in parsed]
    default = entries.get(acl.DEFAULT)
    if default is not None:
        lines += ["default:" + _acl_line(e) for e in acl.parse(default)]
    return lines


def _acl_line(entry: acl.Entry) -> str:
    tag, perm, ident = entry
    who = str(ident) if tag in (acl.USER, acl.GROUP) else ""
    bits = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
    return f"{_TAGS[tag]}:{who}:{bits}"


async def mark_of(vol: Volume, path: str, attr: Attr) -> str:
    """`ls -l`'s mark after the mode: '+' with an ACL (as ls), '@' with other extended
    attributes only (as macOS ls), ' ' with none (no store read: the inode's flag)."""
    if not attr.xattrs:
        return " "
    names = await vol.listxattr(path)
    return "+" if acl.ACCESS in names or acl.DEFAULT in names else "@" if names else " "


def register(cli, Context, key_options, opened_volume, run) -> None:
    @cli.command()
    @click.argument("store", required=False)
    @click.argument("path", required=False)
    @click.option("-n", "--name", "name", default=None, help="Only this attribute (with -v: set it).")
    @click.option("-d", "--dump", is_flag=True, help="Names and values (default: names only).")
    @click.option("-e", "--encoding", type=click.Choice(["text", "hex", "base64"]), default=None,
                  help="How values are shown (default: text when printable, else base64).")
    @click.option("-v", "--value", default=None,
                  help="With -n: set the attribute to this (0x hex, 0s base64, \"text\" or text).")
    @click.option("-x", "--remove", default=None, metavar="NAME", help="Remove this attribute.")
    @click.option("--acl", "show_acl", is_flag=True, help="Show the POSIX ACLs as getfacl -n does.")
    @key_options
    def xattr(store, path, name, dump, encoding, value, remove, show_acl) -> None:
        """Show (getfattr -d -m - style) or set/remove (setfattr style) the extended
        attributes of PATH in the volume, POSIX ACLs and trusted.* included."""
        c = click.get_current_context().find_object(Context)
        store, path = c.positionals(store, path, required=2)
        if value is not None and name is None:
            raise UsageError("-v needs -n NAME")
        if remove is not None and (name is not None or value is not None):
            raise UsageError("-x goes alone")

        async def main() -> None:
            async with opened_volume(store) as vol:
                if value is not None:
                    await vol.setxattr(path, _name(name), decode(value))
                elif remove is not None:
                    await vol.removexattr(path, _name(remove))
                else:
                    await _show(vol, path, name, dump, encoding, show_acl)
        run(main)


def _name(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


async def _show(vol: Volume, path: str, name: str | None, dump: bool, encoding: str | None,
                show_acl: bool) -> None:
    attr = await vol.stat(path)
    lines = [f"# file: {path}"]      # printed once all is read: an error prints nothing
    if show_acl:
        entries = await vol.xattr_items(path) if attr.xattrs else {}
        if stat_module.S_ISLNK(attr.st_mode):
            entries = {}
        lines += acl_text(attr, entries)
    elif name is not None:
        lines.append(f"{name}={encode(await vol.getxattr(path, _name(name)), encoding)}")
    else:
        entries = await vol.xattr_items(path) if attr.xattrs else {}
        for key in sorted(entries):
            shown = key.decode("utf-8", "surrogateescape")
            lines.append(f"{shown}={encode(entries[key], encoding)}" if dump or encoding else shown)
    click.echo("\n".join(lines) + "\n")
