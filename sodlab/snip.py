"""Scale normalisation: SNIP valid ranges per scale and SNIPER chips that cover valid objects.

SNIP (Singh & Davis 2018) trains and tests an image at several scales, and at each scale
only objects whose size sqrt(w*h) *in original pixels* lies in that scale's valid range
count; the others are ignored (their anchors are neither positive nor negative). SNIPER
(Singh et al. 2018) does the same on K x K chips: at each scale, chips placed with a
stride are chosen greedily until every valid object lies fully inside one; negative chips
come from a first detector's proposals that no positive chip covers. Taught in
notebook 05_snip_sniper.

Shapes: boxes ``[N, 4]`` xyxy in original pixels; chips ``[C, 4]`` xyxy in the pixels of
the *scaled* image; scales are factors applied to the original image.

Dimension legend: N objects, C candidate chips, K chip side, S scales.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass

import torch

from sodlab.boxes import scale_boxes, sqrt_wh
from sodlab.errors import InputError
from sodlab.nms import soft_nms
from sodlab.tiling import flush_starts, resize_image

# SNIP's table (original pixels, sqrt(w*h)): [0, 80] at 1400, [40, 160] at 800,
# [120, inf) at 480 (short side). Those scales are about 2.9x, 1.7x and 1.0x of a COCO
# image. Our detector's anchors are the FPN paper's divided by 4 and our images are about
# COCO's size, so we keep the paper's structure (three scales an octave apart, overlapping
# ranges whose bounds halve and double) and divide the range bounds by 2.5:
PAPER_RANGES = ((0.0, 80.0), (40.0, 160.0), (120.0, math.inf))
DEFAULT_SCALES = (2.0, 1.0, 0.5)
DEFAULT_RANGES = ((0.0, 32.0), (16.0, 64.0), (48.0, math.inf))


def check_ranges(scales: tuple[float, ...], ranges: tuple[tuple[float, float], ...],
                 *, max_size: float = math.inf) -> None:
    """Raise InputError for an empty range, a bad scale, or a size in [0, max_size) no scale takes."""
    if len(scales) != len(ranges) or not scales:
        raise InputError(f"need one valid range per scale, got {len(scales)} scales and "
                         f"{len(ranges)} ranges")
    for s, (lo, hi) in zip(scales, ranges):
        if not s > 0:
            raise InputError(f"scale {s} must be > 0")
        if not lo < hi:
            raise InputError(f"valid range [{lo}, {hi}] at scale {s} is empty")
    # the union of ranges must cover [0, max_size): walk the sorted intervals
    reach = 0.0
    for lo, hi in sorted(ranges):
        if lo > reach:
            raise InputError(f"objects of size {reach:g}-{lo:g} px (sqrt(w*h)) are valid at no "
                             "scale; make the ranges overlap or touch")
        reach = max(reach, hi)
    if reach < max_size:
        raise InputError(f"objects larger than {reach:g} px are valid at no scale")


def valid_mask(boxes: torch.Tensor, valid_range: tuple[float, float]) -> torch.Tensor:
    """Objects whose sqrt(w*h) in original pixels lies in ``[lo, hi]``. ``[N]`` bool."""
    size = sqrt_wh(boxes)  # [N]
    return (size >= valid_range[0]) & (size <= valid_range[1])


def candidate_chips(height: int, width: int, *, chip: int, stride: int) -> torch.Tensor:
    """K x K chips placed every ``stride`` px over an image (last row/column flush with the edge).

    An image smaller than the chip gets one chip at the origin (it is padded in training).
    Returns ``[C, 4]``.
    """
    if chip <= 0 or stride <= 0:
        raise InputError(f"chip size and stride must be > 0, got {chip} and {stride}")

    ys, xs = flush_starts(height, chip, stride), flush_starts(width, chip, stride)
    grid = torch.tensor([[x, y, x + chip, y + chip] for y in ys for x in xs], dtype=torch.float32)
    return grid  # [C, 4]


def inside(boxes: torch.Tensor, chips: torch.Tensor) -> torch.Tensor:
    """``[C, N]`` bool: box n lies fully inside chip c."""
    b = boxes[None]  # [1, N, 4]
    c = chips[:, None]  # [C, 1, 4]
    return ((b[..., 0] >= c[..., 0]) & (b[..., 1] >= c[..., 1])
            & (b[..., 2] <= c[..., 2]) & (b[..., 3] <= c[..., 3]))


def greedy_cover(cover: torch.Tensor) -> list[int]:
    """Greedy set cover: pick the chip covering most uncovered objects until none is left.

    ``cover [C, N]`` bool. Objects no chip covers are left out (the caller reports them).
    Ties go to the lowest chip index, so the result is deterministic.
    """
    left = cover.any(0).clone()  # [N] coverable and not yet covered
    chosen: list[int] = []
    while left.any():
        gain = (cover & left[None]).sum(1)  # [C]
        best = int(torch.argmax(gain))
        chosen.append(best)
        left &= ~cover[best]
    return chosen


@dataclass
class ChipPlan:
    """Chips for one image at one scale: positive chips and the objects each covers."""

    scale: float
    chips: torch.Tensor  # [P, 4] in scaled-image pixels
    valid: torch.Tensor  # [N] bool, objects valid at this scale
    uncoverable: torch.Tensor  # [N] bool, valid objects larger than a chip


def positive_chips(boxes: torch.Tensor, height: int, width: int, *, scale: float,
                   valid_range: tuple[float, float], chip: int = 256, stride: int = 32
                   ) -> ChipPlan:
    """SNIPER's positive chips for one image at one scale (boxes in original pixels)."""
    sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    valid = valid_mask(boxes, valid_range)  # [N]
    scaled = scale_boxes(boxes, scale)  # [N, 4]
    cands = candidate_chips(sh, sw, chip=chip, stride=stride)  # [C, 4]
    cover = inside(scaled, cands) & valid[None]  # [C, N]
    chosen = greedy_cover(cover)
    uncoverable = valid & ~cover.any(0)
    return ChipPlan(scale=scale, chips=cands[chosen], valid=valid, uncoverable=uncoverable)


def negative_chips(proposals: torch.Tensor, positive: torch.Tensor, height: int, width: int, *,
                   scale: float, chip: int = 256, stride: int = 32, min_proposals: int = 10,
                   max_chips: int = 2) -> torch.Tensor:
    """Chips holding at least ``min_proposals`` proposals that no positive chip covers.

    ``proposals [M, 4]`` in original pixels (from a first detector), ``positive [P, 4]`` in
    scaled pixels. Chosen greedily, at most ``max_chips``. Returns ``[Q, 4]``.
    """
    sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    props = scale_boxes(proposals, scale)  # [M, 4]
    covered = inside(props, positive).any(0) if len(positive) else torch.zeros(
        len(props), dtype=torch.bool)
    props = props[~covered]
    cands = candidate_chips(sh, sw, chip=chip, stride=stride)
    cover = inside(props, cands)  # [C, M']
    out: list[int] = []
    left = torch.ones(cover.shape[1], dtype=torch.bool)
    while len(out) < max_chips:
        gain = (cover & left[None]).sum(1)
        best = int(torch.argmax(gain)) if len(gain) else 0
        if len(gain) == 0 or int(gain[best]) < min_proposals:
            break
        out.append(best)
        left &= ~cover[best]
    return cands[out]


# --------------------------------------------------------------------------- training transforms
def _resize(image: torch.Tensor, factor: float) -> torch.Tensor:
    _, h, w = image.shape
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    return resize_image(image, size, antialias=factor < 1)


def _ignore_invalid(target: dict, valid: torch.Tensor) -> dict:
    out = dict(target)
    out["iscrowd"] = target["iscrowd"] | ~valid
    out.pop("masks", None)  # masks are not resized here; SNIP training needs none
    return out


# The scale index every SnipScale call must use (None: draw one per image). The engine sets
# it around each item of a batch so a whole batch shares one scale (``fixed_scale``).
_FIXED_SCALE: contextvars.ContextVar[int | None] = contextvars.ContextVar("snip_scale",
                                                                          default=None)


@contextlib.contextmanager
def fixed_scale(k: int | None):
    """Inside the block, ``SnipScale`` uses scale index ``k`` instead of drawing one."""
    token = _FIXED_SCALE.set(k)
    try:
        yield
    finally:
        _FIXED_SCALE.reset(token)


class SnipScale:
    """SNIP training transform ``t(image, target, g)``: one scale at random, out-of-range ignored.

    Works on the original image (put it first, instead of ``ResizeLongest``): scale ``s``
    resizes the image so its longest side is ``s * input_size``; objects whose sqrt(w*h) in
    *original* pixels lies outside that scale's range become ``iscrowd`` (ignored: their
    anchors are neither positive nor negative). With a single scale and range [0, inf) it is
    ``ResizeLongest(input_size)``; with several scales and all ranges [0, inf) it is plain
    multi-scale training (MST), the baseline SNIP must beat.

    Inside ``fixed_scale(k)`` the scale index is ``k`` (the draw from ``g`` still happens, so
    the item's other random choices are unchanged): the engine uses it to give every image
    of a batch one scale, so a batch is not padded to its largest image.
    """

    def __init__(self, scales=DEFAULT_SCALES, ranges=DEFAULT_RANGES, *, input_size: int) -> None:
        check_ranges(tuple(scales), tuple(ranges))
        self.scales, self.ranges, self.input_size = tuple(scales), tuple(ranges), input_size

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        k = int(torch.randint(len(self.scales), (1,), generator=g))
        fixed = _FIXED_SCALE.get()
        if fixed is not None:
            if not 0 <= fixed < len(self.scales):
                raise ValueError(f"fixed scale index {fixed} outside 0..{len(self.scales) - 1}")
            k = fixed
        valid = valid_mask(target["boxes"], self.ranges[k])
        factor = self.scales[k] * self.input_size / max(image.shape[1:])
        out = _ignore_invalid(target, valid)
        out["boxes"] = scale_boxes(target["boxes"], factor)
        out["area"] = target["area"] * factor**2
        out["snip_scale"] = self.scales[k]
        return _resize(image, factor), out


class SniperChip:
    """SNIPER training transform: a random scale, then one of its positive chips, cropped.

    Objects that are invalid at the scale, or not fully inside the chip, are kept (clipped)
    as ignored regions; objects entirely outside the chip are dropped. With probability
    ``p_negative`` and proposals for the image (``proposals[image_id] -> [M, 4]`` original
    pixels), a negative chip is used instead when there is one.
    """

    def __init__(self, scales=DEFAULT_SCALES, ranges=DEFAULT_RANGES, *, input_size: int,
                 chip: int = 256, stride: int = 32, proposals: dict | None = None,
                 p_negative: float = 0.2) -> None:
        check_ranges(tuple(scales), tuple(ranges))
        self.scales, self.ranges = tuple(scales), tuple(ranges)
        self.input_size, self.chip, self.stride = input_size, chip, stride
        self.proposals, self.p_negative = proposals or {}, p_negative

    def __call__(self, image: torch.Tensor, target: dict, g: torch.Generator):
        _, H, W = image.shape
        k = int(torch.randint(len(self.scales), (1,), generator=g))
        factor = self.scales[k] * self.input_size / max(H, W)
        boxes = target["boxes"]
        plan = positive_chips(boxes, H, W, scale=factor, valid_range=self.ranges[k],
                              chip=self.chip, stride=self.stride)
        chips = plan.chips
        props = self.proposals.get(target.get("image_id"))
        if props is not None and float(torch.rand((), generator=g)) < self.p_negative:
            neg = negative_chips(props, chips, H, W, scale=factor, chip=self.chip,
                                 stride=self.stride)
            if len(neg):
                chips = neg
        if len(chips) == 0:  # no valid object at this scale: a random chip (all negative)
            cands = candidate_chips(round(H * factor), round(W * factor), chip=self.chip,
                                    stride=self.stride)
            chips = cands[int(torch.randint(len(cands), (1,), generator=g))][None]
        c = chips[int(torch.randint(len(chips), (1,), generator=g))]  # [4]
        x1, y1 = int(c[0]), int(c[1])
        scaled = _resize(image, factor)[:, y1:y1 + self.chip, x1:x1 + self.chip]
        sb = scale_boxes(boxes, factor) - torch.tensor([x1, y1, x1, y1], dtype=torch.float32)
        full = inside(sb, torch.tensor([[0.0, 0.0, self.chip, self.chip]]))[0]  # [N]
        clipped = sb.clone()
        clipped[:, 0::2] = clipped[:, 0::2].clamp(0, min(self.chip, scaled.shape[2]))
        clipped[:, 1::2] = clipped[:, 1::2].clamp(0, min(self.chip, scaled.shape[1]))
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        out = _ignore_invalid(target, plan.valid & full)
        out["boxes"] = clipped[keep]
        out["labels"] = target["labels"][keep]
        out["iscrowd"] = out["iscrowd"][keep]
        out["area"] = (target["area"] * factor**2)[keep]
        out["snip_scale"] = self.scales[k]
        return scaled, out


# --------------------------------------------------------------------------- multi-scale inference
def multiscale_predict(predict_fn, image: torch.Tensor, *, factors: tuple[float, ...],
                       ranges: tuple[tuple[float, float], ...], merge: str = "nms",
                       iou: float = 0.5, max_dets: int = 100) -> dict:
    """SNIP's test-time rule: detect at each scale, keep the detections in its range, merge.

    ``predict_fn(image [3, h, w]) -> {"boxes" [D, 4] in that image's pixels, "scores",
    "labels"}`` runs the detector on the tensor as given. ``factors[k]`` resizes ``image``
    ``[3, H, W]``; a detection at scale k survives if its sqrt(w*h) in *original* pixels lies
    in ``ranges[k]``. ``merge``: ``"nms"`` (class-wise, ``iou``) or ``"soft"`` (soft-NMS, as
    the paper). Boxes come back in ``image``'s pixels.
    """
    import torchvision

    from sodlab.errors import InputError

    if len(factors) != len(ranges):
        raise InputError(f"need one valid range per scale, got {len(factors)} and {len(ranges)}")
    if merge not in ("nms", "soft"):
        raise InputError(f"merge must be 'nms' or 'soft', got {merge!r}")
    bs, ss, ls = [], [], []
    for f, rng in zip(factors, ranges):
        det = predict_fn(_resize(image, f) if f != 1 else image)
        b = scale_boxes(det["boxes"].float(), 1.0 / f)  # [D, 4] original px
        keep = valid_mask(b, rng)
        bs.append(b[keep])
        ss.append(det["scores"][keep].float())
        ls.append(det["labels"][keep].long())
    boxes, scores, labels = torch.cat(bs), torch.cat(ss), torch.cat(ls)
    if merge == "soft":
        keep, decayed = soft_nms(boxes, scores, labels)  # Gaussian, sigma 0.5
        scores = scores.clone()
        scores[keep] = decayed
    else:
        keep = torchvision.ops.batched_nms(boxes, scores, labels, iou)
    keep = keep[:max_dets]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


def epoch_pixels(sizes: list[tuple[int, int]], boxes: list[torch.Tensor], *,
                 scales: tuple[float, ...] = DEFAULT_SCALES,
                 ranges: tuple[tuple[float, float], ...] = DEFAULT_RANGES, input_size: int,
                 chip: int = 256, stride: int = 32) -> dict:
    """Pixels one epoch processes: single scale, full images at every scale, SNIPER chips.

    ``sizes[i] = (H, W)``, ``boxes[i] [N, 4]`` original px. Scale s resizes an image so its
    longest side is ``s * input_size`` (as ``SnipScale``/``SniperChip``); "single" is scale 1.
    Returns ``{"single", "multi_scale", "sniper", "chips"}`` (pixels; chips = count).
    """
    single = multi = chips = 0
    for (h, w), b in zip(sizes, boxes):
        for s, rng in zip(scales, ranges):
            f = s * input_size / max(h, w)
            sh, sw = max(1, round(h * f)), max(1, round(w * f))
            multi += sh * sw
            if s == 1:
                single += sh * sw
            chips += len(positive_chips(b, h, w, scale=f, valid_range=rng, chip=chip,
                                        stride=stride).chips)
    if 1 not in scales:
        single = sum(round(h * input_size / max(h, w)) * round(w * input_size / max(h, w))
                     for h, w in sizes)
    return {"single": single, "multi_scale": multi, "sniper": chips * chip * chip,
            "chips": chips}
