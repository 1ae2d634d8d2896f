"""Where pack inputs live: a local folder, zip archives (local or remote), or a remote prefix.

``shard_tools pack``'s source argument and ``--data-root`` name one of (docs/packing.md,
"Zip archives and object storage"):

* a local file or folder: a plain :class:`pathlib.Path`, read exactly as before;
* zip archives read in place (``shard_tools.ingest.zips``): a ``.zip``, a glob (``'Train/*.zip'``)
  or a folder or URL prefix of ``.zip`` files only; their members form one tree;
* any other fsspec URL (``s3://bucket/prefix``, ``https://...``): the files under it.

``SPEC!/inner/path`` picks a folder or file inside such a tree (``lists.zip!/train.txt``).
Archives and remote prefixes are represented by a :class:`VPath`, which offers the few
``Path`` methods the layouts use; its ``str`` is a *locator*, ``<url>!/<path>``, that always
holds ``://`` (a local ``Path`` never does: it collapses ``//``), so :func:`size` and
:func:`read_bytes` tell locators from local paths, and a worker process re-opens the tree
from the locator alone (trees are cached per process).
"""

from __future__ import annotations

import glob
import io
import os
import posixpath
from array import array
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator

from foundir_data.remote.locations import resolve as resolve_location
from foundir_data.remote.retry import call_with_retries
from foundir_data.remote.store import filesystem
from shard_tools.ingest.records import IngestError, Reject, read_regular
from shard_tools.ingest import zips as zip_source
from shard_tools.ingest.zips import ByteSource, Member, ZipArchiveError, ZipMemberError, read_directory, read_member

_SEP = "!/"
_GLOB = set("*?[")


def is_locator(path: str) -> bool:
    """Whether ``path`` names a file inside an archive or a remote tree (not a local file)."""
    return "://" in path


def _split(spec: str) -> tuple[str, str]:
    """(tree base, inner path) of ``BASE!/inner``: the first ``!/`` whose base is a remote URL
    or local archive(s), so that a local folder named ``a!`` stays part of the base."""
    at = spec.find(_SEP)
    while at >= 0:
        base = spec[:at]
        local = base[len("file://"):] if base.startswith("file://") else base
        if ("://" in base and not base.startswith("file://")) or _zip_spec_local(local):
            return base, spec[at + len(_SEP):].strip("/")
        at = spec.find(_SEP, at + 1)
    return spec, ""


def resolve(spec: "str | os.PathLike | VPath") -> "Path | VPath":
    """A source or data root as a local ``Path`` or a :class:`VPath` (see the module docstring).

    A path that exists locally is itself whatever characters it holds (a folder named
    ``a!`` or ``data[1]``); only a missing one is read as ``ARCHIVE!/inner`` or a glob.

    Raises:
        IngestError: an unreadable remote location, a glob that matches nothing.
    """
    if isinstance(spec, VPath):
        return spec
    spec = os.fspath(spec)
    if "://" in spec and not spec.startswith("file://"):
        base, inner = _split(spec)
        tree = open_tree(base)
        if not inner and isinstance(tree, RemoteTree) and tree.is_file_root():  # a remote list file
            parent, _, name = base.rstrip("/").rpartition("/")
            return VPath(open_tree(parent), name)
        return VPath(tree, inner)
    path = spec[len("file://"):] if spec.startswith("file://") else spec
    base, inner = (path, "") if os.path.exists(path) else _split(path)
    if not _zip_spec_local(base):
        return Path(path)  # a folder or file as before (a missing one is reported by the layouts)
    return VPath(open_tree("file://" + os.path.abspath(os.path.expanduser(base))), inner)


@lru_cache(maxsize=256)  # asked once per member read with the same few bases
def _zip_spec_local(p: str) -> bool:
    if not os.path.exists(p):  # an existing "data[1]" folder is a folder, not a pattern
        return bool(_GLOB & set(p))
    if not os.path.isdir(p):  # a file (or a FIFO, device...: refused by ingest, never listed here)
        return os.path.isfile(p) and p.lower().endswith(".zip")
    entries = [e for e in os.scandir(p) if not e.name.startswith(".")]
    return _only_zips([e.name for e in entries], any(e.is_dir() for e in entries))


def _only_zips(names: list[str], has_dirs: bool) -> bool:
    return bool(names) and not has_dirs and all(n.lower().endswith(".zip") for n in names)


@lru_cache(maxsize=8)
def _tree_cached(base: str, pid: int) -> "Tree":
    local = base.startswith("file://")
    path = base[len("file://"):] if local else base
    fs, root = (None, path) if local else _fs_for(base)
    if _GLOB & set(path):
        found = sorted(glob.glob(path) if local else fs.glob(root))
        if not found:
            raise IngestError(f"{base}: no archive matches this pattern")
        return ZipTree(base, [p for p in found], fs, name=posixpath.basename(posixpath.dirname(path)))
    if path.lower().endswith(".zip"):
        return ZipTree(base, [root], fs, name=posixpath.basename(path)[:-4])
    if local:
        names = sorted(e.name for e in os.scandir(path) if not e.name.startswith("."))
        return ZipTree(base, [os.path.join(path, n) for n in names], None, name=os.path.basename(path))
    tree = RemoteTree(base, fs, root)
    zips = tree.top_zips()
    return ZipTree(base, zips, fs, name=posixpath.basename(root)) if zips else tree


def open_tree(base: str) -> "Tree":
    """The tree of ``base`` (a URL), parsed once; a forked worker keeps a local tree (each
    archive opens its own descriptor) but builds its own remote one (async fsspec clients
    are not fork-safe)."""
    return _tree_cached(base, 0 if base.startswith("file://") else os.getpid())


def _fs_for(url: str) -> tuple[Any, str]:
    try:
        loc = resolve_location(url)
    except ValueError as e:
        raise IngestError(str(e)) from None
    fs = filesystem(loc)
    return fs, fs._strip_protocol(loc.root) if loc.protocol != "http" else loc.root


class Tree:
    """A read-only tree of files: ``files`` maps a ``/``-path to its size."""

    base: str
    name: str

    def __init__(self) -> None:
        self.files: dict[str, int] = {}
        self.rejects: list[tuple[str, str, str]] = []  # (path, reason, origin)
        self._dirs: dict[str, set[str]] | None = None

    def dirs(self) -> dict[str, set[str]]:
        """Each folder's children names (folders are implied by file paths)."""
        if self._dirs is None:
            self._dirs = {"": set()}
            for f in self.files:
                parts = f.split("/")
                for i in range(len(parts)):
                    self._dirs.setdefault("/".join(parts[:i]), set()).add(parts[i])
        return self._dirs

    def has_dir(self, rel: str) -> bool:
        """Whether folder ``rel`` exists. The root always does; a sub-folder (a data root inside
        an archive) is looked for without building :meth:`dirs` (the folder layouts' map)."""
        if not rel or (self._dirs is not None and rel in self._dirs):
            return True
        pre = rel + "/"
        return any(f.startswith(pre) for f in self.files)

    def size(self, rel: str) -> int:
        """Size of file ``rel``; ``FileNotFoundError`` (naming its locator) when absent."""
        if rel not in self.files:
            raise FileNotFoundError(2, "no such file", f"{self.base}{_SEP}{rel}")
        return self.files[rel]

    def read(self, rel: str) -> bytes:
        """The bytes of file ``rel`` as stored."""
        raise NotImplementedError


class ZipTree(Tree):
    """The members of one or more zip archives as one tree; unusable archives and members,
    and paths found in two archives, become :attr:`rejects`."""

    def __init__(self, base: str, archives: list[str], fs: Any, *, name: str) -> None:
        super().__init__()
        self.base, self.name, self.fs = base, name, fs
        self.sources: list[ByteSource] = []
        # The release has ~2M members: each is a name -> row entry and one row of six int64s
        # in ``_rows`` (archive, then Member's fields), ~200 bytes a member rather than ~400
        # as (archive, Member) tuples (measured with tracemalloc).
        self.members: dict[str, int] = {}
        self._rows = array("q")
        clash: dict[str, list[int]] = {}
        for path in archives:
            try:
                src = ByteSource(path, fs)
                members, bad = read_directory(src)
            except (ZipArchiveError, OSError) as e:
                self.rejects.append((os.path.basename(path), f"unreadable archive: {_reason(e)}", path))
                continue
            self.sources.append(src)
            i = len(self.sources) - 1
            self.rejects.extend((n, reason, path) for n, reason in bad)
            for n, m in members.items():
                if n in clash:
                    clash[n].append(i)
                elif n in self.members:
                    clash[n] = [self._rows[6 * self.members.pop(n)], i]  # its row stays, unused
                else:
                    self.members[n] = len(self._rows) // 6
                    self._rows.append(i)
                    self._rows.extend(m)
            del members
        for n, where in sorted(clash.items()):
            names = " and ".join(self.sources[i].path for i in where)
            self.rejects.append((n, f"path found in two archives: {names} (neither is read)", names))
        self.files = self.members  # type: ignore[assignment] - only its keys are read as a tree
        if not self.members and self.rejects:  # nothing to pack at all: say why, not "empty"
            path, reason, origin = self.rejects[0]
            raise IngestError(f"{base}: no readable member ({len(self.rejects)} rejected); first: {path}: {reason}")

    def _member(self, rel: str) -> tuple[int, Member]:
        if rel not in self.members:
            raise FileNotFoundError(2, "no such file", f"{self.base}{_SEP}{rel}")
        j = 6 * self.members[rel]
        return self._rows[j], Member(*self._rows[j + 1:j + 6])

    def size(self, rel: str) -> int:
        return self._member(rel)[1].usize

    def read(self, rel: str) -> bytes:
        i, m = self._member(rel)
        return read_member(self.sources[i], rel, m)


class RemoteTree(Tree):
    """Files under a remote prefix, listed once (paginated LIST requests, not one per file)."""

    def __init__(self, base: str, fs: Any, root: str) -> None:
        super().__init__()
        self.base, self.fs, self.root = base, fs, root.rstrip("/")
        self.name = posixpath.basename(self.root)
        self._listed = False

    def _retry(self, what: str, fn: Any) -> Any:
        return call_with_retries(fn, what=what, url=self.base, retries=6, backoff=0.5)

    def top_zips(self) -> list[str]:
        try:
            entries = self._retry("list", lambda: self.fs.ls(self.root, detail=True))
        except (FileNotFoundError, NotImplementedError):
            return []
        names = [posixpath.basename(e["name"].rstrip("/")) for e in entries]
        dirs = any(e.get("type") == "directory" for e in entries)
        return [e["name"] for e in entries] if _only_zips(names, dirs) else []

    def _list(self) -> None:
        if not self._listed:
            try:
                found = self._retry("list", lambda: self.fs.find(self.root, detail=True))
            except (FileNotFoundError, NotImplementedError):
                found = {}
            cut = len(self.root) + 1
            self.files = {k[cut:]: int(v.get("size") or 0) for k, v in found.items()
                          if v.get("type") != "directory" and k.startswith(self.root + "/")}
            self._dirs, self._listed = None, True

    def dirs(self) -> dict[str, set[str]]:
        self._list()
        return super().dirs()

    def has_dir(self, rel: str) -> bool:
        self._list()
        return super().has_dir(rel)

    def size(self, rel: str) -> int:
        self._list()
        if rel not in self.files and rel:  # not listed (an HTTP server lists nothing): ask once
            url = f"{self.root}/{rel}"
            try:
                self.files[rel] = int(self._retry("stat", lambda: self.fs.size(url)))
            except (FileNotFoundError, IsADirectoryError):
                pass
        return super().size(rel)

    def is_file_root(self) -> bool:
        """Whether the base URL names one file rather than a prefix."""
        try:
            return bool(self._retry("stat", lambda: self.fs.isfile(self.root)))
        except (FileNotFoundError, NotImplementedError):
            return False

    def read(self, rel: str) -> bytes:
        url = f"{self.root}/{rel}"
        return self._retry("read", lambda: self.fs.cat_file(url))


def _reason(e: BaseException) -> str:
    return str(e) if isinstance(e, (ZipArchiveError, ZipMemberError)) else f"{type(e).__name__}: {e}"


class VPath:
    """A folder or file inside a :class:`Tree`, with the ``Path`` methods ingest uses."""

    __slots__ = ("tree", "rel")

    def __init__(self, tree: Tree, rel: str) -> None:
        self.tree, self.rel = tree, rel.strip("/")

    def __str__(self) -> str:
        return f"{self.tree.base}{_SEP}{self.rel}" if self.rel else f"{self.tree.base}!"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VPath) and (self.tree, self.rel) == (other.tree, other.rel)

    def __hash__(self) -> int:
        return hash((id(self.tree), self.rel))

    def __lt__(self, other: "VPath") -> bool:
        return self.rel < other.rel

    def __truediv__(self, name: str) -> "VPath":
        return VPath(self.tree, posixpath.join(self.rel, name) if self.rel else name)

    @property
    def name(self) -> str:
        return posixpath.basename(self.rel) if self.rel else self.tree.name

    @property
    def parent(self) -> "VPath":
        return VPath(self.tree, posixpath.dirname(self.rel))

    def is_dir(self) -> bool:
        return self.tree.has_dir(self.rel)

    def is_file(self) -> bool:
        try:
            return self.tree.size(self.rel) >= 0
        except FileNotFoundError:
            return False

    def is_symlink(self) -> bool:
        return False  # symlink members are rejected when the archive is read

    def resolve(self) -> "VPath":
        return self

    def iterdir(self) -> Iterator["VPath"]:
        return iter(sorted(self / c for c in self.tree.dirs().get(self.rel, ())))

    def relative_to(self, other: "VPath") -> PurePosixPath:
        return PurePosixPath(self.rel).relative_to(other.rel) if other.rel else PurePosixPath(self.rel)

    def as_posix(self) -> str:
        return str(self)

    def files(self) -> list[str]:
        """Every file under this folder, as sorted paths relative to it."""
        pre = self.rel + "/" if self.rel else ""
        return sorted(f[len(pre):] for f in self.tree.files if f.startswith(pre))

    def open(self, mode: str = "rb", **kw: Any) -> BinaryIO | io.TextIOWrapper:
        """The whole file in memory (list files and manifests), its size checked first.

        Raises:
            IngestError: a file over ``zip_source.MAX_MEMBER_BYTES``.
        """
        size = self.tree.size(self.rel)
        if size > zip_source.MAX_MEMBER_BYTES:
            raise IngestError(f"{self}: {size:,} bytes, over the {zip_source.MAX_MEMBER_BYTES:,} a list or "
                              "manifest may have here")
        f = io.BytesIO(self.tree.read(self.rel))
        return f if "b" in mode else io.TextIOWrapper(f, **kw)


def archive_rejects(roots: tuple, split: str | None) -> list[Reject]:
    """One reject per unusable archive or member of the trees behind ``roots`` (each tree
    once), so that every input item is packed or listed with its reason."""
    trees = {id(r.tree): r.tree for r in roots if isinstance(r, VPath)}
    return [Reject(path, None, split, None, reason, origin)
            for t in trees.values() for path, reason, origin in t.rejects]


def _locate(locator: str) -> tuple[Tree, str]:
    base, inner = _split(locator)
    return open_tree(base), inner


def size(path: str) -> int:
    """Size of a local file or of a locator's file (``FileNotFoundError`` when absent)."""
    if not is_locator(path):
        return os.stat(path).st_size
    tree, rel = _locate(path)
    return tree.size(rel)


def read_bytes(path: str) -> bytes:
    """The bytes of a local file or of a locator's file, as stored."""
    if not is_locator(path):
        return read_regular(path)  # a FIFO or device put in place of an image is refused, never read
    tree, rel = _locate(path)
    return tree.read(rel)
