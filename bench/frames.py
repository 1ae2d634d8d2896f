"""Camera-like benchmark frames: real photos at native resolution, mosaicked to the release's
average frame size (2514x1516; docs/release.md) or any other.

Upscaled photos are smoother than camera frames (every codec compresses them better and
decodes them faster than it would the release's frames), so ``bench/tiles.py`` builds its
frames from the photos bundled with scikit-image at their *native* pixels: each frame is a
seeded mosaic of randomly flipped/rotated photos and crops of them (no resampling), with a
light sensor noise (sigma 2) on the GT, as a real capture has. LQs are the GT with Gaussian
noise (sigma 10-20, the "Noise" type) or a Gaussian blur plus light noise ("Blur"), the two
degradations whose LQs are stored losslessly in the release. Frames are stored as PNG at
Pillow's default zlib level (6), as most tools write them, in the release's list layout
(``make_sample(layout="list")`` names), so ``shard_tools pack`` packs them unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from foundir_data.sample import LIST_FILE, make_sample, photo_dir

#: The release's average frame size (docs/release.md, "Generalist model").
WIDTH, HEIGHT = 2514, 1516
#: Colour photos of scikit-image's data folder (CC0 / public domain), used at native size.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "ihc.png", "motorcycle_left.png",
          "motorcycle_right.png", "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg", "color.png")


def _photos() -> list[np.ndarray]:
    out = []
    for name in PHOTOS:
        with Image.open(photo_dir() / name) as im:
            out.append(np.asarray(im.convert("RGB")))
    return out


def mosaic(rng: np.random.Generator, photos: list[np.ndarray], width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """One frame: shelves of native-resolution photo pieces, left to right, top to bottom."""
    frame = np.empty((height, width, 3), np.uint8)
    y = 0
    while y < height:
        shelf = int(rng.integers(300, 600))
        h = min(shelf, height - y)
        x = 0
        while x < width:
            p = photos[int(rng.integers(len(photos)))]
            p = np.rot90(p, int(rng.integers(4)))
            if rng.random() < 0.5:
                p = p[:, ::-1]
            ph, pw = p.shape[:2]
            th, tw = min(h, ph), min(width - x, pw, int(rng.integers(250, 800)))
            oy, ox = int(rng.integers(ph - th + 1)), int(rng.integers(pw - tw + 1))
            frame[y:y + th, x:x + tw] = p[oy:oy + th, ox:ox + tw]
            if th < h:  # photo shorter than the shelf: repeat it mirrored below
                rest = h - th
                frame[y + th:y + h, x:x + tw] = np.resize(p[oy:oy + th, ox:ox + tw][::-1], (rest, tw, 3))
            x += tw
        y += h
    noise = rng.normal(0, 2, frame.shape)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


def degrade(gt: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The LQ of ``gt``: ``Noise`` (sigma 10-20) or ``Blur`` (Gaussian 1.5-2.5 px + sigma 3 noise)."""
    if kind == "Blur":
        x = np.asarray(Image.fromarray(gt).filter(ImageFilter.GaussianBlur(1.5 + rng.random())), np.float32)
        sigma = 3.0
    else:
        x, sigma = gt.astype(np.float32), 10 + 10 * rng.random()
    return np.clip(x + rng.normal(0, sigma, gt.shape), 0, 255).astype(np.uint8)


def build_frames(root: Path, pairs: int, seed: int = 0, width: int = WIDTH, height: int = HEIGHT) -> list:
    """Write ``pairs`` camera-like ``width`` x ``height`` LQ/GT PNG pairs (half Blur, half Noise)
    in the list layout under ``root``; returns ``make_sample``'s pair records."""
    per_type = max(1, pairs // 2)
    recs = make_sample(root, per_type=per_type, size=64, layout="list", types=("Blur", "Noise"), seed=seed)
    photos = _photos()
    rng = np.random.default_rng(seed)
    for rec in recs:
        gt = mosaic(rng, photos, width, height)
        lq = degrade(gt, rec.degradation, rng)
        for rel, arr in ((rec.gt, gt), (rec.lq, lq)):
            Image.fromarray(arr).save(root / rel, "PNG")  # Pillow's default level (6)
    assert (root / LIST_FILE).exists()
    return recs
