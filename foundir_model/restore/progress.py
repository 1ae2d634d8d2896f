"""Progress bars of ``foundir-restore`` and ``foundir-eval``: images, and tiles with an ETA.

One bar counts images; a second counts tiles, over the whole run when every image's size is
known before starting (``foundir-restore`` reads the sizes from the file headers), else over
the current image (``foundir-eval`` reads pairs as it goes). Bars go to stderr, so the lines
printed per image (``tqdm.write``) and the report on stdout stay clean.

Bars are for a terminal: redirected to a file or a pipe (CI logs, ``nohup``, ``| tee``),
every redraw of a tqdm bar is a line of residue (``tiles: 0tile [00:00, ?tile/s]``). So the
``progress`` setting has three values (:func:`bars_wanted`): True draws bars (``--progress``),
None (the commands' default) draws them only when stderr is a terminal and otherwise prints
one summary line when the stage ends, and False prints nothing (``--no-progress``, and the
library default).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from PIL import Image
from tqdm import tqdm


def header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header (no decode), or None when unreadable (the
    decode reports the error when the image's turn comes)."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any failure is reported by the real decode later
        return None


def bars_wanted(progress: bool | None, stream=None) -> bool:
    """Whether to draw bars: ``progress`` when set, else whether ``stream`` (default
    ``sys.stderr``) is a terminal."""
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a terminal
        return False


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress`` (dest ``progress``, default None: bars on a terminal only)."""
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: only when stderr is a terminal; otherwise one summary line "
                             "per stage; --no-progress: neither)")


class Bars:
    """An images bar and a tiles bar.

    Args:
        images: Number of images.
        tiles: Tiles of the whole run when known (one ETA for all), else None (per image).
        enabled: True draws the bars; None draws them on a terminal and otherwise prints one
            summary line at the end (:func:`bars_wanted`); False makes every method a no-op.
        label: What the summary line calls the stage.
    """

    def __init__(self, images: int, tiles: int | None = None, enabled: bool | None = True, label: str = "restored"):
        self.summary = enabled is None and not bars_wanted(None)
        self.enabled = bars_wanted(enabled)
        self.per_image = tiles is None
        self._base = self._last = 0
        self._open = False
        self._label, self._t0, self._done = label, time.perf_counter(), 0
        if not self.enabled:
            return

        self._tqdm = tqdm
        self.images = tqdm(total=images, unit="img", desc="images", position=0, file=sys.stderr, dynamic_ncols=True)
        self.tiles = tqdm(total=tiles or 0, unit="tile", desc="tiles", position=1, leave=not self.per_image,
                          file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def image(self, name: str) -> Callable[[int, int], None]:
        """Start an image (the previous one counts as finished); returns the
        ``progress(done, total)`` callback of its tiles."""
        if not self.enabled:
            self._finish()
            self._open = True

            def count(done: int, total: int) -> None:
                self._last = total

            self._last = 0
            return count
        self._finish()
        self._open = True
        self.images.set_postfix_str(name, refresh=False)
        if self.per_image:
            self.tiles.reset(total=0)
        base = self._base

        def tick(done: int, total: int) -> None:
            if self.per_image and self.tiles.total != total:
                self.tiles.reset(total=total)
            self.tiles.update(base + done - self.tiles.n if not self.per_image else done - self.tiles.n)
            self._last = total

        self._last = 0
        return tick

    def _finish(self) -> None:
        if self._open:
            self._open = False
            self._base += self._last
            self._done += 1
            if self.enabled:
                self.images.update(1)

    def write(self, line: str, file=None) -> None:
        """Print a line without breaking the bars."""
        if self.enabled:
            self._tqdm.write(line, file=file or sys.stdout)
        else:
            print(line, file=file or sys.stdout)

    def close(self) -> None:
        """Count the last image and close both bars (or print the summary line)."""
        self._finish()
        if self.enabled:
            self.tiles.close()
            self.images.close()
        elif self.summary:
            self.summary = False  # once
            print(f"{self._label} {self._done} image{'s' if self._done != 1 else ''} ({self._base} tiles) in "
                  f"{time.perf_counter() - self._t0:.1f} s", file=sys.stderr, flush=True)


__all__ = ["Bars", "add_progress_flag", "bars_wanted", "header_size"]
