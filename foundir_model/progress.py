"""Progress bars of ``foundir-restore`` and ``foundir-eval``: images, and tiles with an ETA.

One bar counts images; a second counts tiles, over the whole run when every image's size is
known before starting (``foundir-restore`` reads the sizes from the file headers), else over
the current image (``foundir-eval`` reads pairs as it goes). Bars go to stderr, so the lines
printed per image (``tqdm.write``) and the report on stdout stay clean.
"""

from __future__ import annotations

import sys
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


class Bars:
    """An images bar and a tiles bar.

    Args:
        images: Number of images.
        tiles: Tiles of the whole run when known (one ETA for all), else None (per image).
        enabled: False makes every method a no-op (``--no-progress``).
    """

    def __init__(self, images: int, tiles: int | None = None, enabled: bool = True):
        self.enabled = enabled
        self.per_image = tiles is None
        self._base = self._last = 0
        self._open = False
        if not enabled:
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
            return lambda done, total: None
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
            self.images.update(1)

    def write(self, line: str, file=None) -> None:
        """Print a line without breaking the bars."""
        if self.enabled:
            self._tqdm.write(line, file=file or sys.stdout)
        else:
            print(line, file=file or sys.stdout)

    def close(self) -> None:
        """Count the last image and close both bars."""
        if self.enabled:
            self._finish()
            self.tiles.close()
            self.images.close()


__all__ = ["Bars", "header_size"]
