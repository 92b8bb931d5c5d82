"""Named size-bucket sets for evaluation: the area ranges of COCO, AI-TOD, TinyPerson and SODA.

Layer L1. Data only, read by ``sodlab.metrics.coco.evaluate(buckets=...)`` and by
``sodlab eval --buckets``; the ``coco`` set is the one notebook 00 (size buckets) teaches.

Every range is an interval of the ground truth's COCO ``area`` field in square pixels,
inclusive at both ends exactly as pycocotools' ``COCOeval.evaluateImg`` tests it
(``area < lo or area > hi`` leaves a range), so an object whose area sits on a boundary
counts in both neighbouring buckets. Each set starts with its ``all`` range. ``1e10`` is
pycocotools' ``1e5 ** 2``, "no upper bound".

- ``coco``: COCO's small / medium / large (Lin et al. 2014, pycocotools), defined in area,
  plus our ``tiny`` [0, 16²] (a subset of small): ``sodlab.boxes.AREA_RANGES``.
- ``aitod``: AI-TOD (Wang et al. 2021, "Tiny Object Detection in Aerial Images"), defined in
  sqrt(area). The paper names very tiny 2-8 px, tiny 8-16, small 16-32, medium 32-64; its
  official evaluator (aitodpycocotools, github.com/jwwangchn/cocoapi-aitod, ``Params.
  setDetParams``) uses verytiny [0, 8²], tiny [8², 16²], small [16², 32²], medium
  [32², 1e10] and ``maxDets = [1, 100, 1500]``; we use the evaluator's ranges, so numbers
  compare with published AI-TOD tables (pass ``max_dets=1500`` for those).
- ``tinyperson``: TinyPerson (Yu et al. 2020, "Scale Match for Tiny Person Detection"),
  defined in sqrt(area). The paper names tiny1 2-8, tiny2 8-12, tiny3 12-20, tiny 2-20,
  small 20-32, reasonable 32+; its official COCO-style evaluator (github.com/ucas-vg/
  TinyBenchmark, ``evaluation/coco/cocoeval.py``, ``Params`` for ``tiny``) starts at 1²
  instead of 2² (all, tiny and tiny1 are [1², ...]), which we follow. That evaluator also
  uses IoU 0.25/0.5/0.75, ``maxDets = [200]`` and ignore regions matched by IoD; here only
  the ranges are TinyPerson's, IoU thresholds stay COCO's 0.50:0.95.
- ``soda``: SODA-D / SODA-A (Cheng et al. 2023, "Towards Large-Scale Small Object
  Detection: Survey and Benchmarks"), defined in sqrt(area) except Normal's upper end:
  eS [0, 12²], rS [12², 20²], gS [20², 32²], normal [32², 2000] (the official SODA-D
  evaluator, github.com/shaunyuan22/SODA-mmdetection, ``sodad_eval/sodadeval.py``, writes
  Normal as ``[32 ** 2, 40 * 50]``). Its headline AP is over ``Small`` [0, 32²], which we
  keep as the bucket ``small``; it reports AP at 100 and AR at 1000 detections per image
  (``maxDets = [100, 300, 1000]``): run twice for both.
Checked against those three repositories' code; the papers' own tables were not re-read.
"""

from __future__ import annotations

from dataclasses import dataclass

from sodlab.boxes import AREA_RANGES, BUCKETS
from sodlab.errors import InputError

NO_LIMIT = 1e10  # pycocotools' 1e5 ** 2


@dataclass(frozen=True)
class BucketSet:
    """One named set of area ranges: ``ranges`` is ``(label, lo, hi)`` with ``all`` first."""

    name: str
    ranges: tuple[tuple[str, float, float], ...]
    about: str

    @property
    def labels(self) -> tuple[str, ...]:
        """Range labels in evaluation order, ``all`` first (pycocotools' ``areaRngLbl``)."""
        return tuple(r[0] for r in self.ranges)

    @property
    def buckets(self) -> tuple[str, ...]:
        """The bucket labels, without ``all``."""
        return self.labels[1:]

    @property
    def area_rng(self) -> list[list[float]]:
        """pycocotools' ``areaRng``: ``[lo, hi]`` per label, ``all`` first."""
        return [[lo, hi] for _, lo, hi in self.ranges]


def _sq(side: float) -> float:
    return float(side) ** 2


BUCKET_SETS: dict[str, BucketSet] = {s.name: s for s in (
    BucketSet("coco", (("all", *AREA_RANGES["all"]),
                       *((b, *AREA_RANGES[b]) for b in BUCKETS)),
              "COCO's small/medium/large plus tiny (a subset of small), in area: tiny "
              "[0, 16^2], small [0, 32^2], medium [32^2, 96^2], large [96^2, 1e10] (default)"),
    BucketSet("aitod", (("all", 0.0, NO_LIMIT), ("verytiny", 0.0, _sq(8)),
                        ("tiny", _sq(8), _sq(16)), ("small", _sq(16), _sq(32)),
                        ("medium", _sq(32), NO_LIMIT)),
              "AI-TOD (Wang et al. 2021), sqrt(area) in px: verytiny 0-8, tiny 8-16, small "
              "16-32, medium 32+ as its official evaluator (which also uses --max-dets 1500)"),
    BucketSet("tinyperson", (("all", 1.0, NO_LIMIT), ("tiny1", 1.0, _sq(8)),
                             ("tiny2", _sq(8), _sq(12)), ("tiny3", _sq(12), _sq(20)),
                             ("tiny", 1.0, _sq(20)), ("small", _sq(20), _sq(32)),
                             ("reasonable", _sq(32), NO_LIMIT)),
              "TinyPerson (Yu et al. 2020), sqrt(area) in px: tiny1 1-8, tiny2 8-12, tiny3 "
              "12-20, tiny 1-20, small 20-32, reasonable 32+ (COCO IoUs, not its 0.25-0.75)"),
    BucketSet("soda", (("all", 0.0, NO_LIMIT), ("eS", 0.0, _sq(12)), ("rS", _sq(12), _sq(20)),
                       ("gS", _sq(20), _sq(32)), ("normal", _sq(32), 2000.0),
                       ("small", 0.0, _sq(32))),
              "SODA-D/SODA-A (Cheng et al. 2023), sqrt(area) in px: eS 0-12, rS 12-20, gS "
              "20-32, normal 32 to area 2000; small 0-32 is its headline range"),
)}
DEFAULT_BUCKETS = "coco"


def bucket_set(name: str) -> BucketSet:
    """The bucket set called ``name``; an unknown name raises ``InputError`` listing them."""
    if not isinstance(name, str) or name not in BUCKET_SETS:
        raise InputError(f"unknown bucket set {name!r}; choose one of "
                         f"{', '.join(BUCKET_SETS)}")
    return BUCKET_SETS[name]
