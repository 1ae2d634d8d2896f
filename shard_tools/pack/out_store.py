"""Pack output in object storage: ``shard_tools pack SRC s3://bucket/prefix/out``.

A remote output holds exactly what a local one does (docs/format.md) and is written in the
same order, with the object store's own atomicity in place of ``rename``
(docs/packing.md, "Zip archives and object storage"):

* a shard's tar streams into a multipart upload under its final key (parts of
  :data:`UPLOAD_BLOCK` bytes; one buffer in memory). S3 makes the object visible only when
  the upload completes, so a killed job leaves no object under a shard's name, only an
  incomplete upload, which the rerun aborts; an error aborts it at once. Other fsspec
  stores get the local scheme: a ``.tmp-<pid>`` object, moved into place when complete;
* then the shard's index part (the *done* marker, one PUT); the plan, the index, the
  rejects and the card after every shard; ``manifest.json`` last;
* resume skips a shard whose part exists and whose tar has the size the part records.

There is no lock file (object stores have no ``flock``): the jobs of a cluster pack write
disjoint shards by design, and a run with another plan is refused by the plan check.
Errors are rebuilt by ``foundir_data.remote.retry`` (status and reason only), so a message never
quotes a request or its credentials.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.errors import IOFailure, OutputFolderError
from foundir_data.remote.locations import resolve as resolve_location
from foundir_data.remote.retry import call_with_retries, describe
from foundir_data.remote.store import filesystem
from shard_tools.pack.parts import done, read_part_meta, write_part
from shard_tools.pack.writer import TarShardWriter, _StreamHash

T = TypeVar("T")
#: Multipart part size of a shard upload (S3's minimum is 5 MiB; 1 GB shards take ~60 parts).
UPLOAD_BLOCK = 16 << 20


def is_remote(out: str | os.PathLike) -> bool:
    """Whether an output location is a URL of a store (``file://`` and paths are local)."""
    s = os.fspath(out)
    return "://" in s and not s.startswith("file://")


@lru_cache(maxsize=4)
def _open(url: str, pid: int) -> "RemoteOut":
    return RemoteOut(url)


def open_out(url: str) -> "RemoteOut":
    """The :class:`RemoteOut` of ``url`` for this process (fsspec clients are not fork-safe)."""
    return _open(url, os.getpid())


class RemoteOut:
    """A pack output folder in an fsspec store (``s3://``, ``gs://``, ``memory://``...).

    Args:
        url: The output location; ``AWS_ENDPOINT_URL`` and the other rules of
            ``foundir_data.remote.locations`` apply.
    """

    def __init__(self, url: str) -> None:
        loc = resolve_location(url)
        self.url, self.s3 = loc.location, loc.protocol == "s3"
        self.fs = filesystem(loc)
        self.root = self.fs._strip_protocol(loc.root).rstrip("/")

    def __repr__(self) -> str:
        return f"RemoteOut({self.url!r})"

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def _retry(self, what: str, rel: str, fn: Callable[[], T]) -> T:
        return call_with_retries(fn, what=what, url=f"{self.url}/{rel}", retries=6, backoff=0.5)

    # ------------------------------------------------------------ plain objects
    def size(self, rel: str) -> int | None:
        """Size of ``rel``, None when absent."""
        try:
            return int(self._retry("stat", rel, lambda: self.fs.size(self.path(rel))))
        except FileNotFoundError:
            return None

    def read(self, rel: str) -> bytes | None:
        """The bytes of ``rel``, None when absent."""
        try:
            return self._retry("read", rel, lambda: self.fs.cat_file(self.path(rel)))
        except FileNotFoundError:
            return None

    def put(self, rel: str, data: bytes) -> None:
        """Write ``rel`` in one request (an object appears whole or not at all).

        Raises:
            OutputFolderError: the bucket (or location) does not exist.
        """
        try:
            self._retry("write", rel, lambda: self.fs.pipe_file(self.path(rel), data))
        except FileNotFoundError:
            raise OutputFolderError(f"{self.url}: cannot write {rel} there: the bucket or location does not "
                                    "exist (create it first)") from None

    def remove(self, rel: str) -> None:
        try:
            self._retry("delete", rel, lambda: self.fs.rm_file(self.path(rel)))
        except FileNotFoundError:
            pass

    def names(self) -> list[str]:
        """Top-level names under the output prefix."""
        try:
            found = self._retry("list", "", lambda: self.fs.ls(self.root, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(p.rstrip("/")) for p in found if p.rstrip("/") != self.root)

    def check_output(self, plan_file: str, *, force: bool) -> None:
        """Refuse a prefix that holds objects and is not a pack (``pack_guard.check_output``'s rule).

        Raises:
            OutputFolderError: naming what is there.
        """
        names = self.names()
        if names and not force and self.size(plan_file) is None:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            raise OutputFolderError(
                f"{self.url}: not empty and not a foundir pack (it holds {shown}); pack would overwrite "
                "README.md, manifest.json and same-named objects there. Choose a new prefix, or pass --force")

    # ------------------------------------------------------------ shards and parts
    def tar_writer(self, rel: str) -> "RemoteTarWriter":
        return RemoteTarWriter(self, rel)

    def put_part(self, rel: str, rows: list[dict], info: fmt.ShardInfo, rejects: list[dict]) -> None:
        """Write a shard's index part (``parts.write_part``'s bytes) as one object."""
        with tempfile.TemporaryDirectory(prefix="foundir-part-") as tmp:
            local = Path(tmp) / "part.parquet"
            write_part(local, rows, info, rejects, sync_dir=False, fsync=False)
            self.put(rel, local.read_bytes())

    def part_meta(self, rel: str) -> tuple[fmt.ShardInfo, list[dict]] | None:
        """A part's (ShardInfo, rejects), None when the part is absent or unreadable."""
        data = self.read(rel)
        if data is None:
            return None
        try:
            return read_part_meta(f"{self.url}/{rel}", pq.read_schema(pa.BufferReader(data)))
        except (pa.ArrowException, fmt.FormatError, ValueError):
            return None

    def sizes(self) -> dict[str, int]:
        """Every object under the output as relative path -> size (one paginated listing, so
        resume costs one request per 1,000 objects, plus a read of each finished part)."""
        try:
            found = self._retry("list", "", lambda: self.fs.find(self.root, detail=True, refresh=True))
        except FileNotFoundError:
            return {}
        cut = len(self.root) + 1
        return {k[cut:]: int(v.get("size") or 0) for k, v in found.items() if k.startswith(self.root + "/")}

    def is_done(self, shard_path: str, part: str, sizes: dict[str, int] | None = None) -> bool:
        """Whether a shard in the store is done (``parts.done``: the rule local packs use).

        Args:
            shard_path: The shard's tar.
            part: Its index part.
            sizes: :meth:`sizes`, listed once for many shards (default: ask the store).
        """
        if sizes is not None and part not in sizes:
            return False
        meta = self.part_meta(part)
        info = meta[0] if meta is not None else None
        if info is None or info.count == 0:  # no tar to ask about
            return done(info, None)
        return done(info, sizes.get(shard_path) if sizes is not None else self.size(shard_path))

    def abort_uploads(self, rel: str) -> int:
        """Abort the unfinished multipart uploads of ``rel`` (a killed run's); how many.

        Only this key's: the other jobs of a cluster pack upload other shards meanwhile.
        """
        if not self.s3:
            self.remove_temps(rel)
            return 0
        bucket, _, key = self.path(rel).partition("/")
        got = self._retry("list uploads", rel, lambda: self.fs.call_s3(
            "list_multipart_uploads", Bucket=bucket, Prefix=key))
        stale = [u for u in got.get("Uploads", []) if u["Key"] == key]
        for u in stale:
            self._retry("abort upload", rel, lambda u=u: self.fs.call_s3(
                "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=u["UploadId"]))
        return len(stale)

    def remove_temps(self, rel: str) -> None:
        """Delete ``<rel>.tmp-<pid>`` objects of a killed run (stores without multipart)."""
        pre = posixpath.basename(rel) + ".tmp-"
        try:
            found = self.fs.ls(posixpath.dirname(self.path(rel)), detail=False, refresh=True)
        except FileNotFoundError:
            return
        for p in found:
            if posixpath.basename(p).startswith(pre):
                self.fs.rm_file(p)


class RemoteTarWriter(TarShardWriter):
    """:class:`~shard_tools.pack.writer.TarShardWriter` into a store: same bytes, same members,
    written through one buffered upload (see the module docstring)."""

    def __init__(self, out: RemoteOut, rel: str) -> None:
        super().__init__(rel, fsync=False)
        self.out, self.rel = out, rel
        self.target = out.path(rel) if out.s3 else out.path(f"{rel}.tmp-{os.getpid()}")

    def __enter__(self) -> "RemoteTarWriter":
        self._f = self.out._retry("open upload", self.rel, lambda: self.out.fs.open(
            self.target, "wb", block_size=UPLOAD_BLOCK))
        self._hash = _StreamHash()
        return self

    def _write(self, *bufs: bytes) -> None:
        try:
            for b in bufs:
                self._f.write(b)  # a full block goes out as one part (s3fs retries each request)
        except Exception as e:  # noqa: BLE001 - rebuilt without the client's error (credentials)
            err = _upload_error(self.out, self.rel, e)
        else:
            err = None
        if err is not None:
            raise err
        self._hash.feed(bufs)
        self._pos += sum(len(b) for b in bufs)

    def __exit__(self, exc_type, exc, tb) -> None:
        f = self._f
        try:
            if exc_type is None:
                end = 2 * tarfile.BLOCKSIZE  # end-of-archive marker, padded to a record (as the base)
                self._write(bytes(end + (-(self._pos + end) % tarfile.RECORDSIZE)))
                self._f = None
                try:
                    f.close()  # completes the multipart upload: the object appears now, whole
                    if not self.out.s3:
                        self.out.fs.mv(self.target, self.out.path(self.rel))
                except Exception as e:  # noqa: BLE001 - rebuilt below, outside this block
                    err = _upload_error(self.out, self.rel, e)
                else:
                    err = None
                if err is not None:
                    raise err
        except BaseException:
            _discard(f)
            self._hash.close()
            raise
        finally:
            self._f = None
        if exc_type is not None:
            _discard(f)
            self._hash.close()
            if not self.out.s3:
                self.out.remove(f"{self.rel}.tmp-{os.getpid()}")
            return
        self.sha256 = self._hash.close()
        self.bytes = self._pos


def _upload_error(out: RemoteOut, rel: str, e: Exception) -> BaseException:
    """``e`` as an I/O failure naming the object, with the client's error dropped (its text
    and chained context may hold the request and its credentials: ``retry.describe``)."""
    if isinstance(e, IOFailure):
        return e
    return IOFailure(f"upload of {out.url}/{rel} failed: {describe(e)}; rerun the same command to resume")


def _discard(f: Any) -> None:
    """Abort an upload in flight (s3fs aborts the multipart upload; nothing becomes visible)."""
    try:
        f.discard()
    except Exception:  # noqa: BLE001 - best effort: an incomplete upload is invisible anyway
        pass
    f.closed = True  # or garbage collection would close(), i.e. commit, what was buffered
