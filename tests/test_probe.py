"""probe.py on real photos (scikit-image's bundled CC0 images via make_sample)."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foundir_data.sample import make_sample
from shard_tools.pack.probe import BadImage, ImageInfo, check_pair, probe_image


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    pairs = make_sample(root, per_type=1, size=96, types=("Blur", "Blur_Noise", "Blur_JPEG", "Noise", "JPEG", "Haze"))
    return root, pairs


def _files(sample):
    root, pairs = sample
    for p in pairs:
        for rel in (p.lq, p.gt):
            yield rel, (root / rel).read_bytes()


def _reference(data: bytes):
    """What a full Pillow decode says (the slow path the probe avoids)."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        ex = im.getexif()
        sub = ex.get_ifd(0x8769)
        return im.format.lower(), im.size, ex.get(0x0110), sub.get(0x8827), sub.get(0x829A), sub.get(0x829D)


def test_format_size_and_exif_match_a_full_decode(sample):
    seen_exif = 0
    for rel, data in _files(sample):
        info = probe_image(data, rel)
        fmt, size, model, iso, exposure, fnum = _reference(data)
        assert (info.format, (info.width, info.height)) == (fmt, size), rel
        assert info.camera_model == model
        assert info.iso == iso
        assert info.exposure_time == (None if exposure is None else pytest.approx(float(exposure)))
        assert info.f_number == (None if fnum is None else pytest.approx(float(fnum)))
        seen_exif += info.camera_model is not None
    # make_sample puts EXIF on every other LQ: the probe must have found some (PNG and JPEG).
    assert seen_exif >= 2


def test_exif_values_read_back_on_png_and_jpeg(sample):
    root, pairs = sample
    by_fmt = {}
    for rel, data in _files(sample):
        info = probe_image(data, rel)
        if info.camera_model:
            by_fmt[info.format] = info
    assert set(by_fmt) == {"png", "jpeg"}
    for info in by_fmt.values():
        assert info.camera_model == "ILCE-7M3" and info.f_number == 4.0
        assert info.iso in [100 * 2**k for k in range(8)]
        assert 1 / 500 <= info.exposure_time <= 1 / 30


def test_jpeg_bytes_in_png_name_are_sniffed_from_content(sample):
    root, pairs = sample
    p = pairs[2]  # make_sample: pair id 3 has a GT .png holding JPEG bytes
    assert p.gt.endswith(".png") and (root / p.gt).read_bytes()[:3] == b"\xff\xd8\xff"
    assert probe_image((root / p.gt).read_bytes(), p.gt).format == "jpeg"


def test_truncated_png_is_rejected_with_file_name(sample):
    root, pairs = sample
    rel = pairs[0].gt
    data = (root / rel).read_bytes()
    assert data[:4] == b"\x89PNG"
    for cut in (len(data) // 2, len(data) - 12, 40):  # mid-IDAT, just before IEND, in the header area
        with pytest.raises(BadImage, match=rf"{rel}: truncated PNG"):
            probe_image(data[:cut], rel)


def test_corrupt_png_chunk_crc_is_rejected(sample):
    root, pairs = sample
    rel = pairs[0].gt
    data = bytearray((root / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(BadImage, match="CRC mismatch in chunk b'IDAT'"):
        probe_image(bytes(data), rel)


def test_truncated_jpeg_is_rejected(sample):
    root, pairs = sample
    rel = pairs[2].lq
    data = (root / rel).read_bytes()
    assert data[:2] == b"\xff\xd8"
    with pytest.raises(BadImage, match=rf"{rel}: truncated JPEG"):
        probe_image(data[: len(data) * 2 // 3], rel)
    # The truncated file really is broken: a full decode agrees.
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data[: len(data) * 2 // 3])).load()


def test_garbage_and_empty_bytes():
    with pytest.raises(BadImage, match=r"x\.png: not an image"):
        probe_image(b"this is not an image at all" * 10, "x.png")
    with pytest.raises(BadImage, match=r"y\.jpg: empty file"):
        probe_image(b"", "y.jpg")


def _png_with_chunks(chunks):
    out = b"\x89PNG\r\n\x1a\n"
    for ctype, body in chunks:
        out += struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    return out


def test_valid_container_with_corrupt_pixels_needs_full_decode():
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 2, 0, 0, 0)
    data = _png_with_chunks([(b"IHDR", ihdr), (b"IDAT", b"\x78\x9c" + b"\x00garbage!" * 4), (b"IEND", b"")])
    info = probe_image(data, "c.png")  # CRCs are right: the cheap check passes
    assert (info.format, info.width, info.height) == ("png", 8, 8)
    with pytest.raises(BadImage, match=r"c\.png: cannot decode pixels"):
        probe_image(data, "c.png", full_decode=True)


def test_zero_size_png_is_rejected():
    ihdr = struct.pack(">IIBBBBB", 0, 8, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"")
    data = _png_with_chunks([(b"IHDR", ihdr), (b"IDAT", idat), (b"IEND", b"")])
    with pytest.raises(BadImage, match=r"z\.png: zero-size image \(0x8"):
        probe_image(data, "z.png")


def test_other_formats_are_decoded_to_be_checked(sample):
    root, pairs = sample
    arr = np.asarray(Image.open(root / pairs[0].gt).convert("RGB"))
    for fmt in ("BMP", "TIFF", "WEBP"):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, fmt)
        data = buf.getvalue()
        info = probe_image(data, f"a.{fmt}")
        assert (info.format, info.width, info.height) == (fmt.lower(), arr.shape[1], arr.shape[0])
        with pytest.raises(BadImage, match=rf"a\.{fmt}: "):
            probe_image(data[: len(data) // 2], f"a.{fmt}")


def test_mpo_camera_jpeg_is_checked_like_jpeg():
    frames = [Image.fromarray(np.full((16, 24, 3), v, np.uint8)) for v in (0, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    assert probe_image(data, "m.jpg") == ImageInfo("mpo", 24, 16)
    with pytest.raises(BadImage, match=r"m\.jpg: truncated JPEG"):
        probe_image(data[:-40], "m.jpg")


def test_full_decode_accepts_good_images(sample):
    for rel, data in _files(sample):
        assert probe_image(data, rel, full_decode=True) == probe_image(data, rel)


def test_check_pair():
    a = ImageInfo("png", 64, 48)
    check_pair(a, ImageInfo("jpeg", 64, 48), "lq/1.png", "gt/1.jpg")
    with pytest.raises(BadImage, match=r"lq/1\.png is 64x48 but gt/1\.jpg is 48x64"):
        check_pair(a, ImageInfo("jpeg", 48, 64), "lq/1.png", "gt/1.jpg")
