"""Tiled inference: placement, blending, equality with untiled runs, odd sizes, image modes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from foundir_data.sample import load_photos
from foundir_model.restore import images
from foundir_model.restore.infer import RestoreTiling, blend_weights, restore_array, restore_tiled, tile_grid, tile_starts


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # On the shared, oversubscribed CI machine OpenMP threads spin against each other: a tiny
    # UNet call takes ~10 s with 2 threads and ~0.7 s with 1. Restored afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def per_pixel(x: torch.Tensor, deg=None) -> torch.Tensor:
    """A translation-equivariant, per-pixel restorer (gamma + channel mix)."""
    mix = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.0, 0.3, 0.7]], dtype=x.dtype)
    return torch.einsum("oc,bchw->bohw", mix, x.clamp(0, 1) ** 0.8)


class ReflectConv:
    """A 5x5 conv with reflect padding: radius 2, equal to untiled away from interior tile edges."""

    radius = 2

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.w = torch.rand(3, 3, 5, 5, generator=g) / 75
        self.calls: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor, deg=None) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.w)


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    img = load_photos(160)[0]  # 160 x 160 astronaut
    return torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255


def test_tile_starts_as_released():
    # range(0, L - tile, stride) + [L - tile]: last tile snapped to the edge.
    assert tile_starts(3000, 1024, 512) == (1024, [0, 512, 1024, 1536, 1976])
    assert tile_starts(2048, 1024, 512) == (1024, [0, 512, 1024])
    assert tile_starts(1024, 1024, 512) == (1024, [0])
    # One side under the tile (the release breaks): the tile clamps to the side.
    assert tile_starts(700, 1024, 512) == (700, [0])
    with pytest.raises(ValueError):
        RestoreTiling(tile=64, stride=65)


@pytest.mark.parametrize("blend", ["average", "window"])
@pytest.mark.parametrize("shape", [(160, 160), (57, 131), (100, 33)])
def test_weights_cover_every_pixel_and_normalise(shape, blend):
    cfg = RestoreTiling(tile=48, stride=20, blend=blend, min_size=1)
    total = blend_weights(*shape, cfg)
    assert total.min() > 0
    # Restoring an all-ones image with the identity gives exactly ones: weights sum to one.
    ones = torch.ones(3, *shape)
    out = restore_tiled(lambda x, d: x, ones, cfg=cfg)
    assert torch.allclose(out, ones, atol=1e-6)


@pytest.mark.parametrize("blend", ["average", "window"])
def test_per_pixel_restorer_tiled_equals_untiled(photo, blend):
    full = per_pixel(photo[None])[0]
    cfg = RestoreTiling(tile=64, stride=24, blend=blend, tile_batch=3)
    out = restore_tiled(per_pixel, photo, cfg=cfg)
    assert torch.allclose(out, full, atol=1e-6)


def test_conv_restorer_equal_away_from_interior_tile_edges(photo):
    x = photo[:, :150, :137]  # odd sizes: uneven last tiles
    net = ReflectConv()
    full = net(x[None])[0]
    net.calls.clear()
    cfg = RestoreTiling(tile=64, stride=40, tile_batch=4)
    out = restore_tiled(net, x, cfg=cfg)
    h, w = x.shape[1:]
    th, tw, origins = tile_grid(h, w, cfg)
    # A pixel may differ only if some tile covering it has it within the receptive radius of a
    # tile edge that is inside the image (at image borders reflect padding matches the full run).
    bad = torch.zeros(h, w, dtype=torch.bool)
    r = ReflectConv.radius
    for y, xx in origins:
        m = torch.zeros(th, tw, dtype=torch.bool)
        if y > 0:
            m[:r] = True
        if y + th < h:
            m[-r:] = True
        if xx > 0:
            m[:, :r] = True
        if xx + tw < w:
            m[:, -r:] = True
        bad[y : y + th, xx : xx + tw] |= m
    diff = (out - full).abs().amax(0)
    assert diff[~bad].max() < 1e-5
    assert diff[bad].max() > 1e-4  # the seams are real: the test can see a misplaced tile
    assert bad.float().mean() < 0.5
    # Tiles batched: 4, 4, ... and all of one clamped size.
    assert {c[2:] for c in net.calls} == {(th, tw)} and max(c[0] for c in net.calls) == 4


def test_single_tile_is_one_untiled_call(photo):
    net = ReflectConv()
    out = restore_tiled(net, photo, cfg=RestoreTiling(tile=1024, stride=512, blend="window"))
    assert net.calls == [(1, 3, 160, 160)]
    assert torch.equal(out, net(photo[None])[0])


def test_one_side_under_tile_size(photo):
    # 160 x 40 with tile 64: the release would compute negative origins along the short side.
    x = photo[:, :, :40]
    net = ReflectConv()
    out = restore_tiled(net, x, cfg=RestoreTiling(tile=64, stride=32))
    assert out.shape == x.shape
    assert {c[2:] for c in net.calls} == {(64, 40)}
    assert torch.allclose(restore_tiled(per_pixel, x, cfg=RestoreTiling(tile=64, stride=32)), per_pixel(x[None])[0],
                          atol=1e-6)


def test_tiny_image_padded_and_cropped():
    x = torch.rand(3, 5, 7, generator=torch.Generator().manual_seed(1))
    net = ReflectConv()  # reflect padding of 2 would fail on a 1-pixel side; 16 is always safe
    out = restore_tiled(net, x, cfg=RestoreTiling(min_size=16))
    assert out.shape == (3, 5, 7) and net.calls == [(1, 3, 16, 16)]
    assert torch.allclose(restore_tiled(per_pixel, x), per_pixel(x[None])[0], atol=1e-6)


def test_degradation_label_reaches_restorer(photo):
    seen = []

    def f(x, deg):
        seen.append(None if deg is None else deg.tolist())
        return x

    restore_tiled(f, photo, degradation=7, cfg=RestoreTiling(tile=96, stride=64, tile_batch=2))
    assert seen == [[7, 7], [7, 7]]
    restore_tiled(f, photo)
    assert seen[-1] is None


def test_restorer_shape_mismatch_is_clear(photo):
    with pytest.raises(ValueError, match="restorer returned shape"):
        restore_tiled(lambda x, d: x[..., :-1], photo)


def test_restore_array_clamps_and_roundtrips(photo):
    arr = photo.permute(1, 2, 0).numpy()
    out = restore_array(lambda x, d: x * 2, arr, cfg=RestoreTiling(tile=64, stride=48))
    assert out.dtype == np.float32 and out.shape == arr.shape and out.max() == 1.0
    assert np.allclose(out, np.clip(arr * 2, 0, 1), atol=1e-6)


# ---------------------------------------------------------------- image modes
def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_image_mode_conversions():
    rgb = load_photos(32)[1]
    grey = Image.fromarray(rgb).convert("L")
    d = images.decode(_png(grey), "g.png")
    assert d.rgb.shape == rgb.shape[:2] + (3,) and np.array_equal(d.rgb[..., 0], d.rgb[..., 2])
    # 16-bit grey keeps its precision (no 8-bit truncation).
    g16 = (np.asarray(grey).astype(np.uint16) * 257 + 3).astype(np.uint16)
    d16 = images.decode(_png(Image.fromarray(g16)), "g16.png")
    assert np.allclose(d16.rgb[..., 1], g16 / 65535.0, atol=1e-7) and "16-bit" in d16.note
    # RGBA: alpha set aside and written back.
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])
    da = images.decode(_png(Image.fromarray(rgba)), "a.png")
    assert np.array_equal(images.to_uint8(da.rgb), rgb) and np.allclose(da.alpha, 128 / 255)
    back = np.asarray(Image.open(io.BytesIO(images.encode_png(da.rgb, da.alpha))))
    assert np.array_equal(back, rgba)
    # Palette expands to the same colours.
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    dp = images.decode(_png(pal), "p.png")
    assert np.array_equal(images.to_uint8(dp.rgb), np.asarray(pal.convert("RGB")))


def test_bad_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(images.ImageError, match="broken.png"):
        images.load(bad)
    f = Image.fromarray(np.zeros((4, 4), np.float32), mode="F")
    buf = io.BytesIO()
    f.save(buf, "TIFF")
    with pytest.raises(images.ImageError, match="float.tif"):
        images.decode(buf.getvalue(), "float.tif")


# ---------------------------------------------------------------- CLI with a real (tiny) checkpoint
def test_restore_cli_folder_with_modes(tiny_checkpoint, tmp_path):
    from foundir_model.restore.infer import main

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rgb = load_photos(48)[0]
    Image.fromarray(rgb).save(src / "a.png")
    Image.fromarray(rgb).convert("L").save(src / "sub" / "grey.jpg")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(src / "sub" / "alpha.png")
    (src / "notes.txt").write_text("not an image, ignored by extension")
    out = tmp_path / "out"
    rc = main([str(src), str(out), "--checkpoint", str(tiny_checkpoint), "--tile", "32", "--stride", "16",
               "--no-specialists", "--device", "cpu"])
    assert rc == 0
    a = np.asarray(Image.open(out / "a.png"))
    assert a.shape == rgb.shape and a.dtype == np.uint8
    assert np.asarray(Image.open(out / "sub" / "grey.png")).shape == rgb.shape
    al = np.asarray(Image.open(out / "sub" / "alpha.png"))
    assert al.shape == rgb.shape[:2] + (4,) and np.all(al[..., 3] == 200)
    # A broken image is reported by name and fails the run; the others are still written.
    (src / "broken.png").write_bytes(b"\x89PNG garbage")
    rc = main([str(src), str(tmp_path / "out2"), "--checkpoint", str(tiny_checkpoint), "--no-specialists",
               "--device", "cpu"])
    assert rc == 1 and (tmp_path / "out2" / "a.png").is_file()
    assert main([str(src / "a.png"), str(tmp_path / "o3"), "--checkpoint", str(tmp_path / "missing.pt"),
                 "--no-specialists", "--device", "cpu"]) == 2


def test_restore_tiled_real_unet_single_tile_matches_direct(tiny_checkpoint, photo):
    from foundir_model.checkpoint import load_restorer

    f = load_restorer(tiny_checkpoint, "cpu", specialists=False)
    x = photo[:, :40, :56]
    torch.manual_seed(3)
    direct = f(x[None])[0]
    torch.manual_seed(3)
    tiled = restore_tiled(f, x, cfg=RestoreTiling(tile=64, stride=32))
    assert torch.equal(tiled, direct)


def test_16bit_rgb_png_is_noted():
    import struct
    import zlib

    a = (np.arange(4 * 5 * 3).reshape(4, 5, 3) * 1000).astype(np.uint16)
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(4))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    d = images.decode(png, "deep.png")
    assert "16-bit RGB read as 8-bit" in d.note
    assert np.array_equal(images.to_uint8(d.rgb), (a >> 8).astype(np.uint8))
