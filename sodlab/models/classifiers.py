"""Fixed-size patch classifiers (face vs background) and two ways of scoring every window.

A small all-convolutional CNN sees a ``window`` x ``window`` patch (12, 24 or 48 px, as in
cascade detectors, Li et al. 2015) and ends in a convolution whose kernel covers what is
left of the patch, so its output is one logit. With valid (unpadded) convolutions the
*same* weights run on a whole image and give a score map whose cell ``(i, j)`` is the
score of the window at ``(x, y) = (j * stride, i * stride)``, ``stride`` the network's total
stride (OverFeat, Sermanet et al. 2014). ``score_crops`` is the honest reference: cut every
window out and classify the crops in batches. Taught in notebook 01_sliding_window_pyramid.

Shapes: patches ``[B, 3, window, window]`` -> logits ``[B]``; an image ``[3, H, W]`` ->
score map ``[ny, nx]``; windows ``[N, 4]`` xyxy level pixels; scores in (0, 1).

Dimension legend: B batch, N windows, H W image height/width, ny nx window rows/columns,
D detections.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from sodlab.errors import InputError
from sodlab.tiling import image_pyramid, map_to_original, merge_detections, sliding_windows

# Layers per input size: ("conv", out_channels, kernel) | ("pool",); a last conv (kernel =
# what is left) and a 1x1 logit follow. Total strides: 12 -> 2, 24 -> 4, 48 -> 8.
ARCHS: dict[int, list[tuple]] = {
    12: [("conv", 16, 3), ("pool",), ("conv", 32, 3)],
    24: [("conv", 16, 3), ("conv", 16, 3), ("pool",), ("conv", 32, 3), ("pool",)],
    48: [("conv", 16, 3), ("conv", 16, 3), ("pool",), ("conv", 32, 3), ("pool",),
         ("conv", 32, 3), ("pool",)],
}


class PatchClassifier(nn.Module):
    """Valid convolutions + 2x2 max-pools + a conv over the remaining extent + a 1x1 logit.

    ``forward(x [B, 3, h, w]) -> logits [B, h', w']`` with ``h' = (h - window) // stride + 1``
    when ``h - window`` is a multiple of ``stride`` (a crop of exactly ``window`` gives 1 x 1).
    BatchNorm is an affine map per channel in ``eval()`` mode, so it keeps the equivalence.
    """

    def __init__(self, *, window: int, layers: list[tuple], head_channels: int = 32):
        super().__init__()
        mods: list[nn.Module] = []
        c, size, stride = 3, window, 1
        for spec in layers:
            if spec[0] == "conv":
                _, out, k = spec
                mods += [nn.Conv2d(c, out, k), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                c, size = out, size - k + 1
            else:
                if size % 2:
                    raise ValueError(f"pooling an odd size {size} breaks window alignment")
                mods.append(nn.MaxPool2d(2))
                size, stride = size // 2, stride * 2
        mods += [nn.Conv2d(c, head_channels, size), nn.ReLU(inplace=True),
                 nn.Conv2d(head_channels, 1, 1)]
        self.body = nn.Sequential(*mods)
        self.window = window
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.5) / 0.25  # fixed normalisation: the same for a crop and a whole image
        return self.body(x)[:, 0]                                       # [B, h', w']

    def classify(self, patches: torch.Tensor) -> torch.Tensor:
        """Logits of ``[B, 3, window, window]`` patches. ``[B]``"""
        if patches.shape[-2:] != (self.window, self.window):
            raise InputError(f"patches must be {self.window}x{self.window}, "
                             f"got {tuple(patches.shape[-2:])}")
        return self(patches).reshape(-1)


def build_patch_classifier(window: int = 24, *, head_channels: int = 32) -> PatchClassifier:
    """The patch classifier for ``window`` in ``ARCHS`` (12, 24 or 48 px)."""
    if window not in ARCHS:
        raise InputError(f"no patch classifier for a {window} px window; choose {sorted(ARCHS)}")
    return PatchClassifier(window=window, layers=ARCHS[window], head_channels=head_channels)


def crop_windows(image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Integer square windows ``[N, 4]`` cut out of ``image [C, H, W]``. ``[N, C, win, win]``"""
    x0, y0 = boxes[:, 0].long(), boxes[:, 1].long()                      # [N]
    win = int(boxes[0, 2] - boxes[0, 0])
    ar = torch.arange(win)
    rows = (y0[:, None] + ar)[:, :, None]                                # [N, win, 1]
    cols = (x0[:, None] + ar)[:, None, :]                                # [N, 1, win]
    return image[:, rows, cols].permute(1, 0, 2, 3)                      # [N, C, win, win]


@torch.no_grad()
def score_crops(model: PatchClassifier, image: torch.Tensor, boxes: torch.Tensor, *,
                batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Reference: crop every window and classify the crops, ``batch_size`` at a time. ``[N]``"""
    model.eval()
    out = []
    for start in tqdm(range(0, len(boxes), batch_size), disable=not progress, desc="crops"):
        patches = crop_windows(image, boxes[start:start + batch_size])   # [b, C, win, win]
        out.append(torch.sigmoid(model.classify(patches)))
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def score_map(model: PatchClassifier, image: torch.Tensor) -> torch.Tensor:
    """One fully-convolutional pass: the score of the window at ``(j*stride, i*stride)``
    in cell ``(i, j)``. ``[ny, nx]`` for ``image [3, H, W]``."""
    model.eval()
    if min(image.shape[-2:]) < model.window:
        raise InputError(f"image of {tuple(image.shape[-2:])} px is smaller than the "
                         f"{model.window} px window")
    return torch.sigmoid(model(image[None])[0])                          # [ny, nx]


@torch.no_grad()
def score_windows(model: PatchClassifier, image: torch.Tensor, *, stride: int,
                  method: str = "fcn", batch_size: int = 256,
                  progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of ``image [3, H, W]`` at ``stride``: ``(boxes [N, 4], scores [N])``.

    ``method="crops"`` crops and classifies; ``"fcn"`` runs the network convolutionally. For
    a stride that is not the network's ``g``, the fcn way runs once per offset ``(rx, ry)``
    in ``{m * stride mod g}`` on the image shifted by that offset (OverFeat's offset trick),
    keeps the cells whose corner is a multiple of ``stride`` and interleaves them, so both
    ways return the same windows in the same (row-major) order.
    """
    H, W = image.shape[-2:]
    win = model.window
    boxes = sliding_windows(H, W, window=win, stride=stride)             # [N, 4]
    if method == "crops":
        return boxes, score_crops(model, image, boxes, batch_size=batch_size, progress=progress)
    if method != "fcn":
        raise InputError(f"scoring method must be 'fcn' or 'crops', got {method!r}")
    g = model.stride
    ny, nx = (H - win) // stride + 1, (W - win) // stride + 1
    out = torch.empty(ny, nx)
    residues = sorted({(m * stride) % g for m in range(g // math.gcd(stride, g))})
    for ry in residues:
        for rx in residues:
            if H - ry < win or W - rx < win:
                continue
            smap = score_map(model, image[:, ry:, rx:])                  # [h', w']
            ys = ry + g * torch.arange(smap.shape[0])                    # corner rows, px
            xs = rx + g * torch.arange(smap.shape[1])
            iy, ix = (ys % stride == 0).nonzero()[:, 0], (xs % stride == 0).nonzero()[:, 0]
            iy, ix = iy[ys[iy] // stride < ny], ix[xs[ix] // stride < nx]
            out[(ys[iy] // stride)[:, None], (xs[ix] // stride)[None, :]] = smap[iy][:, ix]
    return boxes, out.reshape(-1)


@torch.no_grad()
def sliding_window_detect(classifier: PatchClassifier, image: torch.Tensor, *, scale_step: float,
                   min_size: int | None = None, window: int | None = None, stride: int = 4,
                   score_thresh: float = 0.5, nms_iou: float = 0.3, method: str = "fcn",
                   first_scale: float = 1.0, max_levels: int | None = None,
                   max_dets: int | None = 300, batch_size: int = 256,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-scale sliding-window detection: ``(boxes [D, 4] xyxy original px, scores [D])``.

    Builds ``image_pyramid(image, scale_step=, min_size=, first_scale=, max_levels=)``, scores
    every window of every level (``score_windows``), keeps scores >= ``score_thresh``, maps
    the windows back to original pixels and merges all levels with NMS at ``nms_iou``.
    """
    win = classifier.window
    if window is not None and window != win:
        raise InputError(f"window {window} px differs from the classifier's {win} px input")
    levels = image_pyramid(image, scale_step=scale_step, min_size=min_size or win,
                           max_levels=max_levels, first_scale=first_scale)
    all_boxes, all_scores = [], []
    for lv in tqdm(levels, disable=not progress, desc="levels"):
        if min(lv.image.shape[-2:]) < win:
            continue
        boxes, scores = score_windows(classifier, lv.image, stride=stride, method=method,
                                      batch_size=batch_size)
        keep = scores >= score_thresh
        all_boxes.append(map_to_original(boxes[keep], lv.scale))
        all_scores.append(scores[keep])
    boxes = torch.cat(all_boxes) if all_boxes else torch.zeros(0, 4)     # [D, 4]
    scores = torch.cat(all_scores) if all_scores else torch.zeros(0)     # [D]
    return merge_detections(boxes, scores, nms_iou=nms_iou, max_dets=max_dets)
