"""A reproducible, atomic tar shard writer that records where each member's bytes are.

Reproducible: every header has a fixed mtime, uid/gid, owner names and mode, and members
are written in the order they are added (the packer adds them in sorted key order, LQ,
GT, JSON per sample), so the same input always gives the same bytes. Atomic: the tar is
written to ``<final>.tmp-<pid>``, fsynced and renamed over ``<final>`` only when the
``with`` block ends without an error; a killed process leaves only a ``.tmp-`` file that
the next run removes. Member bytes are written as given (never re-encoded).

The byte offset of each member's *data* is recorded, so a reader can fetch one image
with a single HTTP range request (``format.INDEX_SCHEMA`` ``*_offset``/``*_size``).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

#: Fixed header fields (2000-01-01T00:00:00Z; any constant works, this one is not 0 so
#: tools that treat mtime 0 as "unset" stay quiet).
FIXED_MTIME = 946684800
FIXED_MODE = 0o644
FIXED_UID = FIXED_GID = 0
FIXED_UNAME = FIXED_GNAME = "foundir"
_BLOCK = tarfile.BLOCKSIZE  # 512
_RECORD = tarfile.RECORDSIZE  # 10240: tar files are padded to whole records, as tar(1) does


@dataclass(frozen=True)
class MemberInfo:
    """Where a member's data lies inside the tar."""

    name: str
    offset: int
    size: int


class TarShardWriter:
    """Write one tar shard atomically and reproducibly.

    Example::

        with TarShardWriter("out/shards/x.tar") as w:
            w.add("key.lq.img", lq_bytes)
        print(w.sha256, w.bytes)

    Attributes (valid after the ``with`` block):
        sha256: Hex digest of the whole tar file.
        bytes: Size of the tar file.
        members: :class:`MemberInfo` of every member, in order.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self.members: list[MemberInfo] = []
        self.sha256 = ""
        self.bytes = 0
        self._f = None
        self._hash = hashlib.sha256()
        self._pos = 0

    def __enter__(self) -> "TarShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.tmp_path, "wb")
        return self

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._hash.update(data)
        self._pos += len(data)

    def add(self, name: str, data: bytes) -> MemberInfo:
        """Append a regular-file member ``name`` holding ``data`` (bytes as given)."""
        if self._f is None:
            raise RuntimeError("TarShardWriter.add called outside its with block")
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mtime = FIXED_MTIME
        ti.mode = FIXED_MODE
        ti.uid, ti.gid = FIXED_UID, FIXED_GID
        ti.uname, ti.gname = FIXED_UNAME, FIXED_GNAME
        ti.type = tarfile.REGTYPE
        # USTAR: the most widely readable header; keys are short and ASCII (format.make_key).
        self._write(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
        info = MemberInfo(name, self._pos, len(data))
        self._write(data)
        pad = -len(data) % _BLOCK
        if pad:
            self._write(b"\0" * pad)
        self.members.append(info)
        return info

    def __exit__(self, exc_type, exc, tb) -> None:
        f, self._f = self._f, None
        if exc_type is not None:
            f.close()
            self.tmp_path.unlink(missing_ok=True)
            return
        try:
            self._f = f
            self._write(b"\0" * (2 * _BLOCK))  # end-of-archive marker
            pad = -self._pos % _RECORD
            if pad:
                self._write(b"\0" * pad)
            self._f = None
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(self.tmp_path, self.path)
            _fsync_dir(self.path.parent)
        except BaseException:
            f.close()
            self.tmp_path.unlink(missing_ok=True)
            raise
        self.sha256 = self._hash.hexdigest()
        self.bytes = self._pos


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via ``<path>.tmp-<pid>`` + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
