"""What ``pack`` and ``merge`` may write, and who may write it: the output-folder rules.

* **Only our folders** (docs/packing.md, "Output folder"): pack writes into a folder that is
  new, empty, or one of its own packs (it holds ``index/parts/_plan.json``, or only the lock
  file of a pack killed before it wrote anything): the rule of every command's output folder,
  ``foundir_data.output.output_dir``. Any other non-empty folder is refused
  with a list of what is there, unless ``--force``; the source itself is never an output.
* **One writer**: a lock file ``.foundir-pack.lock`` in the output folder, held with
  ``flock`` for the whole run: exclusive for a single-job pack and for merge, shared by the
  jobs of a multi-job pack (which write disjoint shards by design). A second writer waits
  up to ``LOCK_WAIT`` seconds, then is refused with exit status 3, naming the process that
  holds the folder. An
  exclusive holder removes the file when it finishes, so a finished pack holds none.
* **No leftovers**: temporary ``*.tmp-<pid>`` files of an interrupted run (shards, parts,
  index, manifest, card) are removed by the next run that holds the folder exclusively.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from foundir_data import format as fmt
from foundir_data.output import output_dir
from foundir_data.errors import BusyError, OutputFolderError

LOCK_FILE = ".foundir-pack.lock"
#: Seconds a second writer waits for the lock before it gives up: long enough for the
#: workers of a killed pack (which share its lock through fork) to finish dying.
LOCK_WAIT = 5.0
#: (lock path, pid) of the locks this process holds: flock is per open file, so taking the
#: same lock again in one process would refuse itself.
_HELD: set[tuple[str, int]] = set()
PLAN_FILE = f"{fmt.INDEX_PARTS_DIR}/_plan.json"
#: The ingest-level rejects job 0 writes for merge.
INGEST_REJECTS_PART = f"{fmt.INDEX_PARTS_DIR}/_ingest.rejects.jsonl"


def is_own_pack(out: Path) -> bool:
    """Whether ``out`` is missing, empty, or a folder pack wrote (see the module docstring):
    the ownership rule of every output folder (``foundir_data.output.output_dir``), with the plan file
    as the sign of a pack."""
    return output_dir.is_ours(out, "pack", signs=(PLAN_FILE,), ignore=(LOCK_FILE,))


def check_output(out: Path, source: Path, *, force: bool = False) -> None:
    """Refuse an output folder that is not ours (or is the source) before anything is written.

    Raises:
        OutputFolderError: ``out`` is a file, the source folder itself, or a non-empty folder
            that is not a pack (without ``force``).
    """
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out}: exists and is not a folder; choose a new output folder")
    if os.path.realpath(out) == os.path.realpath(source):
        raise OutputFolderError(f"{out}: is the source folder itself; pack into a new folder (it may lie "
                                "inside the source: pack leaves it out of the input)")
    if not force and not is_own_pack(out):
        raise OutputFolderError(
            f"{out}: not empty and not a foundir pack (it holds {output_dir.describe(out)}); pack would overwrite "
            "README.md, manifest.json and same-named files there. Choose a new or empty folder, "
            "or pass --force to pack into it anyway")


@contextmanager
def writer_lock(out: Path, *, shared: bool = False, wait: float = LOCK_WAIT) -> Iterator[None]:
    """Hold ``out``'s lock file for the duration (see the module docstring).

    Raises:
        BusyError: another pack or merge holds the folder.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    key = (os.path.realpath(path), os.getpid())
    if key in _HELD:  # this process holds it already (pack -> merge -> tiles -> merge)
        yield
        return
    fd = _acquire(out, path, shared, wait)
    _HELD.add(key)
    try:
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
        if not shared:  # a finished folder carries no lock file (push, verify see only the pack)
            path.unlink(missing_ok=True)
    finally:
        _HELD.discard(key)
        os.close(fd)  # releases the lock


def _acquire(out: Path, path: Path, shared: bool, wait: float) -> int:
    """An open descriptor of ``path`` holding the flock; retried when the file was removed
    (by the previous holder, on finishing) between our open and our flock, and for up to
    ``wait`` seconds while another process holds it."""
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            raise BusyError(f"{out}: another pack or merge (pid {holder}) is writing this folder; "
                            "wait for it to finish, or stop it and rerun") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            return fd  # a filesystem without flock (some network mounts): run unlocked, as before
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def remove_temps(out: Path) -> int:
    """Delete every ``*.tmp-<pid>`` file under ``out`` (call only while holding the folder
    exclusively); returns how many were removed."""
    n = 0
    for p in out.rglob("*.tmp-*"):
        if p.is_file() and p.name.rsplit(".tmp-", 1)[-1].isdigit():
            p.unlink(missing_ok=True)
            n += 1
    return n
