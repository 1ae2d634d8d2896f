"""Sources -> pair records: the four input layouts ``shard_tools pack`` understands.

Every source becomes a deterministic stream of :class:`PairSpec` (a pair to pack) and
:class:`Reject` (an input item that cannot be packed, with its reason). Each input item
yields exactly one record, so *count in = packed + rejected* holds by construction.

Layouts (docs/release.md, "Data" for the release's own):
    ``list``: the release's training list files, ``<gt_relpath>, <lq_relpath>`` per line,
        relative to a data root (default: the folder ``Train`` next to the list file).
    ``test``: the release's test layout ``<root>/NNName/{GT,LQ}/<id>.<ext>``.
    ``folder``: a generic paired folder ``<root>/lq/`` + ``<root>/gt/`` with matching stems,
        the degradation given by a subfolder token (``lq/Blur/x.png``) or by ``--degradation``.
    ``manifest``: a CSV or Parquet table with columns ``lq``, ``gt`` and optionally
        ``degradation`` and ``split``, paths relative to a data root (default: its folder).

The folder layouts (``test``, ``folder``) are read here; the listed ones (``list``,
``manifest``) in ``shard_tools.ingest.lists``.

File extensions are never trusted for pairing beyond the stem: the release mixes
``png``/``jpg``/``JPG`` and has JPEG bytes behind ``.png`` names.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

from foundir_data import format as fmt
from foundir_data import taxonomy
from shard_tools.ingest import sources
from shard_tools.ingest.lists import iter_list, iter_manifest
from shard_tools.ingest.records import (  # noqa: F401 - re-exported: the records are this module's API
    GT_NAMES, LQ_NAMES, IngestError, PairSpec, Record, Reject, check_regular, inside, join_path, normalise,
    outside_reason, parse_deg,
)

KINDS = ("auto", "list", "test", "folder", "manifest")


def detect_kind(source: str | os.PathLike) -> str:
    """Guess the layout of ``source`` from its content.

    A directory with ``lq``/``gt`` children is a ``folder``; one whose children hold
    ``LQ``/``GT`` folders is the ``test`` layout. A file starting with Parquet's magic
    bytes, or whose first line is a CSV header naming ``lq`` and ``gt``, is a ``manifest``;
    any other text file is a release ``list``.

    Raises:
        IngestError: naming the source when nothing matches.
    """
    p = sources.resolve(source)
    if p.is_dir():
        children = _subdirs(p)
        if _find_child(children, LQ_NAMES) and _find_child(children, GT_NAMES):
            return "folder"
        if any(_find_child(_subdirs(c), LQ_NAMES) and _find_child(_subdirs(c), GT_NAMES) for c in children):
            return "test"
        if not any(p.iterdir()):
            raise IngestError(f"{p}: empty folder, nothing to pack")
        raise IngestError(
            f"{p}: unknown folder layout; expected lq/ + gt/ (paired folder) or "
            f"NNName/LQ + NNName/GT (release test layout). Pass --kind to force one."
        )
    if not (p.is_file() if isinstance(p, sources.VPath) else p.exists()):  # a FIFO exists: refused below
        raise IngestError(f"{p}: no such file or folder")
    if not isinstance(p, sources.VPath):  # archive members are never special files
        check_regular(p, "source")  # a FIFO would block the open below forever
    with p.open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"PAR1"):
        return "manifest"
    first = head.decode("utf-8-sig", "replace").splitlines()[0] if head.strip() else ""  # -sig: Excel's BOM
    cols = {c.strip().strip('"').lower() for c in first.split(",")}
    if {"lq", "gt"} <= cols:
        return "manifest"
    if not head.strip():
        raise IngestError(f"{p}: empty file, nothing to pack")
    return "list"


def iter_pairs(source: str | os.PathLike, *, kind: str = "auto", split: str | None = None,
               degradation: str | None = None, data_root: str | os.PathLike | None = None,
               mapping: Mapping[str, str] | None = None,
               exclude: str | os.PathLike | None = None) -> Iterator[Record]:
    """Yield one :class:`PairSpec` or :class:`Reject` per input item, in a fixed order.

    Args:
        source: A list file, a CSV/Parquet manifest, or a folder; local, inside zip
            archives or remote (``shard_tools.ingest.sources``).
        kind: One of :data:`KINDS`; ``auto`` detects it from content.
        split: Force the split (default: the manifest's ``split`` column; ``test`` for the
            test layout unless its folder is named ``Train``; ``train`` otherwise).
        degradation: Force the degradation type of every pair (a name or token).
        data_root: Root that list/manifest paths are relative to (``sources.resolve``).
        mapping: User mapping of unknown degradation tokens to canonical names.
        exclude: A folder inside the source that is not input (the pack's own output).

    Paths are normalised (``a//b``, ``a/./b``) before keys and duplicate checks; a path
    that resolves outside the source root / data root (``..``, absolute, a symlink out) is
    rejected with its path and the reason, never read. Hidden files and folders and
    symlinked folders are not followed: each becomes a reject row.

    Raises:
        IngestError: the source is empty, unreadable, or of an unknown layout.
    """
    if kind not in KINDS:
        raise IngestError(f"unknown source kind {kind!r}; expected one of {', '.join(KINDS)}")
    if split is not None and split not in fmt.SPLITS:
        raise IngestError(f"unknown split {split!r}; expected one of {', '.join(fmt.SPLITS)}")
    forced = None
    if degradation is not None:
        try:
            forced = taxonomy.parse_token(degradation, mapping).name
        except taxonomy.UnknownDegradationError as e:
            raise IngestError(f"--degradation: {e}") from None
    src = sources.resolve(source)
    root = sources.resolve(data_root) if data_root is not None else None
    kind = detect_kind(src) if kind == "auto" else kind
    fn = {"list": iter_list, "test": _iter_test, "folder": _iter_folder, "manifest": iter_manifest}[kind]
    n = 0
    token = _EXCLUDE.set(os.path.realpath(exclude) if exclude is not None else None)
    try:
        records = sources.archive_rejects((src, root), split) + list(
            fn(src, split=split, forced=forced, data_root=root, mapping=mapping or {}))
    finally:
        _EXCLUDE.reset(token)
    for rec in records:
        n += 1
        yield rec
    if n == 0:
        raise IngestError(f"{source}: empty source, no pairs found ({kind} layout)")


# ---------------------------------------------------------------- helpers
#: The pack's output folder (realpath) while ingesting, when it lies inside the source.
_EXCLUDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("exclude", default=None)


def _excluded(p: str | Path | sources.VPath) -> bool:
    ex = _EXCLUDE.get()
    return ex is not None and not isinstance(p, sources.VPath) and os.path.realpath(p) == ex


def _subdirs(p: Path) -> list[Path]:
    """Visible, real (not symlinked) sub-folders of ``p``, minus the excluded output (none
    when ``p`` cannot be listed: :func:`_unreadable` says so as a reject)."""
    try:
        return sorted(c for c in p.iterdir() if c.is_dir() and not c.is_symlink()
                      and not c.name.startswith(".") and not _excluded(c))
    except OSError:
        return []


def _unreadable(p: Path) -> str | None:
    """Why the folder ``p`` cannot be listed (its pairs would be lost silently), or None."""
    if isinstance(p, sources.VPath):  # an archive's folders are listed from its directory
        return None
    try:
        with os.scandir(p):
            return None
    except OSError as e:
        return f"{_UNREADABLE} {p} ({e.strerror}): the pairs in it are not read"


def _skipped_children(p: Path, rel: str = "", *, used: tuple[Path, ...] | None = None,
                      where: str = "") -> list[tuple[str, str]]:
    """(relative path, reason) of the entries of ``p`` that are not input: hidden and
    symlinked entries (never followed) and, when ``used`` lists the folders the layout reads
    here, every other file or folder (``where`` says where input belongs)."""
    out = []
    try:
        children = sorted(p.iterdir())
    except OSError:
        return out
    for c in children:
        r = f"{rel}/{c.name}" if rel else c.name
        if c.name.startswith(".") and not _excluded(c):
            out.append((r, "hidden file or folder skipped (names starting with '.' are not input)"))
        elif c.is_symlink() and c.is_dir():
            out.append((r, "symlinked folder not followed"))
        elif used is not None and c not in used and not _excluded(c):
            out.append((r, f"not input: {where} (skipped)"))
    return out


def _find_child(children: list[Path], names: tuple[str, ...]) -> Path | None:
    return next((c for c in children if c.name.lower() in names), None)


def _files(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """All non-hidden files under ``root`` as sorted ``/``-relative paths, and the
    (path, reason) of every entry skipped: hidden files and folders, symlinked folders (not
    followed), symlinked files that resolve outside ``root``. The excluded output folder is
    left out silently (it is not input)."""
    out, skipped = [], []
    if isinstance(root, sources.VPath):  # archive members: no symlinks (rejected when read)
        for f in root.files():
            hidden = any(part.startswith(".") for part in f.split("/"))
            (skipped.append((f, "hidden file skipped (names starting with '.' are not input)")) if hidden
             else out.append(f))
        return out, skipped

    def unreadable(e: OSError) -> None:  # os.walk skips a folder it cannot list: say so
        rel = os.path.relpath(e.filename, root).replace(os.sep, "/")
        skipped.append((rel, f"{_UNREADABLE} ({e.strerror}): the files in it are not read"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")

        def r(name: str) -> str:
            return name if rel == "." else f"{rel}/{name}"

        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            if _excluded(full):
                continue
            if d.startswith("."):
                skipped.append((r(d), "hidden folder skipped (names starting with '.' are not input)"))
            elif os.path.islink(full):
                skipped.append((r(d), "symlinked folder not followed"))
            else:
                keep.append(d)
        dirnames[:] = keep
        for name in filenames:
            if name.startswith("."):
                skipped.append((r(name), "hidden file skipped (names starting with '.' are not input)"))
            elif os.path.islink(os.path.join(dirpath, name)) and not inside(root, os.path.join(dirpath, name)):
                skipped.append((r(name), f"symlink to a file outside {root} (not followed)"))
            else:
                out.append(r(name))
    return sorted(out), sorted(skipped)


_UNREADABLE = "unreadable folder"


def _within(stem: str, folders: list[str]) -> str | None:
    """The folder of ``folders`` (relative, ``.`` = the top) that holds ``stem``, or None."""
    return next((d for d in folders if d == "." or stem.startswith(d.rstrip("/") + "/")), None)


def _stem(rel: str) -> str:
    head, _, name = rel.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{head}/{stem}" if head else stem


def _pair_dirs(lq_dir: Path, gt_dir: Path, *, base: Path, split: str, origin: str,
               deg_of: Callable[[str], tuple[str | None, str | None]]) -> Iterator[Record]:
    """Pair files under ``lq_dir`` and ``gt_dir`` by relative stem (extension-agnostic).

    ``deg_of(relative_path_under_lq)`` returns (name, error). Paths in records are relative
    to ``base``.
    """
    (lq_files, lq_skip), (gt_files, gt_skip) = _files(lq_dir), _files(gt_dir)
    lq_pre = lq_dir.relative_to(base).as_posix()
    gt_pre = gt_dir.relative_to(base).as_posix()
    for rel, reason in lq_skip:
        yield Reject(normalise(f"{lq_pre}/{rel}"), None, split, None, reason, origin)
    for rel, reason in gt_skip:
        yield Reject(None, normalise(f"{gt_pre}/{rel}"), split, None, reason, origin)
    # Folders that could not be listed: a file whose partner would be in one is not "missing".
    lq_bad, gt_bad = ([r for r, why in skip if why.startswith(_UNREADABLE)] for skip in (lq_skip, gt_skip))
    if not lq_files and not gt_files and not (lq_bad or gt_bad):
        yield Reject(lq_pre, gt_pre, split, None, f"empty folder: no files in {lq_dir} or {gt_dir}", origin)
        return
    gt_by_stem: dict[str, list[str]] = {}
    for g in gt_files:
        gt_by_stem.setdefault(_stem(g), []).append(g)
    lq_seen: dict[str, str] = {}
    for rel in lq_files:
        stem = _stem(rel)
        lq_rel = f"{lq_pre}/{rel}"
        deg, err = deg_of(rel)
        gts = gt_by_stem.get(stem, [])
        if stem in lq_seen:
            yield Reject(lq_rel, None, split, deg,
                         f"duplicate pair: LQ {lq_rel} has the same stem as {lq_pre}/{lq_seen[stem]}", origin)
            continue
        lq_seen[stem] = rel
        if not gts:
            bad = _within(stem, gt_bad)
            yield Reject(lq_rel, None, split, deg, f"missing partner: no GT file {gt_pre}/{stem}.* for LQ {lq_rel}"
                         + (f" (the folder {normalise(f'{gt_pre}/{bad}')} is unreadable)" if bad else ""), origin)
            continue
        # The first (sorted) GT of a stem pairs; any others are rejected as duplicates below.
        gt_rel = f"{gt_pre}/{gts[0]}"
        if err:
            yield Reject(lq_rel, gt_rel, split, None, err, origin)
            continue
        yield PairSpec(join_path(base, lq_rel), join_path(base, gt_rel), lq_rel, gt_rel, deg, split, origin)
    for stem, gts in gt_by_stem.items():
        for i, g in enumerate(gts):
            g_rel = f"{gt_pre}/{g}"
            if stem in lq_seen and i > 0:
                yield Reject(None, g_rel, split, None,
                             f"duplicate pair: GT {g_rel} has the same stem as {gt_pre}/{gts[0]}", origin)
            elif stem not in lq_seen:
                bad = _within(stem, lq_bad)
                yield Reject(None, g_rel, split, None, f"missing partner: no LQ file {lq_pre}/{stem}.* for GT {g_rel}"
                             + (f" (the folder {normalise(f'{lq_pre}/{bad}')} is unreadable)" if bad else ""), origin)


# ---------------------------------------------------------------- layouts
def _iter_test(root: Path, *, split, forced, data_root, mapping) -> Iterator[Record]:
    # The release's training root (MillionIRData/Train, docs/release.md, "Data") has the same
    # <Type>/{GT,LQ} shape as its test set; its pairs are training pairs.
    split = split or ("train" if root.resolve().name.lower() == "train" else "test")
    if not root.is_dir():
        raise IngestError(f"{root}: not a folder (test layout expects NNName/{{GT,LQ}}/)")
    subs = _subdirs(root)
    for rel, reason in _skipped_children(root, used=tuple(subs), where="files belong in NNName/LQ/ and NNName/GT/"):
        yield Reject(rel, None, split, None, reason, str(root))
    for sub in subs:
        why = _unreadable(sub)
        if why is not None:
            yield Reject(sub.name, None, split, None, why, str(sub))
            continue
        kids = _subdirs(sub)
        pair = tuple(k for k in (_find_child(kids, LQ_NAMES), _find_child(kids, GT_NAMES)) if k is not None)
        used = pair if len(pair) == 2 else tuple(kids)  # an incomplete folder is one reject below
        for rel, reason in _skipped_children(sub, sub.name, used=used, where="files belong in LQ/ and GT/"):
            yield Reject(rel, None, split, None, reason, str(sub))
        kids = _subdirs(sub)
        lq, gt = _find_child(kids, LQ_NAMES), _find_child(kids, GT_NAMES)
        if lq is None or gt is None:
            yield Reject(sub.name, None, split, None,
                         f"{sub}: expected LQ/ and GT/ subfolders (release test layout)", str(sub))
            continue
        deg, err = (forced, None) if forced else parse_deg(sub.name, mapping)
        yield from _pair_dirs(lq, gt, base=root, split=split, origin=str(sub),
                              deg_of=lambda rel, d=deg, e=err: (d, e))


def _iter_folder(root: Path, *, split, forced, data_root, mapping) -> Iterator[Record]:
    split = split or "train"
    kids = _subdirs(root)
    lq, gt = _find_child(kids, LQ_NAMES), _find_child(kids, GT_NAMES)
    if lq is None or gt is None:
        raise IngestError(f"{root}: a paired folder needs lq/ and gt/ subfolders")
    for rel, reason in _skipped_children(root, used=(lq, gt), where=f"pairs belong in {lq.name}/ and {gt.name}/"):
        yield Reject(rel, None, split, None, reason, str(root))

    def deg_of(rel: str) -> tuple[str | None, str | None]:
        if forced:
            return forced, None
        if "/" not in rel:
            return None, (f"no degradation for {lq.name}/{rel}: put it in a degradation subfolder "
                          f"({lq.name}/Blur/...) or pass --degradation NAME")
        return parse_deg(rel.split("/", 1)[0], mapping)

    yield from _pair_dirs(lq, gt, base=root, split=split, origin=str(root), deg_of=deg_of)
