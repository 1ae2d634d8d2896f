"""Transient-fault handling for remote reads: errors, backoff, and a resumable stream.

What counts as transient (retried): HTTP 408/429/5xx, connection resets and refusals,
timeouts, bodies that end before their length (aiohttp's ``ClientPayloadError``, our
:class:`Truncated`). What does not: 404 (``FileNotFoundError``), 401/403
(``PermissionError``), bad data. Backoff doubles per retry from ``backoff`` seconds, times a
jitter in [0.5, 1.5) drawn from a generator seeded by (url, attempt), so a run is
reproducible and workers reading different files do not retry in lockstep; a server's
``Retry-After`` is honoured when longer.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import logging
import random
import time
from typing import Any, BinaryIO, Callable, TypeVar

log = logging.getLogger(__name__)  # "foundir_data.retry" (a child of "foundir_data")
T = TypeVar("T")

#: Longest single wait, whatever the backoff or Retry-After say.
MAX_DELAY = 120.0
_TRANSIENT_NAMES = {
    # aiohttp
    "ClientPayloadError", "ClientConnectionError", "ServerDisconnectedError", "ClientOSError",
    "ServerTimeoutError", "ContentLengthError", "TransferEncodingError",
    # botocore / urllib3 (s3fs)
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
    "ResponseStreamingError", "IncompleteReadError", "ProtocolError",
}


class ShardError(OSError):
    """A file of a packed folder could not be read correctly; ``url`` names it."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason

    def __reduce__(self) -> tuple:  # picklable across DataLoader workers
        return (type(self), (self.url, self.reason))


class ChecksumError(ShardError):
    """The bytes read do not match the sha256 recorded in the manifest or index."""


class TruncatedShardError(ShardError):
    """A file still ended before its recorded size after every retry."""


class Truncated(Exception):
    """A read ended early (transient until retries run out)."""

    def __init__(self, url: str, expected: int, got: int) -> None:
        super().__init__(f"{url}: expected {expected} bytes, got {got}")
        self.url, self.expected, self.got = url, expected, got


def http_status(e: BaseException) -> int | None:
    """HTTP status carried by an aiohttp or botocore error, if any."""
    status = getattr(e, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(e, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    return None


def is_transient(e: BaseException) -> bool:
    """Whether retrying the same read may succeed."""
    if isinstance(e, Truncated):
        return True
    if isinstance(e, (ShardError, FileNotFoundError, PermissionError, IsADirectoryError,
                      NotADirectoryError)):
        return False
    status = http_status(e)
    if status is not None:
        return status in (408, 425, 429) or status >= 500
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    return any(c.__name__ in _TRANSIENT_NAMES for c in type(e).__mro__)


def retry_after(e: BaseException) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP date)."""
    headers = getattr(e, "headers", None)
    if headers is None:
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders")
    if not headers:
        return None
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(attempt: int, backoff: float, url: str, after: float | None = None) -> float:
    """Wait before retry number ``attempt`` (0-based): exponential, jittered, >= Retry-After."""
    jitter = 0.5 + random.Random(f"{url}|{attempt}").random()
    delay = backoff * (2 ** attempt) * jitter
    if after is not None:
        delay = max(delay, after)
    return min(delay, MAX_DELAY)


def describe(e: BaseException) -> str:
    status = http_status(e)
    if status is not None:
        return f"HTTP {status} {getattr(e, 'message', '') or ''}".rstrip()
    if isinstance(e, Truncated):
        return f"truncated read: expected {e.expected} bytes, got {e.got}"
    return f"{type(e).__name__}: {e}"


def handle_failure(e: Exception, attempt: int, *, what: str, url: str, retries: int,
                   backoff: float) -> None:
    """Raise the final error for ``e``, or wait before retry ``attempt`` if it is transient."""
    status = http_status(e)
    if status in (401, 403):
        raise PermissionError(
            f"access denied (HTTP {status}) {what} {url}: pass a valid token (token=, HF_TOKEN "
            "or `hf auth login`) or check the bucket's credentials") from None
    if status == 404 and not isinstance(e, FileNotFoundError):
        raise FileNotFoundError(f"{url}: not found (HTTP 404)") from None
    if not is_transient(e):
        raise e
    if attempt >= retries:
        if isinstance(e, Truncated):
            raise TruncatedShardError(
                url, f"truncated: expected {e.expected} bytes, got {e.got} (after {attempt + 1} "
                     "attempts); the file is shorter than the manifest says: re-upload or re-pack it") from e
        raise ShardError(url, f"{what} failed after {attempt + 1} attempts: {describe(e)}") from e
    delay = retry_delay(attempt, backoff, url, retry_after(e))
    log.info("%s %s: %s; retry %d/%d in %.2fs", what, url, describe(e), attempt + 1, retries, delay)
    time.sleep(delay)


def call_with_retries(fn: Callable[[], T], *, what: str, url: str, retries: int, backoff: float) -> T:
    """Call ``fn`` until it succeeds, retrying transient faults (see the module docstring)."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified by handle_failure
            handle_failure(e, attempt, what=what, url=url, retries=retries, backoff=backoff)
            attempt += 1


class ShardStream(io.RawIOBase):
    """A sequential, resumable read of one file.

    ``opener(url, pos, size)`` returns a file positioned at ``pos``; when a read fails with a
    transient fault the file is reopened at the byte reached (a ``Range`` request remotely),
    so a dropped connection costs one request, not the shard. When ``size`` is known, an
    early end is a fault and a longer file an error; when ``sha256`` is given it is checked
    at the end.
    """

    def __init__(self, *, url: str, opener: Callable[[str, int, int | None], BinaryIO],
                 size: int | None, sha256: str | None, retries: int, backoff: float) -> None:
        super().__init__()
        self.url, self.size, self.sha256 = url, size, sha256
        self.retries, self.backoff = retries, backoff
        self._opener = opener
        self._f: Any = None
        self._pos = 0
        self._hash = hashlib.sha256() if sha256 else None
        self._done = False
        self.reopens = 0  # how many times the stream resumed after a fault

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def readinto(self, b: Any) -> int:
        data = self._read(len(b))
        n = len(data)
        memoryview(b).cast("B")[:n] = data
        return n

    def readall(self) -> bytes:
        chunks = []
        while chunk := self._read(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)

    def _read(self, n: int) -> bytes:
        if n == 0 or self._done:
            return b""
        attempt = 0
        while True:
            try:
                if self._f is None:
                    if self._pos:
                        self.reopens += 1
                    self._f = self._opener(self.url, self._pos, self.size)
                data = self._f.read(n)
                if not data:
                    if self.size is not None and self._pos < self.size:
                        raise Truncated(self.url, self.size, self._pos)
                    self._finish()
                    return b""
                if self.size is not None and self._pos + len(data) > self.size:
                    raise ShardError(self.url, f"longer than the {self.size} bytes the manifest "
                                               "records: it changed after packing; re-pack or re-upload")
                self._pos += len(data)
                if self._hash is not None:
                    self._hash.update(data)
                return data
            except Exception as e:  # noqa: BLE001 - classified by handle_failure
                self._close_file()
                handle_failure(e, attempt, what="reading", url=self.url, retries=self.retries,
                               backoff=self.backoff)
                attempt += 1

    def _finish(self) -> None:
        self._done = True
        self._close_file()
        if self._hash is not None and self._hash.hexdigest() != self.sha256:
            raise ChecksumError(self.url, f"sha256 mismatch: expected {self.sha256}, found "
                                          f"{self._hash.hexdigest()}; the file is corrupt or changed "
                                          "after packing: delete cached copies, re-upload or re-pack")

    def _close_file(self) -> None:
        f, self._f = self._f, None
        if f is not None:
            try:
                f.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail again
                pass

    def close(self) -> None:
        self._close_file()
        super().close()
