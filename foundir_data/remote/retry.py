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

from foundir_data.errors import ChecksumError, FoundIRError, ShardError, TruncatedShardError

log = logging.getLogger(__name__)  # "foundir_data.remote.retry" (a child of "foundir_data")
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
    if _protocol_error(e):
        return True
    status = http_status(e)
    if status is not None:
        return status in (408, 425, 429) or status >= 500
    if isinstance(e, (ConnectionError, TimeoutError)):
        return True
    return any(c.__name__ in _TRANSIENT_NAMES for c in type(e).__mro__)


def _protocol_error(e: BaseException) -> bool:
    """A response that did not parse as HTTP (aiohttp reports it as status 400): typically
    bytes a server left on a keep-alive connection after a too-short Content-Length. The
    client drops that connection, so the same request on a new one may succeed."""
    cause = e.__cause__ or e.__context__
    return cause is not None and any(k.__name__ == "HttpProcessingError" for k in type(cause).__mro__)


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
    """A one-line account of ``e`` built from its status and reason only: an HTTP client's
    error also holds the request, whose headers carry the token, so its ``str``/``repr``
    never go into a message."""
    status = http_status(e)
    if status is not None:
        reason = getattr(e, "message", "") or ""
        reason = reason.splitlines()[0][:200] if isinstance(reason, str) and reason else ""
        return f"HTTP {status} {reason}".rstrip()
    if isinstance(e, Truncated):
        return f"truncated read: expected {e.expected} bytes, got {e.got}"
    if isinstance(e, (ShardError, Truncated)) or type(e).__module__ == "builtins":
        return f"{type(e).__name__}: {e}"
    return type(e).__name__  # a third-party error: its text may quote request headers


def _clean(err: BaseException) -> BaseException:
    """``err`` with no chained cause or context (they may hold a client error and its request)."""
    err.__cause__ = None
    err.__context__ = None
    err.__suppress_context__ = True
    return err


def failure(e: Exception, attempt: int, *, what: str, url: str, retries: int, backoff: float) -> BaseException | None:
    """The error to raise for ``e``, or None after waiting before retry ``attempt``.

    Every error returned is rebuilt by this module with the URL and a status/reason only
    and carries no chained exception: callers raise it outside their ``except`` block, so
    no ``__context__`` links back to a client error (which holds the request and its
    ``Authorization`` header).
    """
    status = http_status(e)
    if status in (401, 403):
        return _clean(PermissionError(
            f"access denied (HTTP {status}) {what} {url}: pass a valid token (token=, HF_TOKEN "
            "or `hf auth login`) or check the bucket's credentials"))
    if status == 404 or isinstance(e, FileNotFoundError):
        return _clean(FileNotFoundError(f"{url}: not found" + (" (HTTP 404)" if status == 404 else "")))
    if not is_transient(e):
        if isinstance(e, (FoundIRError, PermissionError, IsADirectoryError, NotADirectoryError)) \
                and type(e).__module__.startswith(("foundir", "builtins")):
            return _clean(e)
        return _clean(ShardError(url, f"{what} failed: {describe(e)}"))
    if attempt >= retries:
        if isinstance(e, Truncated):
            return _clean(TruncatedShardError(
                url, f"truncated: expected {e.expected} bytes, got {e.got} (after {attempt + 1} "
                     "attempts); the file is shorter than the manifest says: re-upload or re-pack it"))
        return _clean(ShardError(url, f"{what} failed after {attempt + 1} attempts: {describe(e)}"))
    delay = retry_delay(attempt, backoff, url, retry_after(e))
    log.info("%s %s: %s; retry %d/%d in %.2fs", what, url, describe(e), attempt + 1, retries, delay)
    time.sleep(delay)
    return None


def call_with_retries(fn: Callable[[], T], *, what: str, url: str, retries: int, backoff: float) -> T:
    """Call ``fn`` until it succeeds, retrying transient faults (see the module docstring)."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified by failure()
            err = failure(e, attempt, what=what, url=url, retries=retries, backoff=backoff)
        if err is not None:
            raise err  # outside the except block: no context chained to the client's error
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
            err, at_end = None, False
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
            except Exception as e:  # noqa: BLE001 - classified by failure()
                self._close_file()
                # Every byte the manifest records arrived and the body then "failed": the server
                # announced a wrong Content-Length. Resuming would ask for bytes past the end (416).
                at_end = self.size is not None and self._pos == self.size and is_transient(e)
                if not at_end:
                    err = failure(e, attempt, what="reading", url=self.url, retries=self.retries,
                                  backoff=self.backoff)
            if at_end:
                self._finish()  # the sha256 (when given) still decides whether the bytes are right
                return b""
            if err is not None:
                raise err  # outside the except block: no context chained to the client's error
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
