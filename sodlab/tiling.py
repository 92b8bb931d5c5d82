"""Image pyramids and sliding windows: separable Gaussian blur, resize levels, window grids.

The classic multi-scale detector (Viola & Jones 2001; Rowley et al. 1998; OverFeat,
Sermanet et al. 2014) slides one fixed-size window over every level of an image pyramid.
This module holds the geometry only; the classifier and the two ways of scoring windows
are in ``sodlab.models.classifiers``. Taught in notebook 01_sliding_window_pyramid.

Shapes: images ``[C, H, W]`` (a batch ``[B, C, H, W]`` for the blur), float in [0, 1];
boxes ``[N, 4]`` xyxy in the pixels of the level they were made on.

Anti-aliasing rule: before shrinking a level by the factor ``s = scale_step`` it is blurred
with a Gaussian of ``sigma = 0.5 * sqrt(s**2 - 1)`` (level pixels). If every level carries
the blur of its own pixel grid (sigma 0.5 px), blurring by that sigma and shrinking by ``s``
leaves the next level with sigma ``sqrt(0.25 + sigma**2) / s = 0.5`` again: every level is
equally sharp, whatever the step (s = 2 -> 0.87, sqrt(2) -> 0.5, 2**0.25 -> 0.22).

Dimension legend: B batch, C channels, H W image height/width, K kernel taps, N windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision

from sodlab.errors import InputError


def gaussian_kernel1d(sigma: float, *, radius: int | None = None) -> torch.Tensor:
    """Normalised 1-D Gaussian taps ``[K]``, ``K = 2 * radius + 1``, radius ``ceil(3 sigma)``."""
    if sigma <= 0:
        raise InputError(f"blur sigma must be > 0, got {sigma}")
    r = max(1, math.ceil(3.0 * sigma)) if radius is None else int(radius)
    x = torch.arange(-r, r + 1, dtype=torch.float64)                  # [K]
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def separable_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[B, C, H, W]`` as two 1-D convolutions (rows, then columns).

    Reflect padding (replicate where the image is too small to reflect). Equals one 2-D
    convolution with the outer product of the 1-D kernel, at ``2K`` instead of ``K**2`` taps
    per pixel. ``sigma <= 0`` returns the input unchanged.
    """
    if img.dim() != 4:
        raise InputError(f"separable_blur takes [B, C, H, W], got shape {tuple(img.shape)}")
    if sigma <= 0:
        return img
    k = gaussian_kernel1d(sigma).to(img)                               # [K]
    r = (k.numel() - 1) // 2
    c = img.shape[1]
    mode = "reflect" if r < min(img.shape[-2:]) else "replicate"
    out = F.pad(img, (r, r, 0, 0), mode=mode)
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)   # along W
    out = F.pad(out, (0, 0, r, r), mode=mode)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along H


def pyramid_sigma(scale_step: float) -> float:
    """Blur (level pixels) applied before shrinking by ``scale_step``: ``0.5 sqrt(s² - 1)``."""
    return 0.5 * math.sqrt(max(scale_step**2 - 1.0, 0.0))


@dataclass
class Level:
    """One pyramid level: the resized image ``[C, h, w]`` and its scale (level px / original px).

    ``h = round(H * scale)``, ``w = round(W * scale)``; mapping back divides by ``scale``, exact
    up to the rounding of the level size (under ``0.5 / scale`` original pixels).
    """

    image: torch.Tensor  # [C, h, w]
    scale: float


def resize_image(image: torch.Tensor, size: tuple[int, int], *,
                 antialias: bool | None = None) -> torch.Tensor:
    """Bilinear resize of ``[C, H, W]`` (or a batch ``[B, C, H, W]``) to ``size = (h, w)``.

    The one image resize of the package. ``align_corners=False``: pixel ``u`` of the output
    samples the input at ``(u + 0.5) * H / h - 0.5``, so the continuous-pixel box
    convention maps by plain scaling (``sodlab.boxes.scale_boxes``). ``antialias``: filter
    when shrinking (None, the default: exactly when ``h < H`` or ``w < W``). Image pyramids
    pass ``False`` because they blur first (the rule in this module's docstring).
    """
    if image.dim() not in (3, 4):
        raise InputError(f"resize_image takes [C, H, W] or [B, C, H, W], got shape "
                         f"{tuple(image.shape)}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise InputError(f"resize_image: target size must be >= 1 px, got {(h, w)}")
    H, W = image.shape[-2:]
    if antialias is None:
        antialias = h < H or w < W
    batch = image if image.dim() == 4 else image[None]                   # [B, C, H, W]
    out = F.interpolate(batch, size=(h, w), mode="bilinear", align_corners=False,
                        antialias=bool(antialias))                        # [B, C, h, w]
    return out if image.dim() == 4 else out[0]


def image_pyramid(img: torch.Tensor, *, scale_step: float, min_size: int,
                  max_levels: int | None = None, sigma: float | None = None,
                  first_scale: float = 1.0) -> list[Level]:
    """Levels at scales ``first_scale / scale_step**k`` while the short side stays >= min_size.

    Level 0 is the image resized to ``first_scale`` (> 1 up-samples, so that objects smaller
    than the classifier's window can be found; a first scale < 1 is blurred first by the
    rule in the module docstring). Each further level is the previous one blurred by
    ``sigma`` (default ``pyramid_sigma(scale_step)``) and resized to ``round(H * scale)`` x
    ``round(W * scale)`` of the *original* size, so rounding errors do not accumulate.
    """
    if img.dim() != 3:
        raise InputError(f"image_pyramid takes one image [C, H, W], got shape {tuple(img.shape)}")
    if not scale_step > 1.0:
        raise InputError(f"pyramid scale step must be > 1, got {scale_step}")
    if min_size < 1:
        raise InputError(f"pyramid min_size must be >= 1, got {min_size}")
    if first_scale <= 0:
        raise InputError(f"pyramid first_scale must be > 0, got {first_scale}")
    H, W = img.shape[-2:]
    blur = pyramid_sigma(scale_step) if sigma is None else float(sigma)
    levels: list[Level] = []
    k = 0
    prev = None
    while max_levels is None or k < max_levels:
        scale = first_scale / scale_step**k
        h, w = round(H * scale), round(W * scale)
        if min(h, w) < min_size:
            break
        if prev is None:
            src = img if scale >= 1 else separable_blur(img[None], pyramid_sigma(1 / scale))[0]
            cur = img if (h, w) == (H, W) else resize_image(src, (h, w), antialias=False)
        else:
            cur = resize_image(separable_blur(prev[None], blur)[0], (h, w), antialias=False)
        levels.append(Level(image=cur, scale=scale))
        prev = cur
        k += 1
    if not levels:
        raise InputError(f"image of {H}x{W} px at scale {first_scale} is smaller than the "
                         f"pyramid's min_size {min_size}")
    return levels


def pyramid_sizes(height: int, width: int, *, scale_step: float, min_size: int,
                  max_levels: int | None = None, first_scale: float = 1.0) -> list[tuple]:
    """``(h, w)`` of each level ``image_pyramid`` would make, without touching pixels."""
    if not scale_step > 1.0:
        raise InputError(f"pyramid scale step must be > 1, got {scale_step}")
    sizes, k = [], 0
    while max_levels is None or k < max_levels:
        scale = first_scale / scale_step**k
        h, w = round(height * scale), round(width * scale)
        if min(h, w) < min_size:
            break
        sizes.append((h, w))
        k += 1
    return sizes


def window_grid(height: int, width: int, *, window: int, stride: int) -> tuple[int, int]:
    """Number of window rows and columns ``(ny, nx)``; InputError for impossible settings."""
    if window <= 0:
        raise InputError(f"window size must be > 0, got {window}")
    if stride <= 0:
        raise InputError(f"window stride must be > 0, got {stride}")
    if height < window or width < window:
        raise InputError(f"image of {height}x{width} px is smaller than the {window} px window")
    return (height - window) // stride + 1, (width - window) // stride + 1


def flush_starts(n: int, window: int, step: int) -> list[int]:
    """Window starts every ``step`` px along a side of ``n`` px, the last one flush with the far
    edge (so the windows cover the side); one start at 0 when the side is shorter than a window."""
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, step))
    if starts[-1] != n - window:
        starts.append(n - window)
    return starts


def sliding_windows(height: int, width: int, *, window: int, stride: int) -> torch.Tensor:
    """Every ``window`` x ``window`` box at multiples of ``stride``, row-major. ``[N, 4]`` xyxy

    Window ``n = i * nx + j`` has its top-left corner at ``(x, y) = (j * stride, i * stride)``;
    windows that would cross the right or bottom edge are left out.
    """
    ny, nx = window_grid(height, width, window=window, stride=stride)
    ys = torch.arange(ny, dtype=torch.float32) * stride                 # [ny]
    xs = torch.arange(nx, dtype=torch.float32) * stride                 # [nx]
    y0, x0 = torch.meshgrid(ys, xs, indexing="ij")                       # [ny, nx]
    x0, y0 = x0.reshape(-1), y0.reshape(-1)                              # [N]
    return torch.stack([x0, y0, x0 + window, y0 + window], dim=1)        # [N, 4]


def map_to_original(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """Boxes on a level of scale ``scale`` (level px / original px) in original pixels."""
    if scale <= 0:
        raise InputError(f"level scale must be > 0, got {scale}")
    return boxes / scale


def merge_detections(boxes: torch.Tensor, scores: torch.Tensor, *, nms_iou: float,
                     max_dets: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-maximum suppression over detections of all levels (``torchvision.ops.nms``).

    ``boxes [D, 4]`` in original pixels, ``scores [D]``; returns the kept ones, best first.
    """
    keep = torchvision.ops.nms(boxes.float(), scores.float(), nms_iou)   # [D']
    if max_dets is not None:
        keep = keep[:max_dets]
    return boxes[keep], scores[keep]
