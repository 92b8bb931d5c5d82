"""Benchmark: windows/s of the crop-and-classify loop vs the fully-convolutional pass.

Both ways score the same 24 px windows at stride 4 on the same 640 x 480 image, side by
side in one run (``sodlab.models.classifiers.score_windows``). Overlapping windows share
computation only in the fcn way; the ideal speed-up is the overlap ratio
``window**2 / stride**2`` (36), and the network's own bound is its multiply-accumulates
per window, cropped vs convolutional (counted here with forward hooks). Also: the cost of
a whole pyramid (fcn) as the scale step shrinks. Notebook 01_sliding_window_pyramid.

Shapes: image ``[3, 480, 640]``; windows ``[N, 4]``.

Dimension legend: N windows.
"""

from __future__ import annotations

import math
import time

import torch

from sodlab.models.classifiers import PatchClassifier, build_patch_classifier, score_crops
from sodlab.models.classifiers import score_windows as _score_windows
from sodlab.tiling import image_pyramid, sliding_windows


def conv_macs(model: PatchClassifier, x: torch.Tensor) -> int:
    """Multiply-accumulates of every ``Conv2d`` in one forward pass of ``x``."""
    total = 0

    def hook(mod, _inp, out):
        nonlocal total
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        total += out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def _best(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(*, quick: bool = True, progress: bool = False, height: int = 480, width: int = 640,
        window: int = 24, stride: int = 4, seed: int = 0) -> dict:
    """Windows/s of both ways, their ratio, the overlap ratio and the MAC bound.

    Quick mode times the crop way on the first 4096 windows (its rate does not depend on
    which windows), full mode on all of them; the fcn way always does the whole image.
    """
    torch.manual_seed(seed)
    model = build_patch_classifier(window).eval()
    image = torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))
    boxes = sliding_windows(height, width, window=window, stride=stride)    # [N, 4]
    n_crop = min(len(boxes), 4096) if quick else len(boxes)
    repeats = 2 if quick else 3
    score_crops(model, image, boxes[:256])                                  # warm-up
    _score_windows(model, image, stride=stride, method="fcn")
    crop_s = _best(lambda: score_crops(model, image, boxes[:n_crop], progress=progress), repeats)
    fcn_s = _best(lambda: _score_windows(model, image, stride=stride, method="fcn"), repeats + 1)
    crop_rate, fcn_rate = n_crop / crop_s, len(boxes) / fcn_s
    macs_crop = conv_macs(model, torch.zeros(1, 3, window, window))
    macs_fcn = conv_macs(model, image[None]) / len(boxes) if stride == model.stride else None
    pyramid = {}
    for name, step in (("2", 2.0), ("sqrt2", 2 ** 0.5), ("4rt2", 2 ** 0.25)):
        levels = image_pyramid(image, scale_step=step, min_size=window)

        def all_levels(levels=levels):
            for lv in levels:
                _score_windows(model, lv.image, stride=stride, method="fcn")

        pyramid[name] = {"levels": len(levels), "seconds": _best(all_levels, repeats),
                         "pixels_vs_image": sum(lv.image[0].numel() for lv in levels)
                         / (height * width)}
    overlap = window**2 / stride**2
    return {
        "speedup": fcn_rate / crop_rate,
        "overlap_ratio": overlap,
        "crop_windows_per_s": crop_rate,
        "fcn_windows_per_s": fcn_rate,
        "mac_bound": macs_crop / macs_fcn if macs_fcn else None,
        "speedup_vs_overlap": fcn_rate / crop_rate / overlap,
        "windows": len(boxes), "crop_windows_timed": n_crop,
        "image": [height, width], "window": window, "stride": stride,
        "macs_per_window_crop": macs_crop, "macs_per_window_fcn": macs_fcn,
        "pyramid_fcn": pyramid, "threads": torch.get_num_threads(),
    }
