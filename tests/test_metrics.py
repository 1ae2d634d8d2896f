"""Metrics against straightforward references written differently, on real photos."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import correlate2d
from skimage.metrics import structural_similarity

from foundir_data.sample import load_photos
from foundir_model.eval import metrics


@pytest.fixture(scope="module")
def photos():
    return load_photos(96)[:4]


def _degraded(img: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img.astype(np.int16) + rng.integers(-25, 26, img.shape), 0, 255).astype(np.uint8)


# ---- references: explicit loops / scipy 2-D correlation / MATLAB-style fspecial
def _ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    total = math.fsum(((int(p) - int(q)) / 255.0) ** 2 for p, q in zip(a.ravel().tolist(), b.ravel().tolist()))
    return 10 * math.log10(1 / (total / a.size + 1e-8))


def _fspecial(size=11, sigma=1.5):
    k = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            y, x = i - size // 2, j - size // 2
            k[i, j] = math.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return k / k.sum()


def _ref_ssim_plane(x, y, relu):
    k = _fspecial()
    f = lambda z: correlate2d(z, k, mode="valid")  # noqa: E731
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    cs = (2 * cxy + c2) / (vx + vy + c2)
    if relu:
        cs = np.maximum(cs, 0)
    return float(np.mean((2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1) * cs))


def _ref_yiq_y(img_u8):
    f = img_u8.astype(np.float64) / 255
    return np.round((f @ np.array([0.299, 0.587, 0.114])) * 255)


def _exact_luma_x1000(img_u8):
    # Integer arithmetic: 1000 * Y * 255 exactly; a half-level tie ends in 500.
    i = img_u8.astype(np.int64)
    return 299 * i[..., 0] + 587 * i[..., 1] + 114 * i[..., 2]


def test_psnr_matches_loop_reference(photos):
    for i, gt in enumerate(photos):
        pred = _degraded(gt, i)
        assert metrics.psnr(pred, gt) == pytest.approx(_ref_psnr(pred, gt), abs=1e-9)


def test_rounded_luma_differs_from_exact_only_at_ties(photos):
    for img in photos:
        y = metrics.yiq_y255(img)
        exact = _exact_luma_x1000(img)
        tie = exact % 1000 == 500
        # Off ties, rounding is unambiguous and must equal round(exact / 1000).
        assert np.array_equal(y[~tie], np.floor((exact[~tie] + 500) / 1000))
        # On ties it goes either way (float32, as pyiqa), never further.
        assert np.all(np.abs(y[tie] - exact[tie] / 1000) == 0.5)


def test_ssim_matches_scipy_reference(photos):
    for i, gt in enumerate(photos):
        pred = _degraded(gt, 10 + i)
        ref = _ref_ssim_plane(metrics.yiq_y255(pred), metrics.yiq_y255(gt), relu=True)
        assert metrics.ssim(pred, gt) == pytest.approx(ref, abs=1e-10)
        assert 0.2 < ref < 0.99  # a real distortion, not a trivial case
        # With float64 luma only the tie pixels differ: the score moves by well under 1e-4.
        ref64 = _ref_ssim_plane(_ref_yiq_y(pred), _ref_yiq_y(gt), relu=True)
        assert metrics.ssim(pred, gt) == pytest.approx(ref64, abs=1e-4)


def test_basicsr_ssim_matches_skimage(photos):
    # skimage with gaussian weights (sigma 1.5, truncate 3.5 -> 11 taps), population covariance,
    # and its crop of the border equals BasicSR's valid filtering.
    for i, gt in enumerate(photos[:2]):
        pred = _degraded(gt, 20 + i)
        ref = np.mean([
            structural_similarity(pred[..., c].astype(np.float64), gt[..., c].astype(np.float64), data_range=255,
                                  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
            for c in range(3)
        ])
        assert metrics.ssim_basicsr(pred, gt) == pytest.approx(ref, abs=1e-9)
        # Y channel variant: BT.601 Y, not rounded.
        y = lambda im: 16 + (im.astype(np.float64) / 255) @ np.array([65.481, 128.553, 24.966])  # noqa: E731
        ref_y = _ref_ssim_plane(y(pred), y(gt), relu=False)
        assert metrics.ssim_basicsr(pred, gt, test_y_channel=True) == pytest.approx(ref_y, abs=1e-10)


def test_identical_images_exact_values(photos):
    gt = photos[0]
    assert metrics.psnr(gt, gt) == pytest.approx(80.0, abs=1e-12)  # 10 log10(1 / 1e-8)
    assert metrics.ssim(gt, gt) == pytest.approx(1.0, abs=1e-12)
    assert metrics.psnr_basicsr(gt, gt) == math.inf
    assert metrics.ssim_basicsr(gt, gt, crop_border=4, test_y_channel=True) == pytest.approx(1.0, abs=1e-12)
    assert metrics.score(gt, gt) == (pytest.approx(80.0), pytest.approx(1.0))


@pytest.mark.parametrize("offset", [1, 5, 20])
def test_constant_offset_known_mse(photos, offset):
    gt = np.clip(photos[1], 30, 220)  # no clipping after the shift
    pred = gt + np.uint8(offset)
    mse = (offset / 255) ** 2
    assert metrics.psnr(pred, gt) == pytest.approx(10 * math.log10(1 / (mse + 1e-8)), abs=1e-9)
    assert metrics.psnr_basicsr(pred, gt) == pytest.approx(10 * math.log10(255 ** 2 / offset ** 2), abs=1e-9)
    # A constant shift leaves the structure term at 1: SSIM is the mean luminance term.
    y_p, y_g = metrics.yiq_y255(pred), metrics.yiq_y255(gt)
    assert np.abs(y_p - y_g - offset).max() <= 1  # luma weights sum to 1 (ties aside)
    assert metrics.ssim(pred, gt) == pytest.approx(_ref_ssim_plane(y_p, y_g, relu=True), abs=1e-10)
    assert metrics.ssim(pred, gt) < 1.0


def test_float_and_uint8_inputs_agree(photos):
    gt = photos[2]
    pred = _degraded(gt, 3)
    assert metrics.psnr(pred.astype(np.float32) / 255, gt.astype(np.float64) / 255) == pytest.approx(
        metrics.psnr(pred, gt), abs=1e-5)
    assert metrics.ssim(pred / 255.0, gt / 255.0) == pytest.approx(metrics.ssim(pred, gt), abs=1e-12)


def test_paper_ssim_rounds_y():
    # Two images whose YIQ luma differs by less than half a level round to the same Y: SSIM 1.
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (32, 32, 3)).astype(np.float64) / 255
    y = gt @ np.array([0.299, 0.587, 0.114]) * 255
    safe = np.abs(y - np.round(y)) < 0.3
    pred = gt + np.where(safe, 0.1 / 255, 0)[..., None]
    assert metrics.ssim(pred, gt) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ssim_basicsr(pred, gt) < 1.0


def test_bad_inputs_are_clear():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="differs from ground truth"):
        metrics.psnr(a, np.zeros((20, 21, 3), np.uint8))
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        metrics.ssim(a[:8], a[:8])
    with pytest.raises(ValueError, match="unknown metric convention"):
        metrics.Convention("matlab")
    with pytest.raises(ValueError, match="basicsr"):
        metrics.Convention("paper", crop_border=4)
    with pytest.raises(ValueError, match="unsupported pixel type"):
        metrics.psnr(a.astype(np.int32), a.astype(np.int32))


def test_torch_batch_equals_numpy(photos):
    import torch

    gts = [p[:56, :56] for p in photos]
    preds = [_degraded(g, 40 + i) for i, g in enumerate(gts)]
    t = lambda arrs: torch.stack([torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255 for a in arrs])  # noqa: E731
    ps, ss = metrics.psnr_batch(t(preds), t(gts)), metrics.ssim_batch(t(preds), t(gts))
    for i in range(len(gts)):
        assert ps[i].item() == pytest.approx(metrics.psnr(preds[i], gts[i]), abs=1e-9)
        assert ss[i].item() == pytest.approx(metrics.ssim(preds[i], gts[i]), abs=1e-9)
    # Unquantized floats: quantize=True rounds to 8-bit levels first, as a saved PNG would.
    noisy = t(preds) + 0.3 / 255
    assert metrics.psnr_batch(noisy, t(gts))[0].item() == pytest.approx(metrics.psnr(preds[0], gts[0]), abs=1e-9)
    assert metrics.psnr_batch(noisy, t(gts), quantize=False)[0].item() != pytest.approx(metrics.psnr(preds[0], gts[0]), abs=1e-6)
