"""One shard of a packed folder, re-read against its manifest entry and index rows (``shard_tools verify``).

One sequential pass per shard hashes the file and parses the tar (``_HashingReader``), so a
shard is read once at disk speed, locally or through ``foundir_data.remote.store.Store``. Checks:

* file: the listed size and sha256;
* tar structure: each sample is exactly ``<key>.lq.png``, ``<key>.gt.png``, ``<key>.json``,
  consecutive and in that order (WebDataset only groups consecutive members,
  docs/release.md, "Library facts"); the sample count matches the manifest;
* index: one row per sample, right shard/position, each member's data offset, size and
  sha256 as recorded, the JSON record equal to the index row's record;
* images: decodable by content (cheap container checks, or every pixel with
  ``full_decode``) with the format and size the index records.

Every finding is a :class:`Problem` naming the shard, sample key, member, expected and found
value. The folder-level checks and the command are ``shard_tools.inspect.verify``.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import xxhash

from foundir_data import format as fmt
from shard_tools.pack.probe import BadImage, probe_image

_SUFFIX = {fmt.LQ_MEMBER: "lq", fmt.GT_MEMBER: "gt", fmt.JSON_MEMBER: "json"}
#: Largest member kept in memory for the image check; larger ones are hashed as they stream
#: by and reported (FoundIR's largest images are tens of MB), so verify's memory does not
#: follow a hostile tar header.
MAX_MEMBER_BYTES = 256 << 20
#: Largest JSON record parsed (records are a few hundred bytes).
MAX_RECORD_BYTES = 1 << 20


@dataclass
class Problem:
    """One thing wrong with a packed folder."""

    path: str
    what: str
    key: str | None = None
    member: str | None = None
    expected: Any = None
    found: Any = None

    def __str__(self) -> str:
        where = self.path
        if self.key:
            where += f" key {self.key}"
        if self.member:
            where += f" member {self.member}"
        tail = ""
        if self.expected is not None or self.found is not None:
            tail = f" (expected {self.expected!r}, found {self.found!r})"
        return f"{where}: {self.what}{tail}"


class _HashingReader:
    """A read-only file wrapper hashing every byte read (one pass: sha256 + tar parse)."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.pos = f, hashlib.sha256(), 0
        self.error: BaseException | None = None  # a failed read of the file itself (remote)

    def read(self, n: int = -1) -> bytes:
        try:
            b = self.f.read(n)
        except Exception as e:
            self.error = e
            raise
        self.sha.update(b)
        self.pos += len(b)
        return b

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


Member = tuple[int, int, str, "bytes | None"]  # (data offset, size, sha256 hex, bytes or None if too large)


def _read_member(tf: tarfile.TarFile, ti: tarfile.TarInfo, limit: int) -> tuple[str, bytes | None]:
    """sha256 and bytes of a member, read in chunks; bytes only up to ``limit``."""
    f = tf.extractfile(ti)
    sha, keep = hashlib.sha256(), ti.size <= limit
    chunks = []
    while chunk := f.read(1 << 20):
        sha.update(chunk)
        if keep:
            chunks.append(chunk)
    return sha.hexdigest(), b"".join(chunks) if keep else None


def _samples(tf: tarfile.TarFile, rel: str, problems: list[Problem],
             shard_size: int | None = None) -> Iterator[tuple[str, dict[str, Member]]]:
    """Group members into samples; report names, order and non-consecutive keys. A member
    whose header claims more bytes than the shard has is reported and not read."""
    seen: set[str] = set()
    key, members = None, {}
    for ti in tf:
        name = ti.name
        base = name.rsplit("/", 1)[-1]
        k, dot, suffix = base.partition(".")
        if not ti.isreg():
            problems.append(Problem(rel, "tar member is not a regular file", member=name))
            continue
        if "/" in name or "\\" in name:  # members are flat: `<key>.<ext>`, never a path (docs/format.md)
            problems.append(Problem(rel, "tar member name has a directory part (a reader would extract or key "
                                         "it elsewhere)", member=name, expected=f"{k}.{suffix}", found=name))
        if k != key:
            if key is not None:
                yield key, members
            if k in seen:
                problems.append(Problem(rel, "members of this key are not consecutive", key=k, member=suffix))
            seen.add(k)
            key, members = k, {}
        if suffix not in _SUFFIX:
            problems.append(Problem(rel, "unexpected member", key=k, member=suffix, expected=list(fmt.MEMBERS), found=suffix))
            continue
        if suffix in members:
            problems.append(Problem(rel, "duplicate member", key=k, member=suffix))
            continue
        expected_pos = fmt.MEMBERS[len(members)] if len(members) < len(fmt.MEMBERS) else None
        if suffix != expected_pos:
            problems.append(Problem(rel, "member out of order", key=k, member=suffix, expected=expected_pos, found=suffix))
        if shard_size is not None and ti.offset_data + ti.size > shard_size:
            problems.append(Problem(rel, "tar header claims a member past the end of the shard", key=k,
                                    member=suffix, expected=f"<= {shard_size - ti.offset_data} bytes", found=ti.size))
            raise tarfile.ReadError(f"member {name} claims {ti.size} bytes past the end of the shard")
        limit = MAX_RECORD_BYTES if suffix == fmt.JSON_MEMBER else MAX_MEMBER_BYTES
        sha, data = _read_member(tf, ti, limit)
        if data is None:
            problems.append(Problem(rel, f"member is larger than verify checks ({limit} bytes)", key=k,
                                    member=suffix, found=ti.size))
        members[suffix] = (ti.offset_data, ti.size, sha, data)
    if key is not None:
        yield key, members


def _open_shard(root: str, rel: str, store: Any) -> tuple[Any, int | None]:
    """(file object, size or None when only reading tells). Raises FileNotFoundError."""
    if store is None:
        path = Path(root) / rel
        if not path.is_file():
            raise FileNotFoundError(rel)
        return open(path, "rb"), path.stat().st_size
    # Remote: the store retries and resumes; its own checksum is off so that this module
    # reports size and sha256 itself, with the expected and found values.
    f = store.open_shard(rel, verify=False)
    try:
        f.peek(1)  # the stream opens lazily: surface a 404 as FileNotFoundError here
    except BaseException:
        f.close()
        raise
    return f, None


def verify_shard(root: str, info: fmt.ShardInfo, rows: list[dict[str, Any]] | pa.Table, full_decode: bool = False,
                 store: Any = None) -> tuple[list[Problem], int]:
    """Verify one shard against its manifest entry and its index rows.

    Args:
        root: The packed folder (or the location, for messages, when ``store`` is given).
        info: The shard's manifest entry.
        rows: Its index rows (dicts or an Arrow table).
        full_decode: Decode every pixel.
        store: A ``foundir_data.remote.store.Store`` to read a remote folder through (None: local).

    Returns:
        (problems, number of samples found in the tar).
    """
    rel = info.path
    if isinstance(rows, pa.Table):
        rows = rows.to_pylist()
    problems: list[Problem] = []
    try:
        f, size = _open_shard(root, rel, store)
    except FileNotFoundError:
        problems.append(Problem(rel, "shard file is missing"))
        return problems, 0
    except Exception as e:  # remote: HTTP/S3 errors after the store's retries
        problems.append(Problem(rel, f"shard cannot be opened ({type(e).__name__}: {e})"))
        return problems, 0
    if size is not None and size != info.bytes:
        problems.append(Problem(rel, "shard size differs from the manifest", expected=info.bytes, found=size))
    by_key = {r["key"]: r for r in rows}
    found_keys: set[str] = set()
    n = 0
    with f:
        reader = _HashingReader(f)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tf:
                for key, members in _samples(tf, rel, problems, size if size is not None else info.bytes):
                    _check_sample(rel, key, members, n, by_key.get(key), info, full_decode, problems)
                    found_keys.add(key)
                    n += 1
        except Exception as e:  # tarfile.ReadError, EOFError, or the file read failing
            if reader.error is None:
                problems.append(Problem(rel, f"tar is truncated or unreadable after {n} samples ({type(e).__name__}: {e})"))
        if reader.error is None:
            try:
                reader.drain()  # the file's sha256 covers every byte, also after a tar error
            except Exception:
                pass
        read_all = reader.error is None
        if not read_all:
            e = reader.error
            problems.append(Problem(rel, f"shard read failed at byte {reader.pos} after {n} samples ({type(e).__name__}: {e})"))
    if size is None and read_all and reader.pos != info.bytes:
        problems.append(Problem(rel, "shard size differs from the manifest", expected=info.bytes, found=reader.pos))
    sha = reader.sha.hexdigest()
    if read_all and sha != info.sha256:
        problems.append(Problem(rel, "shard sha256 differs from the manifest", expected=info.sha256, found=sha))
    if n != info.count:
        problems.append(Problem(rel, "sample count differs from the manifest", expected=info.count, found=n))
    if len(rows) != n:
        problems.append(Problem(rel, "index rows for this shard differ from its samples", expected=n, found=len(rows)))
    for k in sorted(set(by_key) - found_keys):
        problems.append(Problem(rel, "index row has no sample in the shard", key=k))
    return problems, n


def _check_sample(rel: str, key: str, members: dict[str, Member], position: int,
                  row: dict[str, Any] | None, info: fmt.ShardInfo, full_decode: bool,
                  problems: list[Problem]) -> None:
    def bad(what: str, member: str | None = None, expected: Any = None, found: Any = None) -> None:
        problems.append(Problem(rel, what, key=key, member=member, expected=expected, found=found))

    try:
        fmt.validate_key(key)
    except fmt.FormatError as e:
        bad(str(e))
    missing = [m for m in fmt.MEMBERS if m not in members]
    if missing:
        bad("sample is missing members", expected=list(fmt.MEMBERS), found=sorted(members))
    if row is None:
        bad("sample has no row in the index")
        return
    for field, want in (("sample_index", position), ("split", info.split),
                        ("degradation", info.degradation), ("layout", info.layout)):
        if row.get(field) != want:
            bad(f"index {field} differs", expected=want, found=row.get(field))
    for member, (offset, size, sha, data) in members.items():
        p = _SUFFIX[member]
        if row.get(f"{p}_offset") != offset:
            bad("member offset differs from the index", member, row.get(f"{p}_offset"), offset)
        if row.get(f"{p}_size") != size:
            bad("member size differs from the index", member, row.get(f"{p}_size"), size)
        if data is None:  # too large to check further (reported by _samples)
            continue
        if member == fmt.JSON_MEMBER:
            if row.get("json_sha256") is not None and row["json_sha256"] != sha:  # format version 3
                bad("member sha256 differs from the index", member, row["json_sha256"], sha)
            _check_record(data, row, bad)
            continue
        if row.get(f"{p}_sha256") != sha:
            bad("member sha256 differs from the index", member, row.get(f"{p}_sha256"), sha)
        fast = row.get(f"{p}_xxh3")  # format version 3: what the readers check (docs/format.md)
        if fast is not None and fast != xxhash.xxh3_128_hexdigest(data):
            bad("member xxh3 differs from the index", member, fast, xxhash.xxh3_128_hexdigest(data))
        try:
            im = probe_image(data, f"{rel}:{key}.{member}", full_decode=full_decode)
        except BadImage as e:
            bad(f"image is not decodable: {e}", member)
            continue
        got = (im.format, im.width, im.height)
        want = (row.get(f"{p}_format"), row.get(f"{p}_width"), row.get(f"{p}_height"))
        if got != want:
            bad("image format/size differs from the index", member, want, got)


def _check_record(data: bytes, row: dict[str, Any], bad) -> None:
    try:
        record = json.loads(data)  # JSON only: never pickle from shards
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        bad(f"JSON record does not parse ({e})", fmt.JSON_MEMBER)
        return
    except RecursionError:
        bad("JSON record does not parse (nested too deeply)", fmt.JSON_MEMBER)
        return
    if not isinstance(record, dict):
        bad("JSON record is not an object", fmt.JSON_MEMBER)
        return
    want = fmt.record_from_row(row)
    for k in sorted(set(want) | set(record)):
        if k not in record:
            bad(f"JSON record lacks field {k!r}", fmt.JSON_MEMBER, want.get(k), None)
        elif record[k] != want.get(k):
            bad(f"JSON record field {k!r} differs from the index", fmt.JSON_MEMBER, want.get(k), record[k])
