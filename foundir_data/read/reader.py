"""The one pair reader: index byte offsets -> one pread or one range read -> checksum -> bytes.

Every reader of image members goes through :class:`PairReader` (the training stream in each
read mode, ``access.get_pair``, ``load_dataset``, validation, evaluation, tiles, previews),
so every member handed on has been compared with the checksum its index row records, before
anything decodes it (``docs/streaming.md``, "Integrity"). The checksum is the row's xxh3-128
where the index has one (format version 3), else its sha256 (:func:`expected`): sha256 runs at
~1.8 GB/s per core, so on raw tiles it would cost more than the rest of a crop; xxh3 runs at
~60 GB/s (docs/format.md, "Version 3"). sha256 stays in the index for ``shard_tools verify``.

* Sizes come from the index, which may be hostile or stale: a span is checked against the
  shard's real size (``fstat`` of the open file, or the manifest's size remotely) before a
  byte is allocated, so memory never follows a claimed size.
* The LQ and GT members of a sample are adjacent in the tar (one 512-byte header between
  them), so one read covers both when the gap is at most :data:`MAX_GAP`.
* A mismatch on a remote read (``range``, or a cached copy of a remote shard) is read once
  more with a fresh range request (a corrupted transfer passes the second time; a cached
  copy that was damaged on disk is dropped); a local mismatch, or a second one, raises
  :class:`~foundir_data.errors.ChecksumError` naming the shard, the member and both hashes.
  Whether that stops the caller or skips the pair is the caller's ``on_error`` policy.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from typing import Any, Callable, Mapping

import xxhash

from foundir_data import format as fmt
from foundir_data.integrity import MAX_RECORD_BYTES, check_record
from foundir_data.errors import ChecksumError

log = logging.getLogger(__name__)

#: Read LQ and GT in one request when at most this many bytes lie between them (tar
#: header + padding is 512-1023 bytes).
MAX_GAP = 64 * 1024
READ_MODES = ("auto", "pread", "cache", "range")
#: Shard files a reader keeps open (least recently used closed first).
MAX_OPEN = 32


def resolve_read(read: str, store: Any) -> str:
    """The read mode ``"auto"`` stands for at ``store``'s location.

    Local folders: ``pread``. The Hub: ``cache`` (whole shards), because it limits file
    resolves to a few thousand per 5 minutes (``docs/streaming.md``): one range request per
    pair would be about a million requests per epoch, one download per shard about 5,000.
    S3 and plain HTTP: ``range`` (no such limit; no bytes fetched that this rank does not use).
    """
    if read not in READ_MODES:
        raise ValueError(f"read must be one of {READ_MODES}, got {read!r}")
    if read != "auto":
        return read
    if store.is_local:
        return "pread"
    return "cache" if store.protocol == "hf" else "range"


def digest(expected: str | bytes | None, where: str) -> bytes:
    """The 32-byte sha256 an index records (hex text or raw bytes)."""
    if isinstance(expected, (bytes, bytearray)) and len(expected) == 32:
        return bytes(expected)
    try:
        out = bytes.fromhex(expected) if isinstance(expected, str) else b""
    except ValueError:
        out = b""
    if len(out) != 32:
        raise fmt.FormatError(f"{where}: the index records no valid sha256 ({expected!r}); "
                              "re-pack the folder (every member must be checkable)")
    return out


#: A member's expected checksum: (algorithm, digest), algorithm ``"xxh3"`` or ``"sha256"``.
Expected = tuple[str, bytes]


def expected(sha: str | bytes | None, xxh3: str | bytes | None, where: str | Callable[[], str]) -> Expected:
    """The checksum a reader compares a member with: its xxh3-128 when the index records one
    (format version 3), else its sha256 (:func:`digest`). ``where`` (or what it returns: built
    only for a message, it costs ~30 us per member) names the member in errors."""
    if isinstance(xxh3, (bytes, bytearray)) and len(xxh3) == 16:
        return "xxh3", bytes(xxh3)
    if isinstance(sha, (bytes, bytearray)) and len(sha) == 32 and xxh3 is None:
        return "sha256", bytes(sha)
    where = where() if callable(where) else where
    if xxh3 is not None:
        try:
            raw = bytes.fromhex(xxh3) if isinstance(xxh3, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 16:
            raise fmt.FormatError(f"{where}: the index records a malformed xxh3 ({xxh3!r}); re-pack the folder")
        return "xxh3", raw
    return "sha256", digest(sha, where)


def checksum(algo: str, data: bytes | memoryview) -> bytes:
    """The ``algo`` (``"xxh3"``: xxh3-128, or ``"sha256"``) digest of ``data``."""
    return xxhash.xxh3_128_digest(data) if algo == "xxh3" else hashlib.sha256(data).digest()


def check_member(row: Mapping[str, Any], which: str, data: bytes | memoryview | None, where: str) -> bool:
    """Whether ``data`` is the ``which`` (``"lq"``/``"gt"``) member of index ``row``: its
    xxh3 where the row has one, else its sha256. False for ``None`` (a missing member)."""
    algo, want = expected(row.get(f"{which}_sha256"), row.get(f"{which}_xxh3"), where)
    return data is not None and checksum(algo, data) == want


class PairReader:
    """Checked reads of image members of one :class:`~foundir_data.remote.store.Store`.

    Args:
        store: The packed folder.
        mode: ``pread`` (local file, or ``cache``: a local copy of a remote shard through the
            store's size-limited cache) or ``range`` (one range request per read); ``auto``
            picks by location (:func:`resolve_read`).
    """

    def __init__(self, store: Any, mode: str = "auto") -> None:
        self.store = store
        self.mode = resolve_read(mode, store)
        self.retried = 0  # remote mismatches that passed on the second read
        self._fds: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._pid = -1
        self._buf = bytearray()

    # ------------------------------------------------------------ public
    def read_member(self, rec: Mapping[str, Any], member: str) -> bytes:
        """The checked bytes of one member (``"lq"``, ``"gt"`` or ``"json"``) of an index row."""
        off, size = rec[f"{member}_offset"], rec[f"{member}_size"]
        if off is None or size is None or min(off, size) < 0:
            raise fmt.FormatError(f"{self.store.location}: index row of {rec['key']!r} has no {member} offsets")
        want = expected(rec.get(f"{member}_sha256"), rec.get(f"{member}_xxh3"),
                        self._where(rec["shard"], rec["key"], member, off))
        mem = self._read(rec["shard"], [(off, size)], False, rec["key"])
        return bytes(self._checked(rec["shard"], rec["key"], [(member, off, size, want)], mem, off)[0])

    def read_pair(self, rec: Mapping[str, Any], *, reuse: bool = False) -> tuple[memoryview, memoryview]:
        """The checked LQ and GT bytes of an index row, in one read when they are adjacent.

        When the row has ``json_offset``/``json_size``, the ``<key>.json`` record that follows
        GT is read in the same request and checked too (``json_sha256``, or field by field
        against the row in version 1/2 folders: ``integrity.check_record``), so the bytes
        are this key's sample.

        Args:
            rec: An index row (``shard``, ``key``, ``{lq,gt}_{offset,size,sha256}``).
            reuse: Read into one buffer kept by this reader (no allocation per pair); the
                views are valid until the next call.

        Raises:
            ChecksumError: a member still differs from the index (names shard, member, hashes).
            FormatError: offsets or sizes that do not fit in the shard, or no sha256.
        """
        record = None
        if rec.get("json_offset") is not None and rec.get("json_size") is not None:
            record = (rec["json_offset"], rec["json_size"], rec.get("json_sha256"))
        views = self.read_offsets(rec["shard"], rec["key"], rec["lq_offset"], rec["lq_size"], rec["gt_offset"],
                                  rec["gt_size"], rec.get("lq_sha256"), rec.get("gt_sha256"), reuse=reuse,
                                  record=record, lq_xxh3=rec.get("lq_xxh3"), gt_xxh3=rec.get("gt_xxh3"))
        if record is not None and record[2] is None:  # no json_sha256 (v1/2): compare the fields
            check_record(views[2], rec, self.store.url(rec["shard"]))
        return views[0], views[1]

    def read_offsets(self, shard: str, key: str, lo: int, ls: int, go: int, gs: int,
                     lq_sha: str | bytes | None, gt_sha: str | bytes | None,
                     *, reuse: bool = False, record: tuple[int, int, str | bytes | None] | None = None,
                     lq_xxh3: str | bytes | None = None, gt_xxh3: str | bytes | None = None,
                     ) -> tuple[memoryview, ...]:
        """:meth:`read_pair` from plain values (the stream keeps its index as arrays).

        Args:
            record: ``(offset, size, sha256 or None)`` of the ``<key>.json`` member: read in
                the same request when adjacent (it follows GT: one tar header between) and,
                when a sha256 is given, checked like the images; returned as a third view
                (a version 1/2 folder has no sha256: the caller compares the record).
            lq_xxh3, gt_xxh3: The images' xxh3 digests, checked instead of their sha256
                where given (:func:`expected`).
        """
        if None in (lo, ls, go, gs) or min(lo, ls, go, gs) < 0 or (record is not None and (
                None in record[:2] or min(record[:2]) < 0 or record[1] > MAX_RECORD_BYTES)):
            raise fmt.FormatError(f"{self.store.url(shard)}: index row of {key!r} has no valid member offsets")
        wants: list[tuple[str, int, int, Expected | None]] = [
            ("lq", lo, ls, expected(lq_sha, lq_xxh3, lambda: self._where(shard, key, "lq", lo))),
            ("gt", go, gs, expected(gt_sha, gt_xxh3, lambda: self._where(shard, key, "gt", go)))]
        if record is not None:
            jo, jn, jsha = record
            wants.append(("json", jo, jn, None if jsha is None else
                          expected(jsha, None, lambda: self._where(shard, key, "json", jo))))
        joined = all(0 <= b[1] - (a[1] + a[2]) <= MAX_GAP for a, b in zip(wants, wants[1:]))
        spans = [(lo, wants[-1][1] + wants[-1][2] - lo)] if joined else [(o, n) for _, o, n, _ in wants]
        mem = self._read(shard, spans, reuse, key)
        return self._checked(shard, key, wants, mem, lo if joined else None)

    def close(self) -> None:
        """Close the shard files this reader holds open."""
        fds, self._fds = self._fds, OrderedDict()
        if self._pid == os.getpid():
            for fd, _ in fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass

    def __getstate__(self) -> dict[str, Any]:
        # Descriptors and the read buffer belong to one process (spawned workers reopen).
        return {**self.__dict__, "_fds": OrderedDict(), "_pid": -1, "_buf": bytearray()}

    def __del__(self) -> None:
        self.close()

    # ------------------------------------------------------------ reading
    def _member(self, key: str, member: str) -> str:
        """``<key>.<tar member name>`` of ``"lq"``/``"gt"``/``"json"`` in this folder's format version."""
        lq, gt, js = fmt.members(self.store.manifest().format_version)
        return f"{key}.{ {'lq': lq, 'gt': gt}.get(member, js)}"

    def _where(self, shard: str, key: str, member: str, off: int) -> str:
        return f"{self.store.url(shard)}: member {self._member(key, member)} at byte {off}"

    def _fd(self, shard: str) -> tuple[int, int]:
        """(descriptor, real size) of a local copy of ``shard``."""
        if self._pid != os.getpid():  # forked worker: never share the parent's descriptors
            self._fds, self._pid, self._buf = OrderedDict(), os.getpid(), bytearray()
        got = self._fds.get(shard)
        if got is None:
            fd = os.open(self.store.local_path(shard), os.O_RDONLY)
            got = (fd, os.fstat(fd).st_size)
            self._fds[shard] = got
            while len(self._fds) > MAX_OPEN:
                os.close(self._fds.popitem(last=False)[1][0])
        else:
            self._fds.move_to_end(shard)
        return got

    def _limit(self, shard: str) -> int:
        info = self.store.shard_info(shard)
        if info is None:  # no size to bound a range read by: the index does not match the manifest
            raise fmt.FormatError(f"{self.store.location}: the index names shard {shard!r}, which the manifest "
                                  "does not list; re-pack or re-upload the folder")
        return info.bytes

    def _bound(self, shard: str, key: str, spans: list[tuple[int, int]], limit: int | None) -> None:
        for off, n in spans:
            if limit is not None and off + n > limit:
                raise fmt.FormatError(
                    f"{self.store.url(shard)}: truncated shard or wrong index: the index places sample {key} "
                    f"at bytes {off}..{off + n}, past the end of the {limit}-byte file (checked before "
                    "reading); re-download or re-pack the folder")

    def _read(self, shard: str, spans: list[tuple[int, int]], reuse: bool, key: str) -> memoryview:
        if self.mode == "range":
            self._bound(shard, key, spans, self._limit(shard))
            return memoryview(b"".join(self.store.read_range(shard, off, n) for off, n in spans))
        fd, size = self._fd(shard)
        self._bound(shard, key, spans, size)  # before allocating: sizes come from the index
        need = sum(n for _, n in spans)
        if reuse:
            if len(self._buf) < need:
                self._buf = bytearray(max(need, 2 * len(self._buf)))
            mem = memoryview(self._buf)[:need]
        else:
            mem = memoryview(bytearray(need))
        pos = got = 0
        for off, n in spans:
            got += os.preadv(fd, [mem[pos:pos + n]], off)
            pos += n
        if got != need:  # the file shrank after it was opened
            raise fmt.FormatError(f"{self.store.url(shard)}: truncated shard (sample {key} ends past the "
                                  "end of the file); re-download or re-pack it")
        return mem

    def _checked(self, shard: str, key: str, wants: list[tuple[str, int, int, Expected | None]], mem: memoryview,
                 base: int | None) -> tuple[memoryview, ...]:
        """Slice members out of ``mem`` (at ``off - base`` when joined, else in order) and check
        each (a None sha256: left to the caller); a remote mismatch is read once more by a
        fresh range request."""
        out, pos = [], 0
        for member, off, size, want in wants:
            start = off - base if base is not None else pos
            view = mem[start:start + size]
            pos += size
            if want is None:  # a version 1/2 record: compared field by field by the caller
                out.append(view)
                continue
            found = checksum(want[0], view)
            if found != want[1]:
                view = self._second_read(shard, key, member, off, size, want, found)
            out.append(view)
        return tuple(out)

    def _second_read(self, shard: str, key: str, member: str, off: int, size: int, want: Expected,
                     found: bytes) -> memoryview:
        where = self._where(shard, key, member, off)
        algo, want_digest = want
        if not self.store.is_local:
            data = self.store.read_range(shard, off, size)
            again = checksum(algo, data)
            if again == want_digest:
                self.retried += 1
                log.warning("%s: %s mismatch on the first read, correct on the second", where, algo)
                if self.mode != "range":
                    self._drop_cached(shard)
                return memoryview(data)
            found = again
        raise ChecksumError(self.store.url(shard), (
            f"member {self._member(key, member)} at byte {off}: {algo} mismatch: expected {want_digest.hex()}, found "
            f"{found.hex()}; the shard is damaged or does not match its index: run `shard_tools verify`, "
            "re-pack or re-upload"))

    def _drop_cached(self, shard: str) -> None:
        """A cached copy whose bytes changed on disk: close it and delete it (refetched next time)."""
        got = self._fds.pop(shard, None)
        if got is not None:
            os.close(got[0])
        try:
            os.remove(self.store.local_path(shard))
        except OSError:
            pass
