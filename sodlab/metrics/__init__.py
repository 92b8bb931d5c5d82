"""Size-wise evaluation: COCO AP/AR per bucket, TIDE error breakdown, bootstrap intervals.

Layer L1. ``evaluate`` (``coco.py``, faster-coco-eval underneath), ``error_breakdown``
(``tide.py``), ``bootstrap_ci`` (``bootstrap.py``), ``verdict`` / ``verdict_sentence``
(``verdict.py``: did B move a metric against A, from seeds and intervals),
``evaluate_wider`` (``wider.py``: WIDER FACE's own easy/medium/hard AP). Buckets and
their inclusive area ranges come from ``sodlab.boxes.AREA_RANGES``: tiny [0, 16²] ⊂ small
[0, 32²], medium [32², 96²], large [96², 1e10], on the ground truth's COCO ``area`` field.
``evaluate(buckets=...)`` takes another named set from ``BUCKET_SETS`` (``buckets.py``:
AI-TOD's, TinyPerson's, SODA's ranges) and ``max_dets=`` (100 by default).
"""

from sodlab.metrics.bootstrap import bootstrap_ci
from sodlab.metrics.buckets import BUCKET_SETS
from sodlab.metrics.coco import evaluate, load_dets, load_gt
from sodlab.metrics.tide import ERROR_TYPES, error_breakdown
from sodlab.metrics.verdict import verdict, verdict_sentence
from sodlab.metrics.wider import (
    evaluate_wider,
    load_wider_gt,
    read_wider_dets,
    write_wider_dets,
    write_wider_image,
)

__all__ = ["evaluate", "error_breakdown", "bootstrap_ci", "load_gt", "load_dets", "ERROR_TYPES",
           "verdict", "verdict_sentence", "evaluate_wider", "load_wider_gt", "read_wider_dets",
           "write_wider_dets", "write_wider_image", "BUCKET_SETS"]
