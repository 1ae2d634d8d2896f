"""Building one planned shard: :func:`build_shard` reads, probes and hashes each pair on a
loader thread and writes the shard's tar (``writer.TarShardWriter``), then its index part
(``parts.write_part``), which marks the shard done (:mod:`shard_tools.pack.parts`). The plan's
data types are :mod:`shard_tools.pack.plan`.
"""

from __future__ import annotations

import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import xxhash

from foundir_data import format as fmt
from foundir_data import taxonomy
from shard_tools.pack import out_store
from shard_tools.ingest import sources
from shard_tools.pack.probe import BadImage, check_pair, probe_image
from shard_tools.pack.parts import write_part
from shard_tools.pack.plan import PackError, PlannedShard
from shard_tools.pack.writer import TarShardWriter, add_sample


@dataclass
class ShardResult:
    path: str
    count: int
    rejected: int
    bytes_in: int


def build_shard(out: str, shard: PlannedShard, full_decode: bool = False, strict: bool = False,
                fsync: bool = True, on_pair: Callable[[int], None] | None = None) -> ShardResult:
    """Build one planned shard: its tar, then its index part (the done marker).

    Runs in a worker process (or on one of ``--workers 1``'s two shard threads); holds at
    most two pairs' bytes at a time (the loader thread reads the next pair while this one
    is written).

    Args:
        out: The pack's output folder, or a store URL (``shard_tools.pack.out_store``).
        shard: The planned shard.
        full_decode: Decode every image to check it (``probe_image``).
        strict: Raise at the first bad pair instead of recording it as rejected.
        fsync: Flush the tar to disk before renaming it into place and writing the part.
        on_pair: Called with the bytes read after each pair (progress).

    Raises:
        PackError: with ``strict``, at the first bad pair (no file of this shard is left).
    """
    root = Path(out)
    remote = out_store.open_out(out) if out_store.is_remote(out) else None  # s3://...: out_store.py
    t = taxonomy.get(shard.degradation)
    rows: list[dict] = []
    rejects: list[dict] = []
    bytes_in = 0
    writer: TarShardWriter | None = None
    # A loader thread reads, checks and hashes the next pair while this thread writes the
    # current one (file reads, zlib.crc32 and sha256 release the GIL), so at most two pairs'
    # bytes are held at a time.
    loader = ThreadPoolExecutor(1, thread_name_prefix="pack-loader")
    try:
        pairs = shard.pairs
        nxt = loader.submit(_load_pair, *shard.local_paths(pairs[0]), full_decode) if pairs else None
        for i, pair in enumerate(pairs):
            _, lq_rel, gt_rel, key, _, _, origin = pair
            lq, gt, li, gi, reason, lq_sha, gt_sha = nxt.result()
            if i + 1 < len(pairs):
                nxt = loader.submit(_load_pair, *shard.local_paths(pairs[i + 1]), full_decode)
            bytes_in += len(lq) + len(gt)
            if on_pair is not None:
                on_pair(len(lq) + len(gt))
            if reason is not None:
                if strict:
                    raise PackError(reason)
                rejects.append({"lq": lq_rel, "gt": gt_rel, "split": shard.split, "degradation": shard.degradation,
                                "reason": reason, "origin": origin})
                continue
            if writer is None:
                writer = (remote.tar_writer(shard.path) if remote else
                          TarShardWriter(root / shard.path, fsync=fsync)).__enter__()
            row = {
                "key": key, "split": shard.split, "degradation": t.name, "degradation_id": t.index,
                "cls": t.cls, **t.flags(), "layout": fmt.LAYOUT_FULL,
                "lq_source": lq_rel, "gt_source": gt_rel, "shard": shard.path, "sample_index": len(rows),
                "lq_width": li.width, "lq_height": li.height, "gt_width": gi.width, "gt_height": gi.height,
                "lq_format": li.format, "gt_format": gi.format,
                "lq_sha256": lq_sha, "gt_sha256": gt_sha,
                "lq_xxh3": xxhash.xxh3_128_hexdigest(lq), "gt_xxh3": xxhash.xxh3_128_hexdigest(gt),
                # Camera settings: the LQ's EXIF first (the degraded capture), else the GT's.
                **{f: getattr(li, f) if getattr(li, f) is not None else getattr(gi, f)
                   for f in ("iso", "exposure_time", "f_number", "camera_model")},
            }
            rows.append(add_sample(writer, row, lq, gt))
        if writer is not None:
            w, writer = writer, None
            w.__exit__(None, None, None)
            info = fmt.ShardInfo(shard.path, shard.split, shard.degradation, fmt.LAYOUT_FULL, len(rows), w.bytes, w.sha256)
        else:
            # Every pair was rejected: no tar, but still a (empty) part so the shard is done.
            remote.remove(shard.path) if remote else (root / shard.path).unlink(missing_ok=True)
            info = fmt.ShardInfo(shard.path, shard.split, shard.degradation, fmt.LAYOUT_FULL, 0, 0, "")
    except BaseException:
        if writer is not None:
            writer.__exit__(*sys.exc_info())
        raise
    finally:
        loader.shutdown(wait=True, cancel_futures=True)
    # The part is not fsynced: after a power loss a lost or torn part only makes is_done()
    # false and the shard is rebuilt; the tar it describes was fsynced before it was written.
    if remote:
        remote.put_part(shard.part, rows, info, rejects)
    else:
        write_part(root / shard.part, rows, info, rejects, sync_dir=False, fsync=False)
    return ShardResult(shard.path, len(rows), len(rejects), bytes_in)


def _load_pair(lq_path: str, gt_path: str, full_decode: bool):
    """Read, probe and hash a pair (runs on the loader thread).

    Returns:
        (lq bytes, gt bytes, lq info, gt info, reject reason or None, lq sha256, gt sha256);
        the hashes are None for a rejected pair.
    """
    lq = gt = b""
    try:
        lq, gt = sources.read_bytes(lq_path), sources.read_bytes(gt_path)
        li = probe_image(lq, lq_path, full_decode)
        gi = probe_image(gt, gt_path, full_decode)
    except BadImage as e:
        return lq, gt, None, None, str(e), None, None
    except OSError as e:
        # A remote read's error (errors.ShardError) names its URL in its text, not in .filename.
        reason = f"unreadable file: {e.filename} ({e.strerror})" if e.filename else f"unreadable file: {e}"
        return lq, gt, None, None, reason, None, None
    try:
        check_pair(li, gi, lq_path, gt_path)  # pixel-aligned pairs have one size
    except BadImage as e:
        return lq, gt, li, gi, str(e), None, None
    return lq, gt, li, gi, None, hashlib.sha256(lq).hexdigest(), hashlib.sha256(gt).hexdigest()
