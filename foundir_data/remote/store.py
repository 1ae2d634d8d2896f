"""One reader for packed foundir folders wherever they live: disk, ``s3://``, ``http(s)://``, Hub.

Every location goes through fsspec, with one code path (``locations.py`` maps local paths,
``file://``, ``s3://``, ``http(s)://`` and ``hf://datasets/<org>/<name>[@revision][/subdir]``
to a filesystem and a root URL; Hub files are read from
``{HF_ENDPOINT}/datasets/{repo}/resolve/{revision}/{path}``).

The Hub is read with plain file GETs only: the manifest names every file, so nothing is ever
listed and no API call is made (the Hub's API limit is far below its file-resolve limit,
docs/release.md, "Library facts"). ``HF_ENDPOINT`` is read when a store is opened. The token
(argument, else ``huggingface_hub.get_token()``) is sent as ``Authorization: Bearer`` and never
appears in URLs, logs or error messages.

Transient faults (HTTP 429 honouring ``Retry-After``, 5xx, connection resets, truncated
bodies) are retried with exponential backoff and deterministic jitter; a shard stream that
breaks mid-way resumes from the byte it reached with a ``Range`` request. A shard that
still fails is reported with its URL and raised or skipped (``on_error``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tarfile
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from foundir_data import format as fmt
from foundir_data.remote.cache import DiskCache, default_cache_dir
from foundir_data.errors import ChecksumError, FoundIRError, ShardError, TruncatedShardError
from foundir_data.integrity import check_manifest_shards
from foundir_data.limits import MAX_MANIFEST_BYTES, check_file_size, max_index_bytes, read_limited
from foundir_data.remote.locations import Location, check_rel, hf_endpoint, parse_hf_location, resolve
from foundir_data.remote.retry import ShardStream, Truncated, call_with_retries, http_status

__all__ = ["Store", "ShardError", "ChecksumError", "TruncatedShardError", "NoManifestError",
           "hf_endpoint", "parse_hf_location"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Buffer between the resumable raw stream and readers such as tarfile (which reads 10 KiB
#: records): few large reads keep the per-call overhead of the async HTTP client low.
STREAM_BUFFER = 1 << 20


class NoManifestError(FoundIRError, FileNotFoundError):
    """The location has no ``manifest.json``: it is not a packed foundir folder."""


class Store:
    """A packed foundir folder at a local path or URL; see the module docstring.

    Open with :meth:`Store.open`. Attributes: ``location`` (normalised root), ``protocol``
    (``file``, ``s3``, ``http``, ``hf`` or another fsspec protocol), ``on_error``,
    ``skipped`` (``(url, reason)`` of shards skipped under ``on_error="skip"``).
    """

    def __init__(self, loc: Location, cache: DiskCache, retries: int, backoff: float,
                 on_error: str, verify: bool = True) -> None:
        self.location = loc.location
        self.protocol = loc.protocol
        self.on_error = on_error
        self.verify = verify
        # Local reads do not retry: a short local file stays short.
        self.retries = retries if not loc.is_local else 0
        self.backoff = backoff
        self.skipped: list[tuple[str, str]] = []
        self._loc = loc  # its headers may hold the token: never log or repr them
        self._fs_obj: Any = None  # the filesystem is made per process (see _fs)
        self._fs_pid = -1
        self._cache = cache
        self._manifest: fmt.Manifest | None = None
        self._by_path: dict[str, fmt.ShardInfo] | None = None
        self._no_manifest = False
        self._index_bytes: bytes | None = None
        self._fetched: set[str] = set()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, location: str, *, token: str | None = None, cache_dir: str | None = None,
             cache_limit_bytes: int | None = None, retries: int = 6, backoff: float = 0.5,
             on_error: str = "raise", storage_options: dict | None = None,
             verify: bool = True) -> "Store":
        """Open a packed folder (nothing is read until it is needed).

        Args:
            location: Local path, ``file://``, ``s3://``, ``http(s)://`` or
                ``hf://datasets/<org>/<name>[@rev][/subdir]`` (see ``locations.py``).
            token: Hub token for ``hf://`` (default: ``huggingface_hub.get_token()``).
            cache_dir: Where :meth:`local_path` keeps remote files (default
                ``$FOUNDIR_CACHE`` or ``~/.cache/foundir``).
            cache_limit_bytes: Size limit of that cache (least recently used files go first).
            retries: Retries of a transient fault before a read fails.
            backoff: First backoff delay in seconds (doubled per retry, jittered).
            on_error: ``"raise"`` or ``"skip"``: what :meth:`iter_samples` does with a shard
                that still fails after retries.
            storage_options: Passed to the fsspec filesystem (e.g. ``{"anon": True}`` or
                ``{"client_kwargs": {"endpoint_url": ...}}`` for S3, ``{"headers": ...}``).
            verify: Default of :meth:`open_shard`'s sha256 check of whole shards (sizes are
                always checked). sha256 runs at roughly 0.8 GB/s per core here: cheap next
                to decoding, but turn it off to stream trusted local disks at full speed.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        loc = resolve(location, token=token, storage_options=storage_options)
        cache = DiskCache(cache_dir or default_cache_dir(), cache_limit_bytes)
        return cls(loc, cache, retries, backoff, on_error, verify)

    def __repr__(self) -> str:  # no headers: they may hold the token
        return f"Store({self.location!r})"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fs_obj"], state["_fs_pid"] = None, -1  # rebuilt in the receiving process
        return state

    @property
    def _fs(self) -> Any:
        """The fsspec filesystem of this process: async filesystems (HTTP, s3fs) are not
        fork-safe, so a DataLoader worker forked after the store was used makes its own."""
        if self._fs_obj is None or self._fs_pid != os.getpid():
            self._fs_obj = filesystem(self._loc)
            self._fs_pid = os.getpid()
        return self._fs_obj

    @property
    def is_local(self) -> bool:
        return self._loc.is_local

    def url(self, rel: str) -> str:
        """Full URL (or absolute local path) of ``rel``; never contains the token."""
        return self._loc.url(rel)

    def shard_info(self, rel: str) -> fmt.ShardInfo | None:
        """The manifest entry of ``rel`` if it is a shard, else None (reads the manifest once:
        shard sizes and checksums come from it)."""
        if rel == fmt.MANIFEST_FILE:
            return None
        if self._manifest is None:
            if self._no_manifest:
                return None
            try:
                self.manifest()
            except NoManifestError:
                self._no_manifest = True  # plain files: read without checks
                return None
        if self._by_path is None:
            self._by_path = {s.path: s for s in self._manifest.shards}
        return self._by_path.get(rel)

    # ------------------------------------------------------------------ reading
    def _retry(self, what: str, url: str, fn: Callable[[], T]) -> T:
        return call_with_retries(fn, what=what, url=url, retries=self.retries, backoff=self.backoff)

    def read_bytes(self, rel: str) -> bytes:
        """Read a whole file (one GET remotely), retrying transient faults; a manifest shard is
        checked against its sha256 (with ``verify``)."""
        url = self.url(rel)
        info = self.shard_info(rel)

        def get() -> bytes:
            data = self._fs.cat_file(url, **self._kw())
            if info is not None and len(data) < info.bytes:
                raise Truncated(url, info.bytes, len(data))
            return data

        data = self._retry("reading", url, get)
        if info is not None and self.verify and hashlib.sha256(data).hexdigest() != info.sha256:
            raise ChecksumError(url, f"sha256 mismatch: expected {info.sha256}, found "
                                     f"{hashlib.sha256(data).hexdigest()} ({len(data)} bytes, manifest: "
                                     f"{info.bytes}); the file is corrupt or changed after packing")
        return data

    def read_capped(self, rel: str, limit: int, what: str) -> bytes:
        """A whole file of at most ``limit`` bytes; its claimed size is checked first (``limits.py``)."""
        url = self.url(rel)
        opener = (lambda: open(url, "rb")) if self.protocol == "file" else (lambda: self._open_at(url, 0, None))
        return self._retry("reading", url, lambda: read_limited(opener, url, limit, what))

    def read_range(self, rel: str, offset: int, size: int) -> bytes:
        """Read ``size`` bytes at ``offset`` (one range request remotely, a pread locally)."""
        if offset < 0 or size < 0:
            raise ValueError(f"read_range({rel!r}, {offset}, {size}): negative offset or size")
        if size == 0:
            return b""
        url = self.url(rel)

        def get() -> bytes:
            if self.protocol == "file":
                with open(url, "rb") as f:
                    data = os.pread(f.fileno(), size, offset)
            else:
                data = self._fs.cat_file(url, start=offset, end=offset + size, **self._kw())
            if len(data) > size:
                raise ShardError(url, f"the server does not honour Range requests (asked for "
                                      f"{size} bytes at {offset}, got {len(data)})")
            if len(data) < size:
                raise Truncated(url, size, len(data))
            return data

        return self._retry(f"reading bytes {offset}..{offset + size} of", url, get)

    def open_shard(self, rel: str, *, verify: bool | None = None) -> BinaryIO:
        """Open a file for sequential reading.

        Transient faults are retried and the stream resumes from the byte it reached. When
        ``rel`` is a manifest shard, its size and (with ``verify``, default: the store's) sha256
        are checked when the stream reaches its end: a mismatch raises :class:`ChecksumError`
        or :class:`TruncatedShardError` naming the URL.
        """
        url = self.url(rel)
        info = self.shard_info(rel)
        verify = self.verify if verify is None else verify
        raw = ShardStream(
            url=url, opener=self._open_at, size=info.bytes if info else None,
            sha256=info.sha256 if (info and verify) else None,
            retries=self.retries, backoff=self.backoff,
        )
        return io.BufferedReader(raw, buffer_size=STREAM_BUFFER)

    def _open_at(self, url: str, pos: int, size: int | None) -> BinaryIO:
        """An fsspec file positioned at byte ``pos`` (HTTP: a streaming GET with Range)."""
        if self._loc.is_http:
            headers = dict(self._loc.headers)
            if pos:
                headers["Range"] = f"bytes={pos}-"
            # size given (or -1 if unknown) so fsspec opens a streaming GET without a HEAD first.
            try:
                f = self._fs.open(url, "rb", block_size=0, size=size or -1, headers=headers)
            except Exception as e:  # noqa: BLE001 - a 416 is handled below, the rest by the caller
                if not (pos and http_status(e) == 416):
                    raise
                f = None  # 416: the server's file ends at or before ``pos``
            if f is None:
                if size is None or pos >= size:
                    return io.BytesIO(b"")  # nothing left: the stream ends (size/sha256 still checked)
                raise Truncated(url, size, pos)
            status = getattr(getattr(f, "r", None), "status", None)
            if pos and status is not None and status != 206:
                f.close()
                raise ShardError(url, f"the server does not honour Range requests (HTTP {status} "
                                      f"when resuming at byte {pos})")
            return f
        f = self._fs.open(url, "rb") if self.protocol == "file" else self._fs.open(
            url, "rb", block_size=8 << 20, cache_type="readahead")
        if pos:
            f.seek(pos)
        return f

    def _kw(self) -> dict:
        return {"headers": dict(self._loc.headers)} if self._loc.is_http else {}

    def local_path(self, rel: str) -> str:
        """A local file holding ``rel``: the file itself when local, else a cached copy.

        Remote files are downloaded atomically into the cache (shards are checked against
        the manifest's sha256 and stored by it, so a cached shard is never stale); the
        cache is kept under ``cache_limit_bytes`` by evicting least recently used files.
        """
        url = self.url(rel)
        if self.protocol == "file":
            if not os.path.exists(url):
                raise FileNotFoundError(f"{url}: no such file in {self.location}")
            return url
        info = self.shard_info(rel)
        dest = self._cache.path_for(url, info.sha256 if info else None)
        if (info or url in self._fetched) and self._cache.hit(dest, info.bytes if info else None):
            return str(dest)
        def download(out: BinaryIO) -> None:
            with self.open_shard(rel, verify=True) as src:
                shutil.copyfileobj(src, out, STREAM_BUFFER)

        try:
            self._cache.fill(dest, download)
        except ChecksumError as e:  # corrupted in transit? Once more; a second mismatch raises
            log.warning("%s: %s; downloading it once more", url, e.reason)
            self._cache.fill(dest, download)
        self._fetched.add(url)
        return str(dest)

    # ------------------------------------------------------------------ format
    def manifest(self) -> fmt.Manifest:
        """The parsed, validated manifest (read once per store)."""
        if self._manifest is None:
            url = self.url(fmt.MANIFEST_FILE)
            try:
                text = self.read_capped(fmt.MANIFEST_FILE, MAX_MANIFEST_BYTES, "manifest")
            except FileNotFoundError:
                if self.is_local and not os.path.exists(self.location):
                    raise NoManifestError(f"{self.location}: no such folder (the path does not exist)") from None
                raise NoManifestError(
                    f"no {fmt.MANIFEST_FILE} at {url}: is this a packed foundir folder? "
                    "pack one with `shard_tools pack SOURCE OUT`") from None
            manifest = check_manifest_shards(fmt.Manifest.from_json(text, where=url), url)
            for s in manifest.shards:
                check_rel(s.path)
            self._manifest, self._by_path = manifest, None
        return self._manifest

    def index(self, columns: list[str] | None = None) -> pa.Table:
        """The sample index (``format.INDEX_FILE``), schema-checked; optionally some columns.

        Remote indexes are read once per store and kept in memory (compressed).
        """
        rel = check_rel(self.manifest().index or fmt.INDEX_FILE)
        url = self.url(rel)
        fmt.known_columns(columns)
        limit = max_index_bytes(self.manifest().num_samples)  # docs/format.md, "Integrity"
        try:
            if self.protocol == "file":
                src: Any = check_file_size(url, limit, "index")
            else:
                self._index_bytes = self._index_bytes or self.read_capped(rel, limit, "index")
                src = pa.BufferReader(self._index_bytes)
            with pq.ParquetFile(src) as pf:  # version 1/2 indexes lack format.OPTIONAL_COLUMNS
                table = pf.read(columns=columns and [c for c in columns if c in pf.schema_arrow.names])
        except FileNotFoundError:
            raise FileNotFoundError(f"no index at {url}: the manifest names it but it is missing; "
                                    "repack or re-upload the folder") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise fmt.FormatError(f"{url}: unreadable index ({e})") from None
        return fmt.index_columns(table, fmt.INDEX_COLUMNS if columns is None else columns, url)

    def iter_samples(self, rel: str) -> Iterator[dict[str, Any]]:
        """Yield the samples of a shard as webdataset-style dicts.

        Each dict has ``__key__``, ``__url__`` and one bytes entry per member extension
        (``format.members(version)``: ``lq.png``, ``gt.png``, ``json``). A shard that fails (after retries) is handled by
        the ``on_error`` policy (:meth:`report_failure`): samples already yielded stay.
        """
        url = self.url(rel)
        info = self.shard_info(rel)
        try:
            with self.open_shard(rel) as f:
                with tarfile.open(fileobj=f, mode="r|") as tf:
                    cur: dict[str, Any] | None = None
                    for m in tf:
                        if not m.isfile():
                            continue
                        d, _, base = m.name.rpartition("/")
                        stem, dot, ext = base.partition(".")
                        if not dot:
                            continue
                        key = f"{d}/{stem}" if d else stem
                        if cur is None or cur["__key__"] != key or ext in cur:  # a repeated member: a new sample
                            if cur is not None:
                                yield cur
                            cur = {"__key__": key, "__url__": url}
                        if info is not None and m.offset_data + m.size > info.bytes:
                            # Sizes in a tar header are input: bounded before a byte is allocated.
                            raise ShardError(url, f"tar member {m.name} claims {m.size} bytes at byte "
                                                  f"{m.offset_data}, past the end of the {info.bytes}-byte "
                                                  "shard; the shard is damaged: re-pack or re-upload")
                        cur[ext] = tf.extractfile(m).read()
                    if cur is not None:
                        yield cur
                while f.read(STREAM_BUFFER):  # to the end: size and sha256 are checked there
                    pass
        except (ShardError, tarfile.TarError, OSError) as e:
            self.report_failure(rel, e)

    def report_failure(self, rel: str, exc: BaseException) -> None:
        """Apply the ``on_error`` policy to a shard that failed: raise, or log and record it."""
        url = self.url(rel)
        if self.on_error == "skip":
            log.warning("skipping shard %s (on_error='skip'): %s", url, exc)
            self.skipped.append((url, str(exc)))
            return
        if isinstance(exc, ShardError):
            raise exc
        raise ShardError(url, f"{type(exc).__name__}: {exc}") from exc


def filesystem(loc: Location) -> Any:
    """A new fsspec filesystem for ``loc`` (make one per process: not fork-safe)."""
    import fsspec  # start-up: ~0.1 s that local folders (every command's common case) never need
    opts = dict(loc.fs_options)  # _http_fs pops from it
    return _http_fs(opts) if loc.fs_protocol == "https" else fsspec.filesystem(loc.fs_protocol, **opts)


def _http_fs(opts: dict) -> Any:
    # start-up: ~0.35 s (aiohttp, fsspec) that only remote locations pay, not every local read
    import aiohttp
    import fsspec

    client_kwargs = dict(opts.pop("client_kwargs", {}) or {})
    # No total timeout: a 1 GB shard may take minutes; a stalled socket still fails.
    client_kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120))
    return fsspec.filesystem("https", client_kwargs=client_kwargs, **opts)
