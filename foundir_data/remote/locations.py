"""Where a packed folder lives: parse a location into its fsspec filesystem, root URL and headers.

Locations (one fsspec code path for all, see ``store.py``):

* local paths and ``file://`` -> fsspec's local filesystem;
* ``s3://bucket/prefix`` -> s3fs; the endpoint comes from ``storage_options`` or
  ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, moto, R2, ...);
* ``https://host/prefix`` -> fsspec's HTTP filesystem;
* ``hf://datasets/<org>/<name>[@revision][/subdir]`` -> the same HTTP filesystem on the
  Hub's file URLs ``{HF_ENDPOINT}/datasets/{repo}/resolve/{revision}/{path}``
  (docs/release.md, "Library facts"); ``HF_ENDPOINT`` is read now, not at import.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from foundir_data import format as fmt

#: Hub endpoint used when ``HF_ENDPOINT`` is unset (huggingface_hub's default).
DEFAULT_HF_ENDPOINT = "https://huggingface.co"
HF_PREFIX = "hf://datasets/"


def hf_endpoint() -> str:
    """The Hub endpoint, read from ``HF_ENDPOINT`` now (huggingface_hub reads it at import)."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def s3_endpoint() -> str | None:
    """The S3 endpoint from the environment (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``):
    MinIO, moto, R2, ... The one rule for readers and ``shard_tools push``."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def parse_hf_location(location: str) -> tuple[str, str, str]:
    """Split ``hf://datasets/<org>/<name>[@revision][/subdir]`` into (repo, revision, subdir).

    A revision with slashes is written URL-encoded (``@refs%2Fpr%2F3``) or, for the Hub's
    ``refs/pr/N`` and ``refs/convert/...`` refs, plainly (``@refs/pr/3``).
    """
    if not location.startswith(HF_PREFIX):
        raise ValueError(f"Hub location {location!r} must look like "
                         "hf://datasets/<org>/<name>[@revision][/subdir]")
    parts = [p for p in location[len(HF_PREFIX):].split("/") if p]
    if len(parts) < 2:
        raise ValueError(f"Hub location {location!r} must name a dataset repo: "
                         "hf://datasets/<org>/<name>[@revision][/subdir]")
    org, name, rest = parts[0], parts[1], parts[2:]
    revision = "main"
    if "@" in name:
        name, revision = name.split("@", 1)
        if revision == "refs" and len(rest) >= 2:  # @refs/pr/3/subdir
            revision, rest = "/".join(["refs", *rest[:2]]), rest[2:]
        revision = unquote(revision)
    if not org or not name or not revision:
        raise ValueError(f"Hub location {location!r}: empty org, name or revision")
    return f"{org}/{name}", revision, "/".join(rest)


def check_rel(rel: str) -> str:
    """Reject paths that could escape the dataset root (they come from remote manifests)."""
    norm = posixpath.normpath(rel) if rel else ""
    if (not rel or rel.startswith("/") or "\\" in rel or norm.startswith("..")
            or any(p == ".." for p in rel.split("/"))):
        raise fmt.FormatError(f"invalid path {rel!r} in a foundir folder: paths must be "
                              "relative to the dataset root, without '..'")
    return rel


@dataclass
class Location:
    """A resolved location.

    Attributes:
        location: Normalised location as the user would write it (no token).
        protocol: ``file``, ``s3``, ``http``, ``hf`` or another fsspec protocol.
        fs_protocol: The fsspec protocol to build the filesystem with.
        fs_options: Its options.
        root: Root URL (or absolute path) that file paths are joined to.
        headers: HTTP headers for every request (may hold the token: never log them).
    """

    location: str
    protocol: str
    fs_protocol: str
    fs_options: dict = field(default_factory=dict)
    root: str = ""
    headers: dict = field(default_factory=dict, repr=False)

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def is_http(self) -> bool:
        return self.protocol in ("hf", "http")

    def url(self, rel: str) -> str:
        """Full URL (or absolute local path) of ``rel``; never contains the token."""
        check_rel(rel)
        if self.is_local:
            return os.path.join(self.root, *rel.split("/"))
        if self.is_http:
            return f"{self.root}/{quote(rel, safe='/')}"
        return f"{self.root}/{rel}"


def resolve(location: str | os.PathLike, *, token: str | None = None,
            storage_options: dict | None = None) -> Location:
    """Parse ``location`` (see the module docstring).

    Args:
        location: Path or URL of a packed folder.
        token: Hub token for ``hf://`` (default: ``huggingface_hub.get_token()``); sent as
            ``Authorization: Bearer`` to the Hub only.
        storage_options: fsspec options; ``headers`` are sent with every HTTP request.
    """
    opts = dict(storage_options or {})
    headers = dict(opts.pop("headers", {}) or {})
    location = str(os.fspath(location))
    if location.startswith("hf://"):
        repo, revision, subdir = parse_hf_location(location)
        if token is None:
            from huggingface_hub import get_token  # start-up: ~0.15 s only hf:// pays (every read imports this module)

            token = get_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        root = f"{hf_endpoint()}/datasets/{repo}/resolve/{quote(revision, safe='')}"
        root = f"{root}/{quote(subdir, safe='/')}" if subdir else root
        rev = f"@{quote(revision, safe='/')}" if revision != "main" else ""
        norm = f"{HF_PREFIX}{repo}{rev}{'/' + subdir if subdir else ''}"
        return Location(norm, "hf", "https", opts, root, headers)
    if location.startswith(("http://", "https://")):
        root = location.rstrip("/")
        return Location(root, "http", "https", opts, root, headers)
    if "://" not in location or location.startswith("file://"):
        path = location[len("file://"):] if location.startswith("file://") else location
        root = os.path.abspath(os.path.expanduser(path))
        return Location(root, "file", "file", {}, root, {})
    protocol = location.split("://", 1)[0]
    if protocol in ("s3", "s3a"):
        endpoint = s3_endpoint()
        client_kwargs = dict(opts.get("client_kwargs") or {})
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in opts:
            client_kwargs["endpoint_url"] = endpoint
        if client_kwargs:
            opts["client_kwargs"] = client_kwargs
        protocol, location = "s3", "s3://" + location.split("://", 1)[1]
    import fsspec  # start-up: ~0.1 s that local folders (every command's common case) never need

    try:
        fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as e:
        raise ValueError(f"cannot read {location!r}: {e} (for s3:// install foundir[s3])") from None
    root = location.rstrip("/")
    return Location(root, protocol, protocol, opts, root, headers)
