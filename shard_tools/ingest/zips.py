"""Reading pack inputs straight out of zip archives, local or remote, without extracting them.

The release comes as about 4.85 TB of zip archives (docs/release.md, "Data");
``shard_tools pack`` reads its members in place (docs/packing.md, "Zip archives and object
storage"). This module parses an archive's central directory itself rather than through
``zipfile`` so that it can bound everything before allocating it, whatever the archive
claims:

* the end record (and the Zip64 end record) is found in the last 64 KiB; the central
  directory it claims must lie inside the archive, be at most :data:`MAX_DIRECTORY_BYTES`
  and hold at most ``size / 46`` entries (46 bytes is the smallest entry) before one byte of
  it is read;
* a member is read only when its claimed sizes fit :data:`MAX_MEMBER_BYTES` and the archive;
  deflate output is capped at the claimed size; the CRC-32 and the size are checked, so
  the bytes handed on are the original file's (hashed with sha256 as from a folder);
* member names are sanitised: absolute paths, ``..`` components, backslashes, empty or
  ``.`` components, encrypted members and symlinks become rejects with their reason.

Reads go through a :class:`ByteSource`: ``os.pread`` on a local archive, or range requests
(``fs.cat_file(path, start, end)``, retried as the readers do: ``foundir_data.remote.retry``) on an
fsspec file, so a remote archive is never downloaded whole: its directory is one range
read, each member one more.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from typing import Any, Callable, NamedTuple

from foundir_data.errors import FoundIRError
from foundir_data.remote.retry import Truncated, call_with_retries, is_transient

#: Largest central directory read (a directory entry is ~100 bytes: ~10M members).
MAX_DIRECTORY_BYTES = 1 << 30
#: Largest member read (a release frame is a few MB; anything past this is not an image).
MAX_MEMBER_BYTES = 1 << 30
_EOCD, _EOCD64, _LOC64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_CDH, _LFH = b"PK\x01\x02", b"PK\x03\x04"
_CDH_SIZE, _LFH_SIZE, _EOCD_SIZE = 46, 30, 22
_STORED, _DEFLATED = 0, 8
_FLAG_ENCRYPTED, _FLAG_UTF8 = 0x1, 0x800
_S_IFMT, _S_IFREG, _S_IFDIR = 0o170000, 0o100000, 0o040000


class ZipArchiveError(FoundIRError, OSError):
    """An archive whose directory cannot be read (not a zip, truncated, claims too much)."""


class ZipMemberError(FoundIRError, OSError):
    """A member that cannot be read as stored (bad CRC, truncated, unsupported method).

    ``filename`` names the member, ``strerror`` the reason (as ``OSError`` does, so the
    packer's "unreadable file" reject reads the same for folders and archives).
    """


class Member(NamedTuple):
    """Where one member lies in its archive (a plain tuple: an archive holds ~10^5 of them)."""

    offset: int  # of its local header
    csize: int
    usize: int
    method: int
    crc: int


class ByteSource:
    """Random access to one archive's bytes: local ``pread`` or remote range requests.

    Args:
        path: Local path or fsspec path of the archive.
        fs: The fsspec filesystem for a remote archive; None for a local one.
        retries: Retries of a transient fault per read (``foundir_data.remote.retry``).
        backoff: First backoff delay in seconds.
    """

    def __init__(self, path: str, fs: Any = None, *, retries: int = 6, backoff: float = 0.5) -> None:
        self.path, self.fs, self.retries, self.backoff = path, fs, retries, backoff
        self._fd, self._pid = -1, -1
        self.size = os.stat(path).st_size if fs is None else int(self._retry("stat", self._remote_size))

    def _remote_size(self) -> int:
        try:
            return self.fs.size(self.path)
        except FileNotFoundError as e:
            if e.__cause__ is not None and is_transient(e.__cause__):
                raise e.__cause__ from None  # fsspec's HTTP info reports a 503 as "not found"
            raise

    def _retry(self, what: str, fn: Callable[[], Any]) -> Any:
        return call_with_retries(fn, what=what, url=self.path, retries=self.retries, backoff=self.backoff)

    def read(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` (fewer only at the end of the archive)."""
        n = max(0, min(n, self.size - offset))
        if n == 0:
            return b""
        if self.fs is not None:
            def get() -> bytes:
                data = self.fs.cat_file(self.path, start=offset, end=offset + n)
                if len(data) != n:  # a short body: retried (retry.Truncated is transient)
                    raise Truncated(self.path, n, len(data))
                return data
            return self._retry("range read", get)
        if self._pid != os.getpid():  # a forked worker opens its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, n, offset)


def _sane_name(name: str) -> str | None:
    """Why a member name may not become a path (None when it may)."""
    if "\\" in name:
        return "member path holds a backslash (not read)"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute member path (not read)"
    parts = name.rstrip("/").split("/")
    if any(p == ".." for p in parts):
        return "member path climbs out of the archive with '..' (not read)"
    if any(p in ("", ".") for p in parts) or "\0" in name:
        return "member path with an empty or '.' component (not read)"
    return None


def _end_record(src: ByteSource) -> tuple[int, int, int]:
    """(entries, directory size, directory offset), checked against the archive's size."""
    # The last 1 KiB first (archives rarely carry a comment; one small range request), then
    # the whole window a comment may take (up to 64 KiB).
    for window in (1024 + _EOCD_SIZE + 20, 0xFFFF + _EOCD_SIZE + 20):
        tail_at = max(0, src.size - window)
        tail = src.read(tail_at, src.size - tail_at)
        at = tail.rfind(_EOCD)
        while at >= 0 and at + _EOCD_SIZE + struct.unpack_from("<H", tail, at + 20)[0] != len(tail):
            at = tail.rfind(_EOCD, 0, at)  # a signature inside the comment: keep looking
        if at >= 0 or tail_at == 0:
            break
    if at < 0:
        raise ZipArchiveError(f"{src.path}: no end-of-central-directory record: truncated, or not a zip archive")
    disk, cd_disk, _, entries, cd_size, cd_offset, _ = struct.unpack_from("<HHHHIIH", tail, at + 4)
    if 0xFFFF in (entries, disk, cd_disk) or 0xFFFFFFFF in (cd_size, cd_offset):
        loc = tail[at - 20:at] if at >= 20 else b""
        if not loc.startswith(_LOC64):
            raise ZipArchiveError(f"{src.path}: Zip64 archive without its Zip64 end locator (damaged)")
        rec_at = struct.unpack_from("<Q", loc, 8)[0]
        rec = src.read(rec_at, 56) if rec_at + 56 <= src.size else b""
        if not rec.startswith(_EOCD64):
            raise ZipArchiveError(f"{src.path}: Zip64 end record missing at offset {rec_at} (damaged or truncated)")
        disk, cd_disk, _, entries, cd_size, cd_offset = struct.unpack_from("<IIQQQQ", rec, 16)
    if disk or cd_disk:
        raise ZipArchiveError(f"{src.path}: a split (multi-volume) archive; join its parts into one .zip first")
    end = tail_at + at
    if cd_offset + cd_size > end:
        raise ZipArchiveError(f"{src.path}: central directory claims bytes {cd_offset}..{cd_offset + cd_size} past "
                              f"its end record at {end}: truncated or damaged archive")
    if cd_size > MAX_DIRECTORY_BYTES or entries > cd_size // _CDH_SIZE:
        raise ZipArchiveError(f"{src.path}: central directory claims {entries:,} entries in {cd_size:,} bytes "
                              f"(limit {MAX_DIRECTORY_BYTES:,} bytes, 46+ bytes an entry): damaged archive")
    return entries, cd_size, cd_offset


def _zip64_extra(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace the 0xFFFFFFFF fields by the Zip64 extra field's values (APPNOTE 4.5.3)."""
    i = 0
    while i + 4 <= len(extra):
        tag, n = struct.unpack_from("<HH", extra, i)
        if tag == 1:
            vals, j = [], i + 4
            for v in (usize, csize, offset):
                if v == 0xFFFFFFFF and j + 8 <= i + 4 + n:
                    vals.append(struct.unpack_from("<Q", extra, j)[0])
                    j += 8
                else:
                    vals.append(v)
            return vals[0], vals[1], vals[2]
        i += 4 + n
    return usize, csize, offset


def read_directory(src: ByteSource) -> tuple[dict[str, Member], list[tuple[str, str]]]:
    """The archive's file members by name, and (name, reason) of every entry not usable.

    Directory entries are dropped (folders are implied by member paths).

    Raises:
        ZipArchiveError: the directory cannot be found or read (see the module docstring).
    """
    entries, cd_size, cd_offset = _end_record(src)
    cd = src.read(cd_offset, cd_size)
    members: dict[str, Member] = {}
    bad: list[tuple[str, str]] = []
    at = 0
    for i in range(entries):
        if cd[at:at + 4] != _CDH or at + _CDH_SIZE > len(cd):
            raise ZipArchiveError(f"{src.path}: central directory damaged at entry {i + 1} of {entries}")
        (made_by, flags, method, crc, csize, usize, n, m, k, attr_hi, offset) = struct.unpack_from(
            "<4xH2xHH4xIIIHHH4x2xHI", cd, at)
        raw = cd[at + _CDH_SIZE:at + _CDH_SIZE + n]
        usize, csize, offset = _zip64_extra(cd[at + _CDH_SIZE + n:at + _CDH_SIZE + n + m], usize, csize, offset)
        at += _CDH_SIZE + n + m + k
        if at > len(cd):
            raise ZipArchiveError(f"{src.path}: central directory damaged at entry {i + 1} of {entries}")
        name = raw.decode("utf-8" if flags & _FLAG_UTF8 else "cp437", "replace")
        kind = attr_hi & _S_IFMT if made_by >> 8 == 3 else 0  # mode bits only from Unix hosts
        if name.endswith("/") or kind == _S_IFDIR:
            if _sane_name(name):
                bad.append((name, _sane_name(name)))
            continue
        reason = _sane_name(name)
        if reason is None and kind not in (0, _S_IFREG):
            reason = "not a regular file in the archive (symlink or special file, not followed)"
        if reason is None and flags & _FLAG_ENCRYPTED:
            reason = "encrypted member (not read)"
        if reason is None and name in members:
            reason = "listed twice in the archive's directory (not read)"
            del members[name]
        if reason is not None:
            bad.append((name, reason))
            continue
        members[name] = Member(offset, csize, usize, method, crc)
    return members, bad


def read_member(src: ByteSource, name: str, m: Member) -> bytes:
    """The original bytes of member ``name``, checked against its size and CRC-32.

    Raises:
        ZipMemberError: naming ``name`` and the problem (truncated, damaged, bad CRC,
            too large, unsupported compression).
    """
    where = f"{src.path}!/{name}"

    def fail(reason: str) -> ZipMemberError:
        return ZipMemberError(errno.EIO, f"{reason} in archive {os.path.basename(src.path)}", where)

    if m.usize > MAX_MEMBER_BYTES or m.csize > MAX_MEMBER_BYTES:
        raise fail(f"member claims {max(m.usize, m.csize):,} bytes (limit {MAX_MEMBER_BYTES:,})")
    if m.method not in (_STORED, _DEFLATED):
        raise fail(f"unsupported compression method {m.method} (stored and deflated are read)")
    # Remote: one range request for the local header and the data (its name/extra lengths
    # are usually the directory's: read a little more, top up when not). Local: the header,
    # then the data straight into its own buffer (no copy of a slice).
    remote = src.fs is not None
    head = src.read(m.offset, _LFH_SIZE + len(name.encode()) + 512 + (m.csize if remote else 0))
    if len(head) < _LFH_SIZE or head[:4] != _LFH:
        raise fail("local header missing (truncated or damaged archive)")
    n, k = struct.unpack_from("<HH", head, 26)
    start = _LFH_SIZE + n + k
    if m.offset + start + m.csize > src.size:
        raise fail(f"member data ends past the end of the archive ({src.size:,} bytes): truncated")
    if remote and len(head) >= start + m.csize:
        data = head[start:start + m.csize]
    else:
        data = src.read(m.offset + start, m.csize)
    if m.method == _STORED:
        out = data
    else:
        d = zlib.decompressobj(-15)
        try:
            out = d.decompress(data, m.usize + 1)  # bounded: never more than claimed + 1
        except zlib.error as e:
            raise fail(f"deflate data damaged ({e})") from None
        if not d.eof and len(out) <= m.usize:
            raise fail("deflate data ends early (truncated or damaged)")
    if len(out) != m.usize:
        raise fail(f"member holds {len(out):,} bytes, the directory says {m.usize:,}")
    if zlib.crc32(out) != m.crc:
        raise fail("CRC-32 mismatch (damaged member)")
    return out
