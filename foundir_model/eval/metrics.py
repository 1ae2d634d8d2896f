"""PSNR and SSIM exactly as the paper's Table 1 numbers were computed, plus the BasicSR convention.

Two conventions, chosen by name from :data:`CONVENTIONS` (docs/release.md, "Metrics"):

``paper`` (default; the defaults of the IQA toolbox ``pyiqa``)
    PSNR on RGB, all channels, images in [0, 1], ``10 log10(1 / (mse + 1e-8))``, no border crop
    (so identical images score exactly 80 dB). SSIM on the Y channel of YIQ
    (0.299 R + 0.587 G + 0.114 B), scaled to 255 and rounded to integers, an 11x11 Gaussian
    window (sigma 1.5) applied with 'valid' filtering, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2,
    the contrast-structure term clipped at zero (``relu``), no crop.

``basicsr`` (the other common convention)
    Images in [0, 255], optional border crop, optionally the Y channel of BT.601 YCbCr
    (``16 + 65.481 R + 128.553 G + 24.966 B`` with R, G, B in [0, 1], not rounded). PSNR is
    ``10 log10(255^2 / mse)`` (infinite for identical images); SSIM uses the same 11x11 Gaussian
    with 'valid' filtering, averaged over channels, without clipping.

Inputs are ``HxWx3`` numpy arrays: uint8 in 0..255 (as read from files) or float in [0, 1].
Filtering and PSNR are float64; the rounded YIQ luma is computed in float32 exactly like pyiqa so
that half-level ties round the same way. PSNR agrees with pyiqa's float32 value to about 1e-5 dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import correlate1d  # declared in install_requires

#: pyiqa's PSNR epsilon (docs/release.md, "Metrics"): identical images give 10 log10(1e8) = 80 dB.
PSNR_EPS = 1e-8
#: Gaussian window of SSIM (Wang et al. 2004; both conventions): 11 taps, sigma 1.5.
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
#: SSIM stabilisers for a dynamic range of 255 (K1 = 0.01, K2 = 0.03).
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
#: Luma of YIQ (NTSC), as in pyiqa's ``rgb2yiq``; the full matrix is kept because the float32
#: rounding of its matmul decides ties (see :func:`yiq_y255`).
YIQ_Y = (0.299, 0.587, 0.114)
_YIQ_MATRIX = (YIQ_Y, (0.5959, -0.2746, -0.3213), (0.2115, -0.5227, 0.3112))
#: Luma of BT.601 YCbCr on [0, 1] inputs with output in 16..235, as in BasicSR's ``rgb2ycbcr``.
YCBCR_Y = (65.481, 128.553, 24.966)
YCBCR_OFFSET = 16.0


@dataclass(frozen=True)
class Convention:
    """How PSNR/SSIM are computed (see the module docstring).

    Attributes:
        name: ``paper`` or ``basicsr``.
        crop_border: Pixels cut from each side before both metrics (BasicSR only).
        test_y_channel: BasicSR only: compute both metrics on BT.601 Y instead of RGB.
    """

    name: str = "paper"
    crop_border: int = 0
    test_y_channel: bool = False

    def __post_init__(self) -> None:
        if self.name not in CONVENTIONS:
            raise ValueError(f"unknown metric convention {self.name!r}; choose one of {sorted(CONVENTIONS)}")
        if self.crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border}")
        if self.name == "paper" and (self.crop_border or self.test_y_channel):
            raise ValueError("the paper convention has no border crop and no Y-channel PSNR; "
                             "use the basicsr convention for those options")

    def describe(self) -> str:
        """One line saying how the numbers were computed (for reports)."""
        if self.name == "paper":
            return ("paper/pyiqa: PSNR on RGB in [0,1], 10*log10(1/(mse+1e-8)); SSIM on rounded YIQ-Y "
                    "(0..255), gaussian 11/1.5, valid; no crop")
        space = "BT.601 Y (not rounded)" if self.test_y_channel else "RGB, mean over channels"
        return f"basicsr: 0..255, {space}, crop {self.crop_border}, gaussian 11/1.5 valid"


#: Named conventions (the ``--basicsr`` flag picks the second).
CONVENTIONS: dict[str, str] = {
    "paper": "pyiqa defaults, as the paper's Table 1 was computed",
    "basicsr": "BasicSR's calculate_psnr / calculate_ssim",
}


# ---------------------------------------------------------------- input handling
def to_unit_float(img: np.ndarray, where: str = "image") -> np.ndarray:
    """Return ``img`` as float64 ``HxWxC`` in [0, 1].

    uint8 is divided by 255 and uint16 by 65535 (exact), floats are taken as already in [0, 1].
    A 2-D array gets a channel axis. Errors name ``where``.
    """
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"{where}: expected an HxWxC image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535.0
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float64, copy=False)
    raise ValueError(f"{where}: unsupported pixel type {a.dtype} (use uint8, uint16 or float in [0, 1])")


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_unit_float(pred, "prediction"), to_unit_float(gt, "ground truth")
    if x.shape != y.shape:
        raise ValueError(f"prediction shape {x.shape} differs from ground truth shape {y.shape}")
    return x, y


def gaussian_1d(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian; its outer product is MATLAB's ``fspecial('gaussian', 11, 1.5)``."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of an ``HxW`` image with ``outer(g, g)``.

    Only outputs whose window lies inside the image are kept, so the boundary mode of
    ``correlate1d`` never enters the result.
    """
    k = len(g)
    h, w = img.shape
    if h < k or w < k:
        raise ValueError(f"image of {h}x{w} is smaller than the {k}x{k} SSIM window")
    r = k // 2
    rows = correlate1d(img, g, axis=0, mode="constant")[r:h - r]
    return correlate1d(rows, g, axis=1, mode="constant")[:, r:w - r]


def _ssim_plane(x: np.ndarray, y: np.ndarray, clip_cs: bool) -> float:
    """Mean SSIM of two ``HxW`` float64 planes on a 0..255 scale."""
    g = gaussian_1d()
    mu1, mu2 = _filter_valid(x, g), _filter_valid(y, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(x * x, g) - mu1_sq
    s2 = _filter_valid(y * y, g) - mu2_sq
    s12 = _filter_valid(x * y, g) - mu12
    cs = (2 * s12 + SSIM_C2) / (s1 + s2 + SSIM_C2)
    if clip_cs:  # pyiqa: F.relu(cs_map), keeps the response non-negative
        cs = np.maximum(cs, 0.0)
    return float(np.mean((2 * mu12 + SSIM_C1) / (mu1_sq + mu2_sq + SSIM_C1) * cs))


def yiq_y255(img: np.ndarray) -> np.ndarray:
    """pyiqa's SSIM input: YIQ luma scaled to 255 and rounded, as a float64 ``HxW`` plane.

    About one pixel in a thousand lands exactly on a half level (299 R + 587 G + 114 B ends in
    500), so which way it rounds depends on float32 arithmetic. pyiqa computes it in float32
    on ``uint8 / 255`` tensors with a ``matmul`` against its 3x3 YIQ matrix and ``torch.round``
    (half to even); this does the same, so ties fall the same way as in the paper's numbers.
    """
    a = np.asarray(img)
    if a.dtype == np.uint8:  # torchvision's to_tensor: float32 division by 255
        t = torch.from_numpy(np.require(a if a.ndim == 3 else a[..., None], requirements="CW")).float() / 255.0
    else:
        t = torch.from_numpy(to_unit_float(a)).float()
    if t.shape[-1] != 3:
        return torch.round(t[..., 0] * 255.0).double().numpy()
    yiq = torch.tensor(_YIQ_MATRIX, dtype=torch.float32).t()
    return torch.round(torch.matmul(t, yiq)[..., 0] * 255.0).double().numpy()


def ycbcr_y(rgb01: np.ndarray) -> np.ndarray:
    """BasicSR's Y: ``16 + 65.481 R + 128.553 G + 24.966 B`` on [0, 1] RGB (0..255 scale, unrounded)."""
    r, g, b = rgb01[..., 0], rgb01[..., 1], rgb01[..., 2]
    return YCBCR_OFFSET + YCBCR_Y[0] * r + YCBCR_Y[1] * g + YCBCR_Y[2] * b


# ---------------------------------------------------------------- paper (pyiqa) convention
def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """PSNR as in the paper (pyiqa default): RGB in [0, 1], ``10 log10(1 / (mse + 1e-8))``."""
    a, b = np.asarray(pred), np.asarray(gt)
    if a.dtype == np.uint8 and b.dtype == np.uint8 and a.shape == b.shape and a.ndim == 3:
        # Exact and fast for 8-bit files: integer squared error, one division at the end.
        d = a.astype(np.int32) - b.astype(np.int32)
        mse = float(np.einsum("ijk,ijk->", d, d, dtype=np.int64)) / (d.size * 255.0 ** 2)
    else:
        x, y = _pair(pred, gt)
        mse = float(np.mean((x - y) ** 2))
    return 10.0 * math.log10(1.0 / (mse + PSNR_EPS))


def ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """SSIM as in the paper (pyiqa default): rounded YIQ-Y on 0..255, Gaussian 11/1.5, valid."""
    a, b = np.asarray(pred), np.asarray(gt)
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} differs from ground truth shape {b.shape}")
    return _ssim_plane(yiq_y255(a), yiq_y255(b), clip_cs=True)


# ---------------------------------------------------------------- BasicSR convention
def _basicsr_planes(pred: np.ndarray, gt: np.ndarray, crop_border: int, test_y_channel: bool):
    x, y = _pair(pred, gt)
    if crop_border:
        if min(x.shape[:2]) <= 2 * crop_border:
            raise ValueError(f"crop_border {crop_border} leaves nothing of a {x.shape[0]}x{x.shape[1]} image")
        x = x[crop_border:-crop_border, crop_border:-crop_border]
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel and x.shape[-1] == 3:
        return ycbcr_y(x)[..., None], ycbcr_y(y)[..., None]
    return x * 255.0, y * 255.0


def psnr_basicsr(pred: np.ndarray, gt: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """BasicSR's PSNR: 0..255, ``10 log10(255^2 / mse)``; ``inf`` for identical images."""
    x, y = _basicsr_planes(pred, gt, crop_border, test_y_channel)
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def ssim_basicsr(pred: np.ndarray, gt: np.ndarray, crop_border: int = 0, test_y_channel: bool = False) -> float:
    """BasicSR's SSIM: per channel on 0..255 (or BT.601 Y), Gaussian 11/1.5 valid, channel mean."""
    x, y = _basicsr_planes(pred, gt, crop_border, test_y_channel)
    return float(np.mean([_ssim_plane(x[..., c], y[..., c], clip_cs=False) for c in range(x.shape[-1])]))


def score(pred: np.ndarray, gt: np.ndarray, convention: Convention | None = None) -> tuple[float, float]:
    """``(psnr, ssim)`` of one image pair under ``convention`` (default: the paper's)."""
    c = convention or Convention()
    if c.name == "paper":
        return psnr(pred, gt), ssim(pred, gt)
    return (psnr_basicsr(pred, gt, c.crop_border, c.test_y_channel),
            ssim_basicsr(pred, gt, c.crop_border, c.test_y_channel))


# ---------------------------------------------------------------- torch batch version (paper)
def quantize8(x: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8-bit levels, as saving a PNG does (the paper scored saved files)."""
    return torch.round(x.clamp(0, 1) * 255.0) / 255.0


def psnr_batch(pred: torch.Tensor, gt: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Paper PSNR of ``[B, 3, H, W]`` [0, 1] batches on any device -> ``[B]`` float64.

    With ``quantize`` (default) both are first rounded to 8-bit levels, so the values equal
    :func:`psnr` on the saved images.
    """
    if pred.shape != gt.shape or pred.dim() != 4:
        raise ValueError(f"expected two [B,C,H,W] batches of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if quantize:  # on integer levels in float64: exact, like the uint8 path of psnr()
        x, y = torch.round(pred.double().clamp(0, 1) * 255.0), torch.round(gt.double().clamp(0, 1) * 255.0)
        mse = ((x - y) ** 2).mean(dim=(1, 2, 3)) / 255.0 ** 2
    else:
        mse = ((pred.double() - gt.double()) ** 2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(1.0 / (mse + PSNR_EPS))


def ssim_batch(pred: torch.Tensor, gt: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """Paper SSIM of ``[B, 3, H, W]`` [0, 1] batches on any device -> ``[B]`` float64
    (rounded YIQ-Y, Gaussian 11/1.5, valid, relu on the contrast-structure term)."""
    if pred.shape != gt.shape or pred.dim() != 4 or pred.shape[1] != 3:
        raise ValueError(f"expected two [B,3,H,W] batches of one shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    yiq = torch.tensor(_YIQ_MATRIX, dtype=torch.float32, device=pred.device).t()

    def luma(t: torch.Tensor) -> torch.Tensor:
        t = (quantize8(t) if quantize else t).float()
        return torch.round(torch.matmul(t.permute(0, 2, 3, 1), yiq)[..., :1] * 255.0).permute(0, 3, 1, 2).double()

    x, y = luma(pred), luma(gt)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"images of {x.shape[-2]}x{x.shape[-1]} are smaller than the SSIM window")
    g = torch.from_numpy(gaussian_1d()).to(x)
    win = (g[:, None] * g[None, :])[None, None]
    f = lambda z: torch.nn.functional.conv2d(z, win)  # noqa: E731  valid: no padding
    mu1, mu2 = f(x), f(y)
    s1, s2, s12 = f(x * x) - mu1 ** 2, f(y * y) - mu2 ** 2, f(x * y) - mu1 * mu2
    cs = torch.relu((2 * s12 + SSIM_C2) / (s1 + s2 + SSIM_C2))
    return ((2 * mu1 * mu2 + SSIM_C1) / (mu1 ** 2 + mu2 ** 2 + SSIM_C1) * cs).mean(dim=(1, 2, 3))
