"""Real servers on loopback for the remote-reading tests (used through tests/conftest.py).

* :class:`HubServer`: a threaded HTTP/1.1 server that serves folders the way the Hugging
  Face Hub serves files, ``GET/HEAD /datasets/<org>/<name>/resolve/<revision>/<path>``,
  with ``Range`` support, a request log (method, path, headers, including
  ``Authorization``) and fault injection (HTTP 429/503 first, connections dropped
  mid-body). Anything else (``/api/...`` listing calls) answers 404 and is logged, so a test
  can assert that a reader made none.
* :class:`MotoS3`: moto's S3 server in server mode (a real HTTP endpoint, not an
  in-process mock) plus a helper that uploads a folder to a bucket.
"""

from __future__ import annotations

import re
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

_RESOLVE = re.compile(r"^/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LoggedRequest:
    """One request as the server saw it."""

    method: str
    path: str  # URL path, percent-decoded, without the query
    headers: dict[str, str]
    status: int = 0


@dataclass
class _Fault:
    match: str  # substring of the decoded path ("" = every request)
    remaining: int
    status: int = 0  # answer this status ...
    retry_after: str | None = None
    drop_after: int = -1  # ... or send this many body bytes and cut the connection
    pause: float = 0.0
    flip: bool = False  # ... or flip one byte in the middle of the body (corruption in transit)
    length_delta: int = 0  # ... or announce Content-Length off by this many bytes


@dataclass
class HubServer:
    """A local stand-in for the Hub's file server; see the module docstring.

    Example::

        hub = HubServer(); hub.start(); hub.add_repo("foundir/x", folder)
        os.environ["HF_ENDPOINT"] = hub.url
    """

    repos: dict[tuple[str, str], Path] = field(default_factory=dict)
    requests: list[LoggedRequest] = field(default_factory=list)
    faults: list[_Fault] = field(default_factory=list)
    redirects: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- control
    def start(self) -> "HubServer":
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add_repo(self, repo: str, folder: str | Path, revision: str = "main") -> None:
        """Serve ``folder`` as dataset repo ``repo`` at ``revision``."""
        self.repos[(repo, revision)] = Path(folder)

    def fail_first(self, n: int, status: int = 503, *, match: str = "", retry_after: str | None = "0") -> None:
        """Answer ``status`` to the next ``n`` requests whose path contains ``match``."""
        with self._lock:
            self.faults.append(_Fault(match, n, status=status, retry_after=retry_after))

    def drop_after(self, match: str, nbytes: int, times: int = 1, pause: float = 0.5) -> None:
        """Cut the connection after ``nbytes`` body bytes for the next ``times`` GETs of
        paths containing ``match`` (the headers promise the full length).

        The server waits ``pause`` seconds between the partial body and the cut, so the client
        has consumed those bytes (a client discards buffered bytes once the connection breaks)
        and must resume from them rather than from the start.
        """
        with self._lock:
            self.faults.append(_Fault(match, times, drop_after=nbytes, pause=pause))

    def corrupt(self, match: str, times: int = 1) -> None:
        """Flip one byte in the middle of the body of the next ``times`` GETs of paths
        containing ``match`` (status and length stay right: only a checksum can tell)."""
        with self._lock:
            self.faults.append(_Fault(match, times, flip=True))

    def wrong_length(self, match: str, delta: int, times: int = 1) -> None:
        """Announce ``Content-Length`` ``delta`` bytes off for the next ``times`` GETs of
        paths containing ``match``, sending the real body. Too long (``delta > 0``): the
        connection is closed after the body. Too short: the extra bytes stay on the
        keep-alive connection, where the client reads them as the next response."""
        with self._lock:
            self.faults.append(_Fault(match, times, length_delta=delta))

    def redirect(self, match: str, base_url: str) -> None:
        """Answer 302 to ``base_url + path`` for paths containing ``match`` (as the Hub sends
        LFS/Xet files to its CDN; clients must not carry the token to another host)."""
        with self._lock:
            self.redirects.append((match, base_url.rstrip("/")))

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def paths(self, method: str | None = None) -> list[str]:
        """Logged request paths (optionally of one method)."""
        with self._lock:
            return [r.path for r in self.requests if method is None or r.method == method]

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for f in self.faults:
                if f.remaining > 0 and f.match in path and (f.status or method == "GET"):
                    f.remaining -= 1
                    return f
        return None


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
            # client's delayed ACK add ~40 ms to every response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _reply(self, status: int, payload: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            entry = LoggedRequest(self.command, path, dict(self.headers.items()))
            with server._lock:
                server.requests.append(entry)
            fault = server._take_fault(self.command, path)
            if fault is not None and fault.status:
                entry.status = fault.status
                hdr = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                return self._reply(fault.status, b"injected fault", hdr)
            target_base = next((b for m, b in server.redirects if m in path), None)
            if target_base is not None:
                entry.status = 302
                return self._reply(302, b"", {"Location": f"{target_base}{self.path}"})
            m = _RESOLVE.match(path)
            folder = server.repos.get((m["repo"], m["rev"])) if m else None
            target = (folder / m["path"]).resolve() if folder is not None else None
            if target is None or not target.is_relative_to(folder.resolve()) or not target.is_file():
                entry.status = 404
                return self._reply(404, b'{"error":"Entry not found"}', {"X-Error-Code": "EntryNotFound"})
            data = target.read_bytes()
            status, start, end = 200, 0, len(data)
            rng = self.headers.get("Range")
            if rng:
                r = _RANGE.match(rng.strip())
                if r is None or int(r[1]) >= len(data):
                    entry.status = 416
                    return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                start = int(r[1])
                end = min(len(data), int(r[2]) + 1) if r[2] else len(data)
                status = 206
            entry.status = status
            self.send_response(status)
            delta = fault.length_delta if fault is not None else 0
            self.send_header("Content-Length", str(end - start + delta))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{len(data)}"')
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            if fault is not None and fault.drop_after >= 0:
                self.wfile.write(data[start:start + fault.drop_after])
                self.wfile.flush()
                time.sleep(fault.pause)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            body_bytes = data[start:end]
            if fault is not None and fault.flip and body_bytes:
                mid = len(body_bytes) // 2
                body_bytes = body_bytes[:mid] + bytes([body_bytes[mid] ^ 0xFF]) + body_bytes[mid + 1:]
            self.wfile.write(body_bytes)
            if delta > 0:  # promised more than sent: end the body by closing, as a broken server would
                self.wfile.flush()
                time.sleep(0.2)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

    return Handler


class MotoS3:
    """moto's S3 server on 127.0.0.1 (server mode: real HTTP on loopback)."""

    ACCESS_KEY = "testing"
    SECRET_KEY = "testing"
    REGION = "us-east-1"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop()

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3/s3fs at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_DEFAULT_REGION": self.REGION,
        }

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.ACCESS_KEY,
                            aws_secret_access_key=self.SECRET_KEY, region_name=self.REGION)

    def reset(self) -> None:
        """Forget every bucket (moto's reset API)."""
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")).read()

    def upload_folder(self, folder: str | Path, bucket: str, prefix: str = "") -> str:
        """Upload every file under ``folder`` to ``s3://bucket/prefix/`` and return that URL.

        Bucket names need 3+ characters (S3 rule, enforced by moto).
        """
        if len(bucket) < 3:
            raise ValueError(f"S3 bucket names need 3+ characters, got {bucket!r}")
        client = self.client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
        folder = Path(folder)
        prefix = prefix.strip("/")

        def put(p: Path) -> None:
            key = "/".join(filter(None, [prefix, p.relative_to(folder).as_posix()]))
            client.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())

        with ThreadPoolExecutor(8) as pool:  # boto3 clients are thread-safe
            list(pool.map(put, [p for p in sorted(folder.rglob("*")) if p.is_file()]))
        return f"s3://{bucket}/{prefix}".rstrip("/")
