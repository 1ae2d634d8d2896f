"""Sizes a model file claims, bounded before anything is allocated.

docs/inference.md ("What is checked in a model file"). A checkpoint, an export or a release
file is read in three checked steps, each failing with one line that names the file:

1. **The file** (:func:`check_torch_file`, :func:`check_safetensors_file`): not empty, no
   larger than the free memory, and for ``torch.save`` archives (zip files) every member
   stored uncompressed inside the file, as ``torch.save`` writes them; so ``torch.load``
   (always ``weights_only=True``, :func:`load_torch`) allocates no more than the file's size.
   Files of the pre-1.6 ``torch.save`` format (not zip) are refused: their header sizes cannot
   be checked before the loader allocates them.
2. **The stored config against the stored weights** (:func:`check_fits`): the network is
   built on PyTorch's ``meta`` device (shapes only, no memory), with the number of tensors it
   may create bounded by the number stored, and every key and shape is compared with the
   weights before the real network is built; a config that claims a huge width is refused
   here instead of allocating it.
3. **The network against the memory budget**: :func:`check_fits` returns the bytes the real
   network will hold, which ``checkpoint.load_generalist`` compares with ``--max-memory`` (or
   the default budget) before building it.
"""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.nn.modules import module as _module

from foundir_data.errors import FoundIRError, one_line
from foundir_model.memory import format_size, free_memory

#: Tensors (and modules) a meta build may create per stored tensor before it is stopped.
_BUILD_FACTOR, _BUILD_SLACK = 4, 64
#: Keys named in a mismatch message.
_SHOWN = 3


class ModelFileError(FoundIRError, ValueError):
    """A model file whose sizes, layout or config cannot be used; the message names the file."""


def read_limit(max_bytes: int | None = None) -> int:
    """The most bytes a model file may bring into memory: ``max_bytes``, else the free RAM."""
    return int(max_bytes) if max_bytes else free_memory("cpu")


def _check_size(path: Path, limit: int, error: type[Exception]) -> int:
    if not path.is_file():  # a FIFO or device is never opened
        raise error(f"{path}: {'not a regular file' if path.exists() else 'file not found'}")
    size = path.stat().st_size
    if size == 0:
        raise error(f"{path}: empty file (0 bytes); not a model file (an interrupted download or copy?)")
    if size > limit:
        raise error(f"{path}: {format_size(size)}, more than the {format_size(limit)} of memory available to read "
                    "it; free memory or use a smaller file")
    return size


def check_torch_file(path: str | os.PathLike, limit: int | None = None,
                     error: type[Exception] = ModelFileError) -> None:
    """Check a ``torch.save`` file before ``torch.load`` allocates anything (module docstring, 1).

    Raises:
        error: empty, too large, not a zip archive, or a member that is compressed or claims
            bytes past the end of the file.
    """
    path = Path(path)
    size = _check_size(path, read_limit(limit), error)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise error(f"{path}: cannot read: not a torch.save archive ({one_line(e)[:120]}); the file is corrupted "
                    "or truncated, or not a model file (files of torch before 1.6 must be re-saved with a newer "
                    "torch)") from None
    for i in infos:
        if i.compress_type != zipfile.ZIP_STORED or i.file_size != i.compress_size:
            raise error(f"{path}: member {i.filename!r} is compressed; torch.save never compresses, so this is "
                        "not a file it wrote")
        if i.header_offset + i.compress_size > size:
            raise error(f"{path}: member {i.filename!r} claims {format_size(i.file_size)}, past the end of the "
                        f"{format_size(size)} file; the file is truncated or damaged")


def load_torch(path: str | os.PathLike, error: type[Exception] = ModelFileError, limit: int | None = None,
               what: str = "model file", map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` after :func:`check_torch_file`.

    Raises:
        error: the file fails the checks or cannot be unpickled (one line, never a traceback).
    """
    check_torch_file(path, limit, error)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - zip/pickle errors of a damaged or foreign file are one user error
        raise error(f"{path}: cannot read {what} ({type(e).__name__}: {one_line(e)[:200]}); the file is "
                    "corrupted or truncated, or holds objects that are not plain tensors and containers") from None


def check_safetensors_file(path: str | os.PathLike, limit: int | None = None,
                           error: type[Exception] = ModelFileError) -> None:
    """Check a safetensors file's size (the library checks its header's offsets against it).

    Raises:
        error: missing, empty or larger than the free memory.
    """
    _check_size(Path(path), read_limit(limit), error)


def check_weights(weights: Any, where: str, error: type[Exception] = ModelFileError) -> dict[str, torch.Tensor]:
    """``weights`` as a state dict: a dict of name -> tensor (anything else is refused)."""
    if not isinstance(weights, Mapping) or not weights:
        raise error(f"{where}: holds no weights (expected a dict of name -> tensor, found "
                    f"{type(weights).__name__ if not isinstance(weights, Mapping) else 'an empty dict'})")
    bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise error(f"{where}: {len(bad)} weights are not named tensors (first: {str(bad[0])[:80]!r})")
    return dict(weights)


class _TooMany(FoundIRError):
    """A meta build past its tensor bound (internal: :func:`check_fits` turns it into one line)."""


def meta_build(build: Callable[[], nn.Module], max_tensors: int) -> nn.Module:
    """``build()`` on the ``meta`` device (no memory), stopped once it registers more than
    ``max_tensors`` parameters, buffers and modules (a config claiming thousands of layers).

    Raises:
        _TooMany: past ``max_tensors``; any error of ``build``.
    """
    me, count = threading.get_ident(), [0]

    def hook(*_: Any) -> None:
        if threading.get_ident() == me:  # other threads build their own modules undisturbed
            count[0] += 1
            if count[0] > max_tensors:
                raise _TooMany
    handles = [_module.register_module_parameter_registration_hook(hook),
               _module.register_module_buffer_registration_hook(hook),
               _module.register_module_module_registration_hook(hook)]
    try:
        with torch.device("meta"):
            return build()
    finally:
        for h in handles:
            h.remove()


def check_fits(build: Callable[[], nn.Module], weights: Any, where: str, what: str = "network",
               error: type[Exception] = ModelFileError, config: str = "the stored config") -> int:
    """Check that the module ``build`` makes from a config has exactly the keys and shapes of
    ``weights``, without allocating it (module docstring, 2).

    Args:
        build: Makes the module from the config (called on the ``meta`` device).
        weights: The stored state dict.
        where: The file (and part) named in errors.
        what: The network's name in errors (``unet``, ``restormer``).
        error: The exception class raised.
        config: Where the config came from, in errors.

    Returns:
        The bytes of the real module's state (parameters and buffers).

    Raises:
        error: naming ``where``, ``what`` and the first differences.
    """
    weights = check_weights(weights, where, error)
    try:
        module = meta_build(build, _BUILD_FACTOR * len(weights) + _BUILD_SLACK)
    except _TooMany:
        raise error(f"{where}: a {what} of {config} has far more than the {len(weights)} tensors stored; "
                    "the config does not belong to these weights") from None
    except Exception as e:  # noqa: BLE001 - any failure to build from a stored config is the file's fault
        raise error(f"{where}: no {what} can be built from {config} ({type(e).__name__}: "
                    f"{one_line(e)[:200]})") from None
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    if missing or extra or shapes:
        parts = [f"{len(shapes)} shapes differ (stored vs config: {'; '.join(shapes[:_SHOWN])})" if shapes else "",
                 f"{len(missing)} missing ({', '.join(missing[:_SHOWN])})" if missing else "",
                 f"{len(extra)} unexpected ({', '.join(extra[:_SHOWN])})" if extra else ""]
        raise error(f"{where}: weights do not fit a {what} of {config}: {', '.join(p for p in parts if p)}")
    return sum(v.numel() * v.element_size() for v in expected.values())


__all__ = ["ModelFileError", "read_limit", "check_torch_file", "load_torch", "check_safetensors_file",
           "check_weights", "meta_build", "check_fits"]
