"""Shard writing: a reproducible, atomic tar writer that records where each member's bytes
are, and :func:`add_sample`, which writes one sample's members and completes its index row.

Reproducible: every header has a fixed mtime, uid/gid, owner names and mode, and members
are written in the order they are added (the packer adds them in sorted key order, LQ,
GT, JSON per sample), so the same input always gives the same bytes. Atomic: the tar is
written to ``<final>.tmp-<pid>``, fsynced and renamed over ``<final>`` only when the
``with`` block ends without an error; a killed process leaves only a ``.tmp-`` file that
the next run removes. Member bytes are written as given (never re-encoded).

The byte offset of each member's *data* is recorded, so a reader can fetch one image
with a single HTTP range request (``format.INDEX_SCHEMA`` ``*_offset``/``*_size``).

The shard's index part, written after its tar, is :mod:`shard_tools.pack.parts`; building a
planned shard is :mod:`shard_tools.pack.build`.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path

from foundir_data import format as fmt

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


class _StreamHash:
    """SHA-256 of a byte stream, computed on a background thread in the order it is fed.

    hashlib releases the GIL on buffers over 2 KiB, so the whole-tar hash runs on another
    core while the caller writes (and the loader thread reads, checks and hashes members):
    about 0.7 s per GB of work taken off the packing thread (SHA-256 at ~1.4 GB/s here).
    The queue is bounded so a slow hasher cannot make memory grow (at most 16 members).
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue = queue.Queue(maxsize=16)
        self._t = threading.Thread(target=self._run, name="tar-sha256", daemon=True)
        self._t.start()

    def _run(self) -> None:
        update = self._h.update
        while True:
            bufs = self._q.get()
            if bufs is None:
                return
            for b in bufs:
                update(b)

    def feed(self, bufs: tuple) -> None:
        self._q.put(bufs)

    def close(self) -> str:
        """Wait for everything fed to be hashed; the hex digest."""
        self._q.put(None)
        self._t.join()
        return self._h.hexdigest()


class TarShardWriter:
    """Write one tar shard atomically and reproducibly.

    Example::

        with TarShardWriter("out/shards/x.tar") as w:
            w.add(f"key.{fmt.LQ_MEMBER}", lq_bytes)
        print(w.sha256, w.bytes)

    Attributes (valid after the ``with`` block):
        sha256: Hex digest of the whole tar file.
        bytes: Size of the tar file.
        members: :class:`MemberInfo` of every member, in order.
    """

    def __init__(self, path: str | os.PathLike, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.tmp_path = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        self.members: list[MemberInfo] = []
        self.sha256 = ""
        self.bytes = 0
        self._f = None
        self._hash: _StreamHash | None = None
        self._pos = 0

    def __enter__(self) -> "TarShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: each member goes out as one writev(header, data, padding) with no copy
        # through a user-space buffer (images are MBs; headers alone would be tiny writes).
        self._f = open(self.tmp_path, "wb", buffering=0)
        self._hash = _StreamHash()
        return self

    def _write(self, *bufs: bytes) -> None:
        total = sum(len(b) for b in bufs)
        n = os.writev(self._f.fileno(), bufs)
        if n < total:  # a short write (rare: signals, full disk): finish the rest plainly
            rest = memoryview(b"".join(bufs))[n:]
            while rest:
                rest = rest[self._f.write(rest):]
        self._hash.feed(bufs)
        self._pos += total

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
        header = ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
        info = MemberInfo(name, self._pos + len(header), len(data))
        pad = -len(data) % _BLOCK
        self._write(header, data, _ZEROS[:pad]) if pad else self._write(header, data)
        self.members.append(info)
        return info

    def __exit__(self, exc_type, exc, tb) -> None:
        f, self._f = self._f, None
        if exc_type is not None:
            f.close()
            self._hash.close()
            self.tmp_path.unlink(missing_ok=True)
            return
        try:
            self._f = f
            end = 2 * _BLOCK  # end-of-archive marker, then padding to a whole record
            end += -(self._pos + end) % _RECORD
            self._write(bytes(end))
            self._f = None
            if self.fsync:
                os.fsync(f.fileno())
            f.close()
            # No directory fsync: a rename lost in a crash leaves no tar, and resume treats
            # a shard whose tar is missing or of the wrong size as not done (is_done).
            os.replace(self.tmp_path, self.path)
        except BaseException:
            f.close()
            self._hash.close()
            self.tmp_path.unlink(missing_ok=True)
            raise
        self.sha256 = self._hash.close()
        self.bytes = self._pos


_ZEROS = bytes(_BLOCK)


def add_sample(w: TarShardWriter, row: dict, lq: bytes, gt: bytes) -> dict:
    """Write one sample's members (LQ, GT, then its JSON record made from ``row``).

    Args:
        w: An open writer.
        row: The sample's index row without its member offsets; ``row["key"]`` names the
            members. Updated in place with the ``*_offset``/``*_size`` of its members.
        lq: LQ image bytes, written as given.
        gt: GT image bytes, written as given.

    Returns:
        ``row``, now complete.
    """
    key = row["key"]
    m_lq = w.add(f"{key}.{fmt.LQ_MEMBER}", lq)
    m_gt = w.add(f"{key}.{fmt.GT_MEMBER}", gt)
    record = fmt.encode_record(fmt.record_from_row(row))
    m_js = w.add(f"{key}.{fmt.JSON_MEMBER}", record)
    # json_sha256: readers check the record against it before handing it on (docs/format.md, "Integrity").
    row.update(lq_offset=m_lq.offset, lq_size=m_lq.size, gt_offset=m_gt.offset,
               gt_size=m_gt.size, json_offset=m_js.offset, json_size=m_js.size,
               json_sha256=hashlib.sha256(record).hexdigest())
    return row
