"""A size-limited local cache of remote files (shards, index) for ``Store.local_path``.

Layout under the cache root::

    sha256/<2 hex>/<sha256 hex>       files whose sha256 the manifest records (shards):
                                      content-addressed, so never stale and shared
                                      between locations and revisions
    url/<2 hex>/<sha1 of url>-<name>  other files, refreshed once per store

Files are written to a ``.part`` file next to their final name and renamed when complete,
so a crash or a concurrent reader never sees half a file. Use marks a file recently used
(its mtime); after each download the least recently used files are removed until the
cache fits ``limit_bytes`` (the file just downloaded is always kept).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO, Callable

log = logging.getLogger(__name__)
_counter = itertools.count()


def default_cache_dir() -> str:
    """``$FOUNDIR_CACHE``, else ``$XDG_CACHE_HOME/foundir``, else ``~/.cache/foundir``."""
    if os.environ.get("FOUNDIR_CACHE"):
        return os.environ["FOUNDIR_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "foundir")


class DiskCache:
    """See the module docstring.

    Args:
        root: Cache folder (created on first download).
        limit_bytes: Size limit of the cache's files, or None for no limit.
    """

    def __init__(self, root: str | os.PathLike, limit_bytes: int | None = None) -> None:
        if limit_bytes is not None and limit_bytes < 0:
            raise ValueError(f"cache_limit_bytes must be >= 0, got {limit_bytes}")
        self.root = Path(root)
        self.limit_bytes = limit_bytes

    def path_for(self, url: str, sha256: str | None) -> Path:
        """Where the file at ``url`` (with this sha256, if known) is cached."""
        if sha256:
            return self.root / "sha256" / sha256[:2] / sha256
        h = hashlib.sha1(url.encode()).hexdigest()
        name = "".join(c if c.isalnum() or c in "._-" else "_" for c in url.rsplit("/", 1)[-1])[-80:]
        return self.root / "url" / h[:2] / f"{h}-{name}"

    def hit(self, path: Path, size: int | None) -> bool:
        """True if ``path`` is cached (with ``size`` bytes when given); marks it used."""
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        if size is not None and st.st_size != size:
            return False
        try:
            os.utime(path)
        except FileNotFoundError:  # evicted by another process just now
            return False
        return True

    def fill(self, path: Path, write: Callable[[BinaryIO], None]) -> Path:
        """Atomically create ``path`` with what ``write(file)`` writes, then evict to the limit.

        If ``write`` raises (a checksum mismatch, a failed download), nothing is left behind.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}-{next(_counter)}.part")
        try:
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.evict(keep=path)
        return path

    def files(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every complete cached file."""
        out = []
        for dirpath, _, names in os.walk(self.root):
            for n in names:
                if n.endswith(".part"):
                    continue
                p = Path(dirpath) / n
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, st.st_size, p))
        return out

    def size(self) -> int:
        """Total bytes of the cached files."""
        return sum(s for _, s, _ in self.files())

    def evict(self, keep: Path | None = None) -> None:
        """Remove least recently used files until the cache fits its limit."""
        if self.limit_bytes is None:
            return
        entries = sorted(self.files(), key=lambda e: (e[0], str(e[2])))
        total = sum(s for _, s, _ in entries)
        for _, size, p in entries:
            if total <= self.limit_bytes:
                break
            if keep is not None and p == keep:
                continue
            try:
                p.unlink()
                total -= size
            except FileNotFoundError:
                total -= size
        if total > self.limit_bytes:
            log.warning("cache %s holds %d bytes, over its %d byte limit: the file in use is "
                        "larger than the limit", self.root, total, self.limit_bytes)
