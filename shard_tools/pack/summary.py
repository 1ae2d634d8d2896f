"""End-of-command summaries that say what happened: counts with correct plurals, rejects
grouped by reason with one example file each and the fix.

``pack`` used to end with "12 input pair(s) rejected; reasons in rejects.jsonl", which left the
user to open the file to learn that every pair lacked a degradation folder. The reasons are
written by ``shard_tools.ingest.layouts``, ``shard_tools.pack.packer`` and ``shard_tools.pack.build``; this module
only sorts them into kinds (by their fixed leading words, see :data:`KINDS`) and prints them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["plural", "RejectKind", "KINDS", "kind_of", "RejectGroup", "group_rejects", "format_rejects",
           "read_rejects"]


def plural(n: int, word: str, many: str | None = None) -> str:
    """``plural(1, "shard")`` -> ``"1 shard"``; ``plural(3, "shard")`` -> ``"3 shards"``;
    ``plural(2, "pair", "pairs")``; thousands separated (``"1,200 pairs"``)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


@dataclass(frozen=True)
class RejectKind:
    """One kind of reject: how to recognise its reason text, a short name and the fix."""

    name: str
    pattern: str  # regular expression searched in the reason
    fix: str


#: Reject kinds in match order (first match wins). The patterns follow the wording of the
#: reasons in ``shard_tools/ingest/layouts.py``, ``ingest_manifest.py``, ``pack.py``, ``build.py`` and
#: ``probe.py``; ``tests/test_summary.py`` packs real bad inputs to keep them in step.
KINDS: tuple[RejectKind, ...] = (
    # Zip sources (shard_tools/ingest/zips.py, sources.py): first, as their reasons may also
    # say "truncated" or "unreadable file".
    RejectKind("damaged or unsafe archive", r"^unreadable archive|in archive \S+\)$|^member path|"
               r"in the archive|^encrypted member|path found in two archives",
               "re-download the archive (damaged or cut short), or repack it with relative member paths, "
               "each file in one archive only (docs/packing.md, \"Zip archives and object storage\")"),
    RejectKind("no degradation type", r"^no degradation for ",
               "put it in a degradation subfolder (lq/Blur/..., gt/Blur/...) or pass --degradation NAME"),
    RejectKind("unknown degradation type", r"unknown degradation|not one of the\s+20 FoundIR types|outside the release",
               "rename the folder to a FoundIR type, or map it: --map TOKEN=TYPE (`shard_tools pack --help`)"),
    RejectKind("missing partner", r"^missing partner",
               "add the missing LQ or GT file (same name stem), or remove the unpaired one"),
    RejectKind("duplicate pair", r"^duplicate pair",
               "keep one file per name stem (e.g. not both 0001.png and 0001.jpg)"),
    RejectKind("LQ/GT size mismatch", r"size mismatch",
               "LQ and GT must be aligned captures of the same size: check the pairing"),
    RejectKind("not an image", r"not an image|empty file|zero-size",
               "remove the file, or replace it with the image it should be"),
    RejectKind("damaged image", r"truncated|corrupt|cannot decode|unreadable image header|too large",
               "re-copy or re-download the file (it is incomplete or damaged)"),
    RejectKind("unreadable file", r"^unreadable file",
               "check the file's permissions and the disk"),
    RejectKind("bad folder or list row", r"^manifest row|unknown split|empty folder|expected LQ/ and GT/",
               "fix the listed row or folder (see docs/packing.md for the layouts)"),
)
_OTHER = RejectKind("other", "", "see the reason in the rejects file")


def kind_of(reason: str) -> RejectKind:
    """The :class:`RejectKind` of a reject reason (``other`` when no pattern matches)."""
    for k in KINDS:
        if re.search(k.pattern, reason):
            return k
    return _OTHER


@dataclass
class RejectGroup:
    """Rejects of one kind: how many, and the first one as the example."""

    kind: RejectKind
    count: int = 0
    example_file: str = ""
    example_reason: str = ""
    degradations: set[str] = field(default_factory=set)


def group_rejects(rejects: Iterable[Mapping]) -> list[RejectGroup]:
    """Group reject records (``rejects.jsonl`` rows: ``lq``, ``gt``, ``reason``, ...) by kind,
    largest group first (ties in :data:`KINDS` order)."""
    groups: dict[str, RejectGroup] = {}
    for r in rejects:
        reason = str(r.get("reason") or "")
        k = kind_of(reason)
        g = groups.setdefault(k.name, RejectGroup(k))
        g.count += 1
        if g.count == 1:
            g.example_file = _example_file(r, reason)
            g.example_reason = reason
    order = {k.name: i for i, k in enumerate((*KINDS, _OTHER))}
    return sorted(groups.values(), key=lambda g: (-g.count, order[g.kind.name]))


def _example_file(r: Mapping, reason: str) -> str:
    # The file the reason is about (a truncated GT names the GT), else the LQ, GT or origin.
    files = [str(r[k]) for k in ("lq", "gt") if r.get(k)]
    named = [f for f in files if f in reason]
    return (named or files or [str(r.get("origin") or "?")])[0]


def format_rejects(rejects: Iterable[Mapping], where: str | Path) -> str:
    """The rejects paragraph that ends ``pack``: one block per kind with count, an example
    file, its reason and the fix; ``""`` when nothing was rejected."""
    groups = group_rejects(rejects)
    total = sum(g.count for g in groups)
    if not total:
        return ""
    lines = [f"{plural(total, 'input pair')} rejected (all listed with their reasons in {where}):"]
    for g in groups:
        lines.append(f"  {plural(g.count, 'pair')}: {g.kind.name}, e.g. {g.example_file}")
        if g.example_reason and g.kind is not KINDS[0]:
            lines.append(f"      reason: {_short(g.example_reason)}")
        lines.append(f"      fix: {g.kind.fix}")
    return "\n".join(lines)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_rejects(path: str | Path) -> list[dict]:
    """The records of a ``rejects.jsonl`` (``[]`` when it does not exist)."""
    p = Path(path)
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
