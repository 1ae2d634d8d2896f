"""Caps on the sizes a remote or a file claims, checked before bytes are allocated.

A manifest or an index is read whole into memory, so its size is input: a server that
announces a 50 GiB ``Content-Length`` (or streams without end) must fail with a clear error
naming the URL, not fill the machine (docs/format.md, "Integrity"). Shards are never read
whole into memory; their sizes come from the manifest and are checked by the readers.

* the manifest: at most :data:`MAX_MANIFEST_BYTES` (about 300,000 shards);
* the index: at most :func:`max_index_bytes` of the sample count the manifest records
  (a row compresses to a few hundred bytes; :data:`INDEX_BYTES_PER_ROW` is far above it).
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Callable

from foundir_data import format as fmt

#: Largest manifest a reader accepts.
MAX_MANIFEST_BYTES = 64 << 20
#: Index bytes allowed per sample of the manifest, and for the file's own overhead.
INDEX_BYTES_PER_ROW = 4096
INDEX_BYTES_BASE = 16 << 20
_CHUNK = 1 << 20


class SizeLimitError(fmt.FormatError):
    """A file claims (or has) more bytes than a reader accepts for it."""


def max_index_bytes(num_samples: int) -> int:
    """Largest index accepted for a folder whose manifest records ``num_samples``."""
    return INDEX_BYTES_BASE + INDEX_BYTES_PER_ROW * max(0, int(num_samples))


def claimed_size(f: Any) -> int | None:
    """The size a file object announces before it is read: an HTTP response's
    ``Content-Length``, a local file's ``fstat`` size, else None (unknown)."""
    response = getattr(f, "r", None)  # fsspec's HTTP stream file keeps its aiohttp response
    headers = getattr(response, "headers", None)
    if headers is not None:
        value = headers.get("Content-Length")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None
    try:
        return os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError, TypeError):
        return getattr(f, "size", None) if isinstance(getattr(f, "size", None), int) else None


def check_file_size(path: str, limit: int, what: str) -> str:
    """``path`` if the local file has at most ``limit`` bytes (read by a library that
    allocates by its size), else :class:`SizeLimitError`."""
    size = os.path.getsize(path)
    if size > limit:
        raise SizeLimitError(f"{path}: the {what} has {size:,} bytes, more than the {limit:,} a {what} of this "
                             "folder may have; refused before reading (a damaged folder)")
    return path


def read_limited(opener: Callable[[], BinaryIO], url: str, limit: int, what: str) -> bytes:
    """Read all of the file ``opener()`` opens if it holds at most ``limit`` bytes.

    The announced size is checked first (nothing read), then at most ``limit + 1`` bytes are
    read, so memory never follows what a server or file claims.

    Raises:
        SizeLimitError: naming ``url``, ``what`` and the limit.
    """
    with opener() as f:
        claimed = claimed_size(f)
        if claimed is not None and claimed > limit:
            raise SizeLimitError(f"{url}: the {what} claims {claimed:,} bytes, more than the {limit:,} a {what} "
                                 "may have; refused before reading (a wrong server or a damaged folder)")
        chunks, n = [], 0
        while n <= limit:
            b = f.read(min(_CHUNK, limit + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
    if n > limit:
        raise SizeLimitError(f"{url}: the {what} is larger than the {limit:,} bytes a {what} may have; "
                             "stopped reading (a wrong server or a damaged folder)")
    return b"".join(chunks)
