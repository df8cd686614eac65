"""Safe reading of tar shards: every member is checked before its bytes are used.

Shards may come from storage that other people can write to, so a reader never trusts a member:
- names must be relative, without ``..`` components, backslashes, drive letters or NUL bytes;
- only regular files are read; symbolic links, hard links, devices, FIFOs and other special members
  are rejected (directory entries are skipped: they carry no data);
- a member larger than ``max_member_bytes`` is rejected before it is read, and so is a shard with
  more than ``max_members`` members.

Nothing is ever extracted to disk; members are read into memory from a sequential stream (tarfile's
``r|`` mode), which works on non-seekable object-store streams. Every rejection raises
:class:`UnsafeTarMemberError`, whose message names the shard and the member.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from typing import BinaryIO

from facegs.core.errors import InputError

DEFAULT_MAX_MEMBER_BYTES = 256 * 1024**2  # one image of a sample is never near this
DEFAULT_MAX_MEMBERS = 1_000_000

_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeTarMemberError(InputError):
    """A tar member that must not be read (unsafe name, link, device, oversized, ...)."""

    def __init__(self, message: str, *, shard: str, member: str | None) -> None:
        self.shard = shard
        self.member = member
        where = f"shard '{shard}'" + (f", member {member!r}" if member is not None else "")
        super().__init__(f"{where}: {message}", path=shard)


def _member_kind(info: tarfile.TarInfo) -> str:
    if info.issym():
        return f"symbolic link (-> {info.linkname!r})"
    if info.islnk():
        return f"hard link (-> {info.linkname!r})"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "FIFO"
    return f"special member (type {info.type!r})"


def check_member_name(name: str, shard: str) -> None:
    """Raise :class:`UnsafeTarMemberError` unless ``name`` is a plain relative path."""
    if not name or "\x00" in name:
        raise UnsafeTarMemberError("empty name or NUL byte in the name", shard=shard, member=name)
    if name.startswith("/") or _DRIVE.match(name) or "\\" in name:
        raise UnsafeTarMemberError("absolute path (or backslash/drive letter) in a member name",
                                   shard=shard, member=name)
    if any(part == ".." for part in name.split("/")):
        raise UnsafeTarMemberError("'..' path component in a member name", shard=shard, member=name)


def check_member(info: tarfile.TarInfo, shard: str, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES) -> bool:
    """Check one member. Returns True for a regular file to read, False for a directory to skip.

    Raises :class:`UnsafeTarMemberError` naming ``shard`` and the member for anything else.
    """
    check_member_name(info.name, shard)
    if info.isdir():
        return False
    if not info.isreg():
        raise UnsafeTarMemberError(f"{_member_kind(info)} members are not allowed", shard=shard, member=info.name)
    if info.size < 0 or info.size > max_member_bytes:
        raise UnsafeTarMemberError(f"member of {info.size} bytes exceeds the limit of {max_member_bytes} bytes",
                                   shard=shard, member=info.name)
    return True


def iter_tar_members(
    fileobj: BinaryIO,
    shard: str,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for the regular-file members of a tar stream, in tar order.

    ``fileobj`` is read sequentially (no seeks). A corrupt or truncated tar raises
    :class:`facegs.core.errors.InputError` naming ``shard``; an unsafe member raises
    :class:`UnsafeTarMemberError` before any of its bytes are returned.
    """
    try:
        tf = tarfile.open(fileobj=fileobj, mode="r|")
    except tarfile.TarError as e:
        raise InputError(f"not a readable tar shard ({type(e).__name__}: {e})", path=shard) from None
    count = 0
    try:
        while True:
            try:
                info = tf.next()
            except tarfile.TarError as e:
                raise InputError(f"corrupt tar shard after {count} members ({type(e).__name__}: {e})",
                                 path=shard) from None
            if info is None:
                return
            count += 1
            if count > max_members:
                raise UnsafeTarMemberError(f"more than {max_members} members", shard=shard, member=info.name)
            if not check_member(info, shard, max_member_bytes):
                continue
            try:
                f = tf.extractfile(info)
                data = f.read() if f is not None else b""
            except (tarfile.TarError, EOFError, OSError) as e:
                raise InputError(f"cannot read member {info.name!r} ({type(e).__name__}: {e})", path=shard) from None
            if len(data) != info.size:
                raise InputError(f"truncated member {info.name!r}: {len(data)} of {info.size} bytes", path=shard)
            yield info.name, data
    finally:
        tf.close()
