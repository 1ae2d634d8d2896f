"""Files written whole or not at all: a temporary sibling, fsync, then a rename.

Every writer of the three packages (pack, merge, tile, the dataset card, ``croissant.json``,
the resume records, restored images and result pages of ``foundir-restore``/``foundir-eval``,
an output folder's marker) writes its files through :func:`write_atomic`, so a killed run
never leaves a half file under a final name; a temporary a ``kill -9`` leaves behind is
``<name>.tmp-<pid>`` (pack removes them on resume, docs/packing.md). Two writers keep their
own way, for reasons of their own: a checkpoint is streamed by ``torch.save`` into a
``mkstemp`` file (it may not fit in memory twice), and the download cache names its
temporaries per thread (threads of one process fetch into it at once).
"""

from __future__ import annotations

import os
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes, sync_dir: bool = True, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via ``<path>.tmp-<pid>`` + fsync + rename.

    The temporary name carries the process id, so two writers never share one.

    Args:
        path: Final path (its folder is created).
        data: The bytes.
        sync_dir: Also fsync the folder so the rename itself survives a power loss (not
            needed for a shard's index part: losing it only means the shard is redone).
        fsync: Flush the file to disk before the rename (False: safe against a killed
            process, not against a power loss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir and fsync:
        _fsync_dir(path.parent)


__all__ = ["write_atomic"]
