"""The papers' reported changes as data: what each technique's paper measured, and our counterpart.

Layer L4. The numbers are those ``docs/methods.md`` sets beside ours, one record per claim:
the technique, the paper, the paper's metric, its baseline and result (in the paper's own
units: AP in points, or a fraction where the paper writes one), the dataset and detector,
and whether the figure is an **ablation** (one change on one detector) or two different
systems side by side. ``ours`` names the same change in the benchmark suite
(``sodlab.bench.suite``): technique A, technique B and our metric, so the report can put
our paired difference B - A (mean over seeds, bootstrap interval, verdict) beside the
paper's. Only the direction of an effect compares across such different data, budgets and
backbones; a row whose paper figure is not an ablation is context, not a test. Figures
marked ``checked=False`` were copied from the paper as the notebooks quote them and were not
checked against a second source. Taught in notebook 10_benchmark_report.

``PaperValue`` holds the few absolute claims (a speed) that sit beside one of our numbers.

Shapes: plain scalars; no tensors. Dimension legend: none.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PaperChange:
    """One reported change: ``baseline -> result`` on ``metric`` (or a relative change)."""

    technique: str                        # the suite's technique this claim is about
    paper: str                            # authors and year
    metric: str                           # the paper's metric, as it names it
    baseline: float | None                # the paper's value before the change
    result: float | None                  # after it
    dataset: str                          # data, detector and backbone of the figure
    ablation: bool                        # one change on one detector
    ours: tuple[str, str, str] | None     # (A, B, our metric): our same change, or None
    unit: str = "points"                  # "points" (AP x 100), "fraction" or "percent"
    relative: float | None = None         # a relative change (0.068 = +6.8 %) when only that is given
    change: str = ""                      # the change, in words
    note: str = ""                        # what differs between their change and ours
    checked: bool = True                  # False: not checked against a second source

    @property
    def delta(self) -> float | None:
        """``result - baseline`` in the paper's units (None when only a relative change is known)."""
        if self.baseline is None or self.result is None:
            return None
        return float(self.result) - float(self.baseline)

    @property
    def relative_delta(self) -> float | None:
        """The change relative to the baseline (given, or ``delta / baseline``)."""
        if self.relative is not None:
            return float(self.relative)
        d = self.delta
        return None if d is None or not self.baseline else d / float(self.baseline)

    @property
    def direction(self) -> int:
        """+1 when the paper's metric went up, -1 down, 0 when no change is given."""
        d = self.delta if self.delta is not None else self.relative_delta
        if d is None or math.isnan(d) or d == 0:
            return 0
        return 1 if d > 0 else -1

    def paper_text(self) -> str:
        """The paper's change as short text, e.g. ``"13.2 -> 17.8 (+4.6 points)"``."""
        if self.delta is not None:
            d = self.delta
            digits = 3 if self.unit == "fraction" else 1
            unit = {"points": " points", "percent": " percentage points",
                    "fraction": ""}.get(self.unit, "")
            return (f"{self.baseline:.{digits}f} \u2192 {self.result:.{digits}f} "
                    f"({d:+.{digits}f}{unit})")
        if self.relative is not None:
            return f"{100 * self.relative:+.1f} % relative"
        return "no change reported"

    def to_dict(self) -> dict:
        return {**asdict(self), "ours": list(self.ours) if self.ours else None,
                "delta": self.delta, "relative_delta": self.relative_delta,
                "direction": self.direction, "paper_text": self.paper_text()}


@dataclass(frozen=True)
class PaperValue:
    """An absolute number a paper reports, beside one of ours (``key`` of ``technique``)."""

    technique: str
    paper: str
    what: str
    value: float
    unit: str
    key: str           # our number: a key of the technique's entry (see ``ours_value``)
    dataset: str
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


KISANTAL = "Kisantal et al. 2019"
LIN = "Lin et al. 2017 (FPN)"
HU = "Hu et al. 2018 (Relation Networks)"

PAPER_CHANGES: tuple[PaperChange, ...] = (
    PaperChange("oversample 3x", KISANTAL, "AP_S (box)", 0.167, 0.177,
                "COCO, Mask R-CNN (ResNet-50 FPN)", True, ("fpn", "oversample 3x", "AP_small"),
                unit="fraction", change="oversample images holding small objects 3x",
                note="ours: on fpn", checked=False),
    PaperChange("copy-paste", KISANTAL, "AP_S (box)", 0.167, 0.179,
                "COCO, Mask R-CNN (ResNet-50 FPN)", True, ("fpn", "copy-paste", "AP_small"),
                unit="fraction", change="copy-paste small objects (best setting)",
                note="ours: pasted with their head-and-body context, on fpn", checked=False),
    PaperChange("fpn", LIN, "AP", 31.6, 33.9, "COCO minival, Faster R-CNN, ResNet-50", True,
                ("baseline", "fpn", "AP"), change="single-level C4 head -> feature pyramid"),
    PaperChange("fpn", LIN, "AP_S", 13.2, 17.8, "COCO minival, Faster R-CNN, ResNet-50", True,
                ("baseline", "fpn", "AP_small"),
                change="single-level C4 head -> feature pyramid"),
    PaperChange("fpn", LIN, "AR_S at 1k proposals (RPN)", 32.0, 44.9,
                "COCO minival, RPN, ResNet-50", True, ("baseline", "fpn", "AR_small"),
                change="single-level RPN -> RPN on the feature pyramid",
                note="ours: recall of the whole detector at 100 detections"),
    PaperChange("image pyramid", "Najibi et al. 2017 (SSH)", "AP, WIDER hard", 81.4, 84.5,
                "WIDER FACE val, SSH, VGG-16", True, ("baseline", "image pyramid", "AP_small"),
                change="a test-time image pyramid",
                note="ours: the same change on our one-level baseline, not on SSH"),
    PaperChange("SNIP", "Singh & Davis 2018 (SNIP)", "AP_S", 19.5, 21.4,
                "COCO, R-FCN (deformable ResNet-101)", True, ("MST", "SNIP", "AP_small"),
                change="multi-scale training -> SNIP's valid ranges",
                note="against multi-scale training, not against single scale", checked=False),
    PaperChange("sliced inference", "Akyon et al. 2022 (SAHI)", "AP", None, None,
                "VisDrone, FCOS", True, ("fpn", "sliced inference", "AP"), unit="percent",
                relative=0.068, change="sliced inference alone (no sliced fine-tuning)",
                note="ours: 2x up-sampled tiles plus the full image, merged by NMS"),
    PaperChange("fpn + NWD", "Xu et al. 2022 (NWD-RKA)", "AP, AI-TOD-v2 val", 12.9, 21.9,
                "AI-TOD-v2, Faster R-CNN", True, ("fpn", "fpn + NWD", "AP"),
                change="IoU -> NWD with ranking-based assignment",
                note="ours: NWD replaces IoU in anchor assignment only (not in NMS or the "
                     "loss), thresholds unchanged in kind", checked=False),
    PaperChange("fpn + NWD", "Xu et al. 2022 (NWD-RKA)", "AP_vt, AI-TOD-v2 val", 0.0, 5.8,
                "AI-TOD-v2, Faster R-CNN", True, ("fpn", "fpn + NWD", "AP_tiny"),
                change="IoU -> NWD with ranking-based assignment",
                note="theirs: very tiny is 2-8 px; ours: COCO's tiny (area <= 16^2)",
                checked=False),
    PaperChange("fpn + sliced training", "Akyon et al. 2022 (SAHI)", "AP", None, None,
                "VisDrone, FCOS", True, ("fpn", "fpn + sliced training", "AP"),
                unit="percent", relative=0.127,
                change="sliced fine-tuning and sliced inference, cumulative",
                note="theirs: fine-tuning on slices plus sliced inference; ours: training "
                     "on tiles with the full-image test", checked=False),
    PaperChange("Perceptual GAN", "Li et al. 2017 (Perceptual GAN)",
                "recall, small signs (area < 32\u00b2)", 87.0, 89.0,
                "Tsinghua-Tencent 100K", False,
                ("Perceptual GAN (perception only)", "Perceptual GAN", "R50_small"),
                unit="percent", change="against Zhu et al. 2016's detector",
                note="theirs: another detector as the baseline; ours: the same generator "
                     "trained without the adversarial branch", checked=False),
    PaperChange("pyramidbox + DAS", "Tang et al. 2018 (PyramidBox)", "AP, WIDER hard", 85.2,
                88.9, "WIDER FACE val, VGG-16", False, ("s3fd", "pyramidbox + DAS", "AP_small"),
                change="S3FD -> PyramidBox", note="theirs: another training setup; ours: "
                "the same budget, WIDER's hard set is mostly small faces", checked=False),
    PaperChange("Relation Networks", HU, "AP", 31.8, 35.2,
                "COCO minival, Faster R-CNN, ResNet-101", True,
                ("RoI head", "Relation Networks", "AP"),
                change="2 fc + NMS -> relation modules + learned duplicate removal"),
    PaperChange("Relation Networks", HU, "AP_S", 10.5, 15.2,
                "COCO minival, Faster R-CNN, ResNet-101", True,
                ("RoI head", "Relation Networks", "AP_small"),
                change="2 fc + NMS -> relation modules + learned duplicate removal"),
    PaperChange("Relation Networks", HU, "AP_S", 11.1, 13.7,
                "COCO minival, Faster R-CNN, ResNet-101", True, None,
                change="relation modules alone, both with soft-NMS",
                note="not run here: our relation detector always has learned NMS"),
)

PAPER_VALUES: tuple[PaperValue, ...] = (
    PaperValue("faceboxes", "Zhang et al. 2017 (FaceBoxes)", "VGA frames/s on one CPU core",
               20.0, "frames/s", "vga_fps_1t", "640 x 480, their CPU",
               note="ours: one thread of this machine, trained weights, fp32"),
)


__all__ = ["PaperChange", "PaperValue", "PAPER_CHANGES", "PAPER_VALUES"]
