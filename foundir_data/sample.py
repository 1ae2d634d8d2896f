"""A small FoundIR-shaped sample built from real photos bundled with scikit-image (CC0).

Used by the quickstart and by the tests: no downloads. Each of the 20 degradation types
gets a few LQ/GT pairs made with simple, seeded degradations of the real photos, laid out
like the release (docs/release.md, "Data"), including its quirks: mixed extensions
(``png``, ``jpg``, ``JPG``), a ``.png`` file holding JPEG bytes, and EXIF camera fields.

Layouts:
    ``test``: ``<root>/NNName/{GT,LQ}/<id>.<ext>``, ids numbered across the whole set.
    ``list``: files under ``<root>/Train/<Name>/{GT,LQ}/`` plus the release's list file
    ``<root>/MillionIRData_train_meta_info.txt`` (``<gt>, <lq>`` per line, relative to
    ``<root>/Train``) and the isolated-only ``MillionIRData_single_train_meta_info.txt``.
"""

from __future__ import annotations

import argparse
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from foundir_data import taxonomy

#: Colour photos shipped inside scikit-image's package data (no fetch needed).
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "ihc.png", "motorcycle_left.png",
          "motorcycle_right.png", "rocket.jpg", "retina.jpg", "hubble_deep_field.jpg")

LIST_FILE = "MillionIRData_train_meta_info.txt"
SINGLE_LIST_FILE = "MillionIRData_single_train_meta_info.txt"

# EXIF tag ids (EXIF 2.3): Model, ExposureTime, FNumber, ISOSpeedRatings. The release's
# only camera is a SONY ILCE-7M3 (paper, section 3.1).
_EXIF_MODEL, _EXIF_EXPOSURE, _EXIF_FNUMBER, _EXIF_ISO, _EXIF_IFD = 0x0110, 0x829A, 0x829D, 0x8827, 0x8769


@dataclass(frozen=True)
class SamplePair:
    """One generated pair: paths relative to the sample root."""

    lq: str
    gt: str
    degradation: str
    split: str


#: The optional dependency that supplies the photos (``pip install foundir[demo]``).
DEMO_EXTRA = "demo"


def photo_dir() -> Path:
    """The folder of scikit-image's bundled photos.

    Raises:
        ImportError: scikit-image is not installed; the message names the extra to install.
    """
    try:
        import skimage  # optional dependency (the demo extra, ~200 MB): only the demo sample needs it
    except ImportError:
        raise ImportError(f"the FoundIR-shaped demo sample is made from photos bundled with scikit-image, "
                          f"which is not installed: pip install 'foundir[{DEMO_EXTRA}]' "
                          "(or pip install scikit-image)") from None
    return Path(skimage.__file__).parent / "data"


def load_photos(size: int = 256) -> list[np.ndarray]:
    """The bundled colour photos as uint8 RGB arrays, each resized so its long side is
    ``size`` (aspect kept, even dimensions)."""
    out = []
    for name in PHOTOS:
        with Image.open(photo_dir() / name) as im:
            im = im.convert("RGB")
            s = size / max(im.size)
            w, h = max(16, int(im.width * s) // 2 * 2), max(16, int(im.height * s) // 2 * 2)
            out.append(np.asarray(im.resize((w, h), Image.BICUBIC)))
    return out


def _blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1.5 + rng.random())))


def _noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(x + rng.normal(0, 12 + 8 * rng.random(), x.shape), 0, 255).astype(np.uint8)


def _jpeg(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=int(rng.integers(10, 30)))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _haze(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    t = 0.45 + 0.2 * rng.random()
    return np.clip(x * t + 225 * (1 - t), 0, 255).astype(np.uint8)


def _rain(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    streak = np.zeros((h, w), np.float32)
    ys, xs = rng.integers(0, h, 120), rng.integers(0, w, 120)
    for y, x0 in zip(ys, xs):
        for k in range(12):
            yy, xx = y + k, x0 + k // 4
            if yy < h and xx < w:
                streak[yy, xx] = 1.0
    return np.clip(x + 90 * streak[..., None], 0, 255).astype(np.uint8)


def _raindrop(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = x.shape[:2]
    blurred = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(4))).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w), bool)
    for _ in range(10):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 14)
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    out = x.astype(np.float32)
    out[mask] = blurred[mask] * 1.1
    return np.clip(out, 0, 255).astype(np.uint8)


def _lowlight(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(255 * (x / 255.0) ** 1.8 * (0.2 + 0.1 * rng.random()), 0, 255).astype(np.uint8)


# Application order: scene-side degradations first, camera-side last, JPEG at the very end.
_ORDER = (("haze", _haze), ("rain", _rain), ("raindrop", _raindrop), ("blur", _blur),
          ("lowlight", _lowlight), ("noise", _noise), ("jpeg", _jpeg))


def degrade(gt: np.ndarray, components: frozenset[str], rng: np.random.Generator) -> np.ndarray:
    """Apply the simple versions of ``components`` to a GT array."""
    x = gt
    for name, fn in _ORDER:
        if name in components:
            x = fn(x, rng)
    return x


def _exif(iso: int, exposure: float) -> Image.Exif:
    ex = Image.Exif()
    ex[_EXIF_MODEL] = "ILCE-7M3"
    ifd = ex.get_ifd(_EXIF_IFD)
    ifd[_EXIF_ISO] = iso
    ifd[_EXIF_EXPOSURE] = exposure
    ifd[_EXIF_FNUMBER] = 4.0
    return ex


def _encode(arr: np.ndarray, fmt: str, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {"exif": exif} if exif is not None else {}
    if fmt == "JPEG":
        Image.fromarray(arr).save(buf, "JPEG", quality=95, **kw)
    else:
        Image.fromarray(arr).save(buf, "PNG", compress_level=1, **kw)
    return buf.getvalue()


def make_sample(root: str | os.PathLike, per_type: int = 2, size: int = 256, layout: str = "test",
                seed: int = 0, types: tuple[str, ...] | None = None) -> list[SamplePair]:
    """Write a small FoundIR-shaped dataset under ``root`` and return its pairs.

    Args:
        root: Output folder (created).
        per_type: Pairs per degradation type.
        size: Long side of the photos in pixels.
        layout: ``"test"`` (release test layout) or ``"list"`` (training list file).
        seed: Seed of every random choice; the same arguments give the same bytes.
        types: Canonical type names to include (default: all 20).

    Quirks written on purpose (deterministic): every third GT is a ``.JPG`` (JPEG q95),
    the pair with id 3 has a GT ``.png`` that holds JPEG bytes, LQs of types with a JPEG
    component are ``.jpg``; every other LQ carries EXIF (model, ISO, exposure, f-number).
    """
    if layout not in ("test", "list"):
        raise ValueError(f"layout must be 'test' or 'list', got {layout!r}")
    root = Path(root)
    photos = load_photos(size)
    rng = np.random.default_rng(seed)
    chosen = taxonomy.select(list(types)) if types else list(taxonomy.TYPES)
    pairs: list[SamplePair] = []
    n = 0
    for t in chosen:
        for j in range(per_type):
            n += 1
            gt = photos[(t.index * per_type + j) % len(photos)]
            lq = degrade(gt, t.components, rng)
            gt_fmt, gt_ext = ("JPEG", "JPG") if n % 3 == 0 else ("PNG", "png")
            if n == 3:
                gt_ext = "png"  # JPEG bytes behind a .png name, as in the release
            lq_fmt, lq_ext = ("JPEG", "jpg") if "jpeg" in t.components else ("PNG", "png")
            if gt_fmt == "JPEG":
                # A JPEG GT decodes to its own pixels; derive LQ from those so LQ/GT stay a pair.
                gt = np.asarray(Image.open(io.BytesIO(_encode(gt, "JPEG"))).convert("RGB"))
            exif = _exif(iso=int(100 * 2 ** rng.integers(0, 8)), exposure=1 / float(rng.integers(30, 500))) if n % 2 else None
            stem = f"{n:04d}"
            if layout == "test":
                base = f"{t.folder}"
                gt_rel, lq_rel = f"{base}/GT/{stem}.{gt_ext}", f"{base}/LQ/{stem}.{lq_ext}"
                split = "test"
            else:
                base = f"Train/{t.name}"
                gt_rel, lq_rel = f"{base}/GT/{stem}.{gt_ext}", f"{base}/LQ/{stem}.{lq_ext}"
                split = "train"
            for rel, data in ((gt_rel, _encode(gt, gt_fmt)), (lq_rel, _encode(lq, lq_fmt, exif))):
                p = root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            pairs.append(SamplePair(lq=lq_rel, gt=gt_rel, degradation=t.name, split=split))
    if layout == "list":
        # Paths in the list are relative to <root>/Train (the release's data root).
        def line(p: SamplePair) -> str:
            return f"{p.gt[len('Train/'):]}, {p.lq[len('Train/'):]}\n"

        (root / LIST_FILE).write_text("".join(line(p) for p in pairs))
        iso = set(taxonomy.ISOLATED)
        (root / SINGLE_LIST_FILE).write_text("".join(line(p) for p in pairs if p.degradation in iso))
    return pairs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a small FoundIR-shaped sample from bundled photos.")
    ap.add_argument("root")
    ap.add_argument("--per-type", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--layout", choices=("test", "list"), default="test")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    pairs = make_sample(a.root, a.per_type, a.size, a.layout, a.seed)
    print(f"wrote {len(pairs)} pairs under {a.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
