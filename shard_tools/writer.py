"""Shard writing: a reproducible, atomic tar writer that records where each member's bytes
are, and :func:`build_shard`, which turns one planned shard into its tar + index part.

Reproducible: every header has a fixed mtime, uid/gid, owner names and mode, and members
are written in the order they are added (the packer adds them in sorted key order, LQ,
GT, JSON per sample), so the same input always gives the same bytes. Atomic: the tar is
written to ``<final>.tmp-<pid>``, fsynced and renamed over ``<final>`` only when the
``with`` block ends without an error; a killed process leaves only a ``.tmp-`` file that
the next run removes. Member bytes are written as given (never re-encoded).

The byte offset of each member's *data* is recorded, so a reader can fetch one image
with a single HTTP range request (``format.INDEX_SCHEMA`` ``*_offset``/``*_size``).

A shard is *done* when its index part ``index/parts/<shard>.parquet`` exists (written last,
atomically, with the tar's size and sha256 and the shard's rejected pairs in its Parquet
metadata) and its tar has that size: that is what resume checks (:func:`is_done`).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from foundir_data import format as fmt
from foundir_data import taxonomy

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
            w.add("key.lq.img", lq_bytes)
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


def write_atomic(path: str | os.PathLike, data: bytes, sync_dir: bool = True, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via ``<path>.tmp-<pid>`` + fsync + rename.

    Args:
        path: Final path.
        data: The bytes.
        sync_dir: Also fsync the folder so the rename itself survives a power loss (not
            needed for a shard's index part: losing it only means the shard is redone).
        fsync: Flush the file to disk before the rename (False: safe against a killed
            process, not against a power loss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir and fsync:
        _fsync_dir(path.parent)


# ---------------------------------------------------------------- one planned shard
#: Parquet key-value metadata keys of an index part: the shard's ShardInfo, and the pairs
#: of this shard that were rejected (a JSON list of rejects.jsonl records). Keeping both in
#: the one done-marker file means one atomic write and one fsync per shard.
SHARD_META_KEY = b"foundir.shard"
REJECTS_META_KEY = b"foundir.rejects"


class PackError(RuntimeError):
    """A pack that must stop (``--strict`` problem, plan mismatch)."""


class PlannedPair(NamedTuple):
    """One pair in the plan: relative paths and sizes only (a plain tuple: the plan of a
    million pairs stays small and pickles cheaply to worker processes). The local path of a
    file is ``shard.roots[root] + lq_rel``."""

    root: int
    lq_rel: str
    gt_rel: str
    key: str
    lq_size: int
    gt_size: int
    origin: str


@dataclass
class PlannedShard:
    """One shard of the plan: its path and the pairs (paths, sizes) it will hold."""

    path: str
    split: str
    degradation: str
    pairs: list[PlannedPair]
    roots: tuple[str, ...] = ("",)  # path prefixes shared by the pairs (usually one)

    @property
    def name(self) -> str:
        return Path(self.path).name[: -len(".tar")]

    @property
    def part(self) -> str:
        return f"{fmt.INDEX_PARTS_DIR}/{self.name}.parquet"

    def local_paths(self, pair: PlannedPair) -> tuple[str, str]:
        """Local (LQ, GT) paths of one of this shard's pairs."""
        root = self.roots[pair.root]
        return root + pair.lq_rel, root + pair.gt_rel


@dataclass
class ShardResult:
    path: str
    count: int
    rejected: int
    bytes_in: int


def build_shard(out: str, shard: PlannedShard, full_decode: bool = False, strict: bool = False,
                fsync: bool = True, on_pair: Callable[[int], None] | None = None) -> ShardResult:
    """Build one planned shard: its tar, then its index part (the done marker).

    Runs in a worker process (or on one of ``--workers 1``'s two shard threads); holds at
    most two pairs' bytes at a time (the loader thread reads the next pair while this one
    is written).

    Args:
        out: The pack's output folder.
        shard: The planned shard.
        full_decode: Decode every image to check it (``probe_image``).
        strict: Raise at the first bad pair instead of recording it as rejected.
        fsync: Flush the tar to disk before renaming it into place and writing the part.
        on_pair: Called with the bytes read after each pair (progress).

    Raises:
        PackError: with ``strict``, at the first bad pair (no file of this shard is left).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(out)
    t = taxonomy.get(shard.degradation)
    rows: list[dict] = []
    rejects: list[dict] = []
    bytes_in = 0
    writer: TarShardWriter | None = None
    # A loader thread reads, checks and hashes the next pair while this thread writes the
    # current one (file reads, zlib.crc32 and sha256 release the GIL), so at most two pairs'
    # bytes are held at a time.
    loader = ThreadPoolExecutor(1, thread_name_prefix="pack-loader")
    try:
        pairs = shard.pairs
        nxt = loader.submit(_load_pair, *shard.local_paths(pairs[0]), full_decode) if pairs else None
        for i, pair in enumerate(pairs):
            _, lq_rel, gt_rel, key, _, _, origin = pair
            lq, gt, li, gi, reason, lq_sha, gt_sha = nxt.result()
            if i + 1 < len(pairs):
                nxt = loader.submit(_load_pair, *shard.local_paths(pairs[i + 1]), full_decode)
            bytes_in += len(lq) + len(gt)
            if on_pair is not None:
                on_pair(len(lq) + len(gt))
            if reason is not None:
                if strict:
                    raise PackError(reason)
                rejects.append({"lq": lq_rel, "gt": gt_rel, "split": shard.split, "degradation": shard.degradation,
                                "reason": reason, "origin": origin})
                continue
            if writer is None:
                writer = TarShardWriter(root / shard.path, fsync=fsync).__enter__()
            row = {
                "key": key, "split": shard.split, "degradation": t.name, "degradation_id": t.index,
                "cls": t.cls, **t.flags(), "layout": fmt.LAYOUT_FULL,
                "lq_source": lq_rel, "gt_source": gt_rel, "shard": shard.path, "sample_index": len(rows),
                "lq_width": li.width, "lq_height": li.height, "gt_width": gi.width, "gt_height": gi.height,
                "lq_format": li.format, "gt_format": gi.format,
                "lq_sha256": lq_sha, "gt_sha256": gt_sha,
                # Camera settings: the LQ's EXIF first (the degraded capture), else the GT's.
                **{f: getattr(li, f) if getattr(li, f) is not None else getattr(gi, f)
                   for f in ("iso", "exposure_time", "f_number", "camera_model")},
            }
            m_lq = writer.add(f"{key}.{fmt.LQ_MEMBER}", lq)
            m_gt = writer.add(f"{key}.{fmt.GT_MEMBER}", gt)
            m_js = writer.add(f"{key}.{fmt.JSON_MEMBER}", fmt.encode_record(fmt.record_from_row(row)))
            row.update(lq_offset=m_lq.offset, lq_size=m_lq.size, gt_offset=m_gt.offset,
                       gt_size=m_gt.size, json_offset=m_js.offset, json_size=m_js.size)
            rows.append(row)
        if writer is not None:
            w, writer = writer, None
            w.__exit__(None, None, None)
            info = fmt.ShardInfo(shard.path, shard.split, shard.degradation, fmt.LAYOUT_FULL, len(rows), w.bytes, w.sha256)
        else:
            # Every pair was rejected: no tar, but still a (empty) part so the shard is done.
            (root / shard.path).unlink(missing_ok=True)
            info = fmt.ShardInfo(shard.path, shard.split, shard.degradation, fmt.LAYOUT_FULL, 0, 0, "")
    except BaseException:
        if writer is not None:
            writer.__exit__(*sys.exc_info())
        raise
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
    table = fmt.index_table(rows).replace_schema_metadata({
        SHARD_META_KEY: json.dumps(info.__dict__, sort_keys=True).encode(),
        REJECTS_META_KEY: json.dumps(rejects, sort_keys=True).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    # The part is not fsynced: after a power loss a lost or torn part only makes is_done()
    # false and the shard is rebuilt; the tar it describes was fsynced before it was written.
    write_atomic(root / shard.part, sink.getvalue().to_pybytes(), sync_dir=False, fsync=False)
    return ShardResult(shard.path, len(rows), len(rejects), bytes_in)


def _load_pair(lq_path: str, gt_path: str, full_decode: bool):
    """Read, probe and hash a pair (runs on the loader thread).

    Returns:
        (lq bytes, gt bytes, lq info, gt info, reject reason or None, lq sha256, gt sha256);
        the hashes are None for a rejected pair.
    """
    from shard_tools.probe import BadImage, probe_image

    lq = gt = b""
    try:
        lq, gt = _read(lq_path), _read(gt_path)
        li = probe_image(lq, lq_path, full_decode)
        gi = probe_image(gt, gt_path, full_decode)
    except BadImage as e:
        return lq, gt, None, None, str(e), None, None
    except OSError as e:
        return lq, gt, None, None, f"unreadable file: {e.filename} ({e.strerror})", None, None
    if (li.width, li.height) != (gi.width, gi.height):
        # FoundIR pairs are pixel-aligned captures (paper, section 3.1): a size mismatch is
        # a wrong pairing or a damaged file.
        return lq, gt, li, gi, (f"LQ/GT size mismatch: {lq_path} is {li.width}x{li.height} "
                                f"but {gt_path} is {gi.width}x{gi.height}"), None, None
    return lq, gt, li, gi, None, hashlib.sha256(lq).hexdigest(), hashlib.sha256(gt).hexdigest()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_part_meta(path: str | os.PathLike, schema=None) -> tuple[fmt.ShardInfo, list[dict]]:
    """The ShardInfo and the rejects stored in an index part's metadata.

    Args:
        path: The part (read unless ``schema`` is given; used in messages).
        schema: The part's already-read Arrow schema.
    """
    if schema is None:
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
    meta = schema.metadata or {}
    if SHARD_META_KEY not in meta:
        raise fmt.FormatError(f"{path}: index part without {SHARD_META_KEY.decode()} metadata")
    return fmt.ShardInfo(**json.loads(meta[SHARD_META_KEY])), json.loads(meta.get(REJECTS_META_KEY, b"[]"))


def is_done(root: Path, shard: PlannedShard) -> bool:
    part = root / shard.part
    if not part.exists():
        return False
    try:
        info, _ = read_part_meta(part)
    except Exception:
        return False
    # A part whose tar was removed or altered since is not done.
    return info.count == 0 or ((root / shard.path).exists() and (root / shard.path).stat().st_size == info.bytes)


def remove_stale(root: Path, shard: PlannedShard) -> None:
    for rel in (shard.path, shard.part):
        p = root / rel
        if p.parent.exists():
            for tmp in p.parent.glob(f"{p.name}.tmp-*"):
                tmp.unlink(missing_ok=True)

