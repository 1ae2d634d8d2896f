"""The one decoder: every fast path gives Pillow's pixels, on the bundled real photos."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from foundir_data.read import decode
from foundir_data.read.decode import DecodeError, decode_image
from foundir_data.sample import PHOTOS, photo_dir


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photo (chelsea.png, 451x300, odd width: no alignment luck)."""
    with Image.open(photo_dir() / PHOTOS[1]) as im:
        return im.convert("RGB")


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png16_rgb(a16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): IHDR depth 16, colour type 2."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    h, w, _ = a16.shape
    rows = b"".join(b"\0" + a16[y].astype(">u2").tobytes() for y in range(h))
    return (decode.PNG_MAGIC + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def cases(photo: Image.Image) -> dict[str, bytes]:
    """The same photo in every kind of file a reader may meet."""
    a = np.asarray(photo)
    pal = photo.quantize(64)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    g16 = (np.asarray(photo.convert("L")).astype(np.uint16) * 257 + np.arange(a.shape[1], dtype=np.uint16) % 200)
    return {
        "png rgb": _save(photo, "PNG", compress_level=1),
        "png grey": _save(photo.convert("L"), "PNG"),
        "png palette": _save(pal, "PNG"),
        "png palette+tRNS": _save(pal, "PNG", transparency=3),
        "png rgba": _save(photo.convert("RGBA"), "PNG"),
        "png grey+alpha": _save(photo.convert("LA"), "PNG"),
        "png 1-bit": _save(photo.convert("1"), "PNG"),
        "png 16-bit rgb": _png16_rgb(a.astype(np.uint16) * 257 + 77),
        "png 16-bit grey": _save(Image.fromarray(g16), "PNG"),
        "jpeg 4:2:0": _save(photo, "JPEG", quality=90),
        "jpeg 4:4:4": _save(photo, "JPEG", quality=95, subsampling=0),
        "jpeg 4:2:2": _save(photo, "JPEG", quality=80, subsampling=1),
        "jpeg progressive": _save(photo, "JPEG", quality=90, progressive=True),
        "jpeg grey": _save(photo.convert("L"), "JPEG", quality=90),
        "jpeg cmyk": _save(photo.convert("CMYK"), "JPEG", quality=90),
        "jpeg exif orientation 6": _save(photo, "JPEG", quality=90, exif=exif),
        "qoi": _qoi(a),
        "webp lossless": _save(photo, "WEBP", lossless=True),
        "bmp": _save(photo, "BMP"),
    }


def _qoi(a: np.ndarray) -> bytes:
    qoi = pytest.importorskip("qoi")
    return bytes(qoi.encode(np.ascontiguousarray(a)))


def test_fast_backends_installed():
    # The fast paths are what this file proves; the project installs them (setup.cfg).
    assert decode.available() == {"pyspng": True, "simplejpeg": True, "qoi": True, "zstandard": True}


def test_every_path_equals_pillow(photo, cases, monkeypatch):
    monkeypatch.delenv("FOUNDIR_DECODER", raising=False)
    for name, data in cases.items():
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
            ref = np.asarray(im.convert("RGB")) if mode not in decode._GRAY16 else None
        pil = decode_image(data, name, backend="pillow")
        fast = decode_image(data, name)
        assert fast.dtype == np.uint8 and fast.shape == (photo.height, photo.width, 3), name
        np.testing.assert_array_equal(fast, pil, err_msg=name)
        if ref is not None:  # the documented rule: Pillow's convert("RGB") of the file
            np.testing.assert_array_equal(pil, ref, err_msg=name)
        out = np.full_like(fast, 7)
        assert decode_image(data, name, out=out) is out
        np.testing.assert_array_equal(out, pil, err_msg=f"{name} into a buffer")


def test_sixteen_bit_rules(photo, cases):
    data = cases
    a = np.asarray(photo)
    # 16-bit RGB: the high byte (what Pillow itself returns).
    np.testing.assert_array_equal(decode_image(data["png 16-bit rgb"], "x"), (a.astype(np.uint16) * 257 + 77) >> 8)
    with Image.open(io.BytesIO(data["png 16-bit grey"])) as im:
        v = np.asarray(im).astype(np.float64)
    want = np.clip(np.rint(v / 257), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(data["png 16-bit grey"], "x"), np.repeat(want[..., None], 3, 2))


def test_exif_orientation_is_not_applied(photo, cases):
    got = decode_image(cases["jpeg exif orientation 6"], "x")
    assert got.shape[:2] == (photo.height, photo.width)  # stored orientation, not rotated


def test_zstd_ppm_tile_roundtrip_and_errors(photo):
    from shard_tools.tiles.codec import encode_ppm_zst

    a = np.asarray(photo)
    data = encode_ppm_zst(a)
    np.testing.assert_array_equal(decode_image(data, "t"), a)
    ws = np.full((3, 5, 3), 10, np.uint8)  # pixels that look like PPM header whitespace
    np.testing.assert_array_equal(decode_image(encode_ppm_zst(ws), "ws"), ws)
    out = np.empty_like(a)
    assert decode_image(data, "t", out=out) is out and np.array_equal(out, a)
    with pytest.raises(DecodeError, match="t: decoded to"):
        decode_image(data, "t", out=np.empty((2, 2, 3), np.uint8))
    with pytest.raises(DecodeError, match="cut: "):
        decode_image(data[: len(data) // 2], "cut")
    import zstandard

    with pytest.raises(DecodeError, match="PPM"):
        decode_image(zstandard.ZstdCompressor().compress(b"P5\n2 2\n255\n" + bytes(4)), "grey")


def test_damaged_bytes_name_the_image(cases):
    for name in ("png rgb", "jpeg 4:2:0"):
        data = cases[name]
        for bad in (data[: len(data) // 2], b"not an image at all"):
            with pytest.raises(DecodeError, match="^member-x: "):
                decode_image(bad, "member-x")
    with pytest.raises(DecodeError, match="unknown decoder backend"):
        decode_image(b"", "x", backend="cv2")


def test_environment_forces_pillow(cases, monkeypatch):
    data = cases["jpeg 4:2:0"]
    calls = []
    monkeypatch.setattr(decode.simplejpeg, "decode_jpeg", lambda *a, **k: calls.append(1))
    monkeypatch.setenv("FOUNDIR_DECODER", "pillow")
    decode_image(data, "x")
    assert calls == []


def test_decode_pair_reuses_scratch_buffers(photo, cases):
    from shard_tools.tiles.codec import encode_ppm_zst

    a = np.asarray(photo)
    for lq, gt in ((encode_ppm_zst(a), encode_ppm_zst(a[::-1].copy())), (cases["jpeg 4:2:0"], cases["jpeg grey"]),
                   (cases["png rgb"], cases["png palette"])):
        want = decode.decode_pair(lq, gt, "k")
        got = decode.decode_pair(lq, gt, "k", reuse=True)
        again = decode.decode_pair(lq, gt, "k", reuse=True)
        for w, g, g2 in zip(want, got, again):
            np.testing.assert_array_equal(g2, w)
            if lq[:2] != decode.PNG_MAGIC[:2]:  # zstd and JPEG decode into the same scratch buffer
                assert g2 is g
