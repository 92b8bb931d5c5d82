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

import math
from dataclasses import dataclass

import torch

from sodlab.boxes import scale_boxes, sqrt_wh
from sodlab.errors import InputError

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

    def starts(n: int) -> list[int]:
        if n <= chip:
            return [0]
        s = list(range(0, n - chip + 1, stride))
        if s[-1] != n - chip:
            s.append(n - chip)
        return s

    ys, xs = starts(height), starts(width)
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


def pixels_processed(plans: list[ChipPlan], chip: int) -> int:
    """Pixels a training pass over these chips processes (chips are K x K each)."""
    return sum(len(p.chips) for p in plans) * chip * chip
