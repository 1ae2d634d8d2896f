"""How much memory there is, and sizes as people write them: ``4G`` in, ``1.5 GiB`` out.

The free memory of a device (``MemAvailable`` within the container's cgroup limit on CPU, the
driver's figure on CUDA) bounds two things: a model file before it is loaded
(:mod:`foundir_model.model_bounds`) and the work of a restore, whose default budget is a share
of it (:mod:`foundir_model.restore.budget`, docs/inference.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

#: Share of the free memory used when no ``--max-memory`` is given (CPU / GPU). The CPU share
#: leaves room for the rest of the machine, page cache and the estimate's error.
DEFAULT_SHARE = {"cpu": 0.5, "cuda": 0.8}

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``"4G"``, ``"4GB"``, ``"4GiB"``, ``"512M"``, ``"1.5G"`` or plain bytes -> bytes (binary units).

    Raises:
        ValueError: for anything else.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"memory size {text!r}: expected a number with an optional unit K, M, G or T (e.g. 4G)")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"memory size {text!r} must be positive")
    return n


def format_size(n: float) -> str:
    """Bytes as ``1.5 GiB`` / ``300 MiB``."""
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _cgroup_free() -> int | None:
    # In a container the cgroup limit, not the host's RAM, is what the kernel enforces.
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            lim = Path(limit).read_text().strip()
            if lim == "max" or int(lim) >= 2**60:
                return None
            return max(0, int(lim) - int(Path(usage).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def free_memory(device: str | torch.device = "cpu") -> int:
    """Free bytes on ``device``: ``MemAvailable`` (and the cgroup's room) on CPU, the driver's
    free memory on CUDA."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0])
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:  # not Linux: total physical memory as the fallback
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            free = 8 * 2**30
    cg = _cgroup_free()
    return min(free, cg) if cg is not None else free


def default_budget(device: str | torch.device = "cpu") -> int:
    """The budget used without ``--max-memory``: :data:`DEFAULT_SHARE` of :func:`free_memory`."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    return int(free_memory(device) * DEFAULT_SHARE[kind])
