"""`sodlab eval`: size-wise COCO AP / AR / recall of a detections file, and optionally its TIDE errors.

Layer L4. Reads a ground-truth split folder or ``annotations.json`` and a COCO results
JSON, prints a table (rows tiny/small/medium/large/all; columns AP, AR, R50, n_gt) and
writes the metrics with their provenance to ``--out`` as JSON. ``--buckets`` swaps COCO's
size buckets for AI-TOD's, TinyPerson's or SODA's (``sodlab.metrics.buckets``; the table's
rows follow) and ``--max-dets`` the detections kept per image. ``--protocol wider`` runs
WIDER FACE's own evaluation instead (``sodlab.metrics.wider``): AP on the easy, medium and
hard settings from the official val ``.mat`` files in ``--gt-dir``, for a folder of
WIDER-layout ``.txt`` files or a COCO results JSON.
"""

from __future__ import annotations

import argparse

# The names of sodlab.metrics.buckets.BUCKET_SETS, written out so that --help imports no
# evaluation code (tests/test_eval_buckets.py checks that the two agree).
_BUCKET_SETS = ("coco", "aitod", "tinyperson", "soda")

_EPILOG = """\
buckets use the ground truth's COCO 'area' field with pycocotools' inclusive ranges:
  tiny [0, 16^2] (a subset of small), small [0, 32^2], medium [32^2, 96^2], large [96^2, 1e10]
AP = COCO AP at IoU 0.50:0.95, AR = recall averaged over IoU 0.50:0.95, R50 = recall at IoU
0.50, all at 100 detections per image (--max-dets); -1 marks a bucket with no objects.

--buckets SET: the size buckets of a tiny-object benchmark instead (both ends inclusive;
sizes are sqrt(area) in pixels, as the benchmarks define them; ranges as their official
evaluators', see sodlab/metrics/buckets.py):
  coco        tiny 0-16, small 0-32, medium 32-96, large 96+ (the default)
  aitod       AI-TOD: verytiny 0-8, tiny 8-16, small 16-32, medium 32+; its evaluator uses
              --max-dets 1500
  tinyperson  TinyPerson: tiny1 1-8, tiny2 8-12, tiny3 12-20, tiny 1-20, small 20-32,
              reasonable 32+ (at COCO's IoUs, not TinyPerson's 0.25/0.5/0.75)
  soda        SODA-D/SODA-A: eS 0-12, rS 12-20, gS 20-32, normal 32 to area 2000, and
              small 0-32 (its headline range); AP at --max-dets 100, AR at 1000

--protocol wider: WIDER FACE's own rules (its MATLAB tool's): scores min-max normalised
over all detections, IoU >= 0.5 with +1-pixel boxes, a detection on a face outside the
setting neither true nor false positive, 1,000 score thresholds, AP under the interpolated
precision-recall curve; one AP each for easy, medium and hard.

examples:
  sodlab eval --gt data/synth/quick-seed0/val --dets runs/fpn/dets.json --out metrics.json --errors
  sodlab eval --gt aitod/test --dets dets.json --buckets aitod --max-dets 1500
  sodlab eval --protocol wider --gt-dir eval_tools/ground_truth --dets wider_pred/
  sodlab eval --protocol wider --gt-dir eval_tools/ground_truth --gt wider/val --dets dets.json
"""


def register(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate detections by object size (COCO AP/AR, TIDE errors)",
        description="Evaluate COCO-format detections against a ground-truth split, per object "
        "size bucket, or by WIDER FACE's own protocol (--protocol wider).", epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=("coco", "wider"), default="coco",
                   help="coco: AP/AR by object size (default); wider: WIDER FACE's "
                   "easy/medium/hard AP")
    p.add_argument("--gt", default=None, metavar="ANN",
                   help="ground truth: a split folder or its annotations.json (COCO); with "
                   "--protocol wider, what maps a results JSON's image ids to WIDER files "
                   "(not needed for a .txt folder or results that carry file_name)")
    p.add_argument("--gt-dir", default=None, metavar="DIR",
                   help="--protocol wider: folder with wider_face_val.mat and "
                   "wider_{easy,medium,hard}_val.mat")
    p.add_argument("--dets", required=True, metavar="DETS.json|DIR",
                   help="detections: a COCO results JSON list (image_id, category_id, bbox, "
                   "score); with --protocol wider also a folder of <event>/<file>.txt")
    p.add_argument("--out", metavar="metrics.json", default=None,
                   help="write the metrics (and errors) with provenance to this JSON file")
    p.add_argument("--buckets", default="coco", metavar="{" + ",".join(_BUCKET_SETS) + "}",
                   help="size buckets: coco (tiny/small/medium/large, the default), aitod "
                   "(AI-TOD), tinyperson (TinyPerson) or soda (SODA-D/A); ranges below")
    p.add_argument("--max-dets", default="100", metavar="N",
                   help="highest-scoring detections kept per image and category (default "
                   "100, COCO's; AI-TOD's evaluator uses 1500)")
    p.add_argument("--errors", action="store_true",
                   help="also break false positives and misses into TIDE error types per "
                   "bucket")
    p.set_defaults(func=run)


def _fmt(v: float) -> str:
    return "    -" if v < 0 else f"{v:5.3f}"


def format_table(m: dict, buckets: tuple[str, ...] = ("tiny", "small", "medium", "large")) -> str:
    """The metrics as a fixed-width table: one row per bucket (COCO's by default), then ``all``."""
    w = max(8, *(len(b) for b in buckets))
    lines = [f"{'bucket':<{w}} {'AP':>6} {'AR':>6} {'R50':>6} {'n_gt':>7}"]
    for b in (*buckets, "all"):
        sfx = "" if b == "all" else f"_{b}"
        lines.append(f"{b:<{w}} {_fmt(m['AP' + sfx]):>6} {_fmt(m['AR' + sfx]):>6} "
                     f"{_fmt(m['R50' + sfx]):>6} {m['n_gt_' + b]:>7d}")
    lines.append(f"AP50 {_fmt(m['AP50'])}   AP75 {_fmt(m['AP75'])}   detections {m['n_dets']}")
    return "\n".join(lines)


def format_errors(e: dict) -> str:
    """TIDE error counts per bucket, and dAP over all objects."""
    from sodlab.metrics import ERROR_TYPES

    short = {"classification": "cls", "localisation": "loc", "both": "both",
             "duplicate": "dupe", "background": "bkg", "missed": "miss"}
    head = f"{'bucket':<8}" + "".join(f"{short[t]:>7}" for t in ERROR_TYPES) + f"{'tp':>7}"
    lines = [f"TIDE errors (fg IoU {e['fg_iou']}, bg IoU {e['bg_iou']})", head]
    for b, row in e["counts"].items():
        lines.append(f"{b:<8}" + "".join(f"{row[t]:>7d}" for t in ERROR_TYPES)
                     + f"{row['tp']:>7d}")
    lines += ["", f"dAP: AP@{e['fg_iou']} gained by fixing each error type",
              f"{'bucket':<8}" + "".join(f"{short[t]:>7}" for t in ERROR_TYPES) + f"{'AP':>7}"]
    for b, row in e["dAP"].items():
        lines.append(f"{b:<8}" + "".join(f"{_fmt(row[t]):>7}" for t in ERROR_TYPES)
                     + f"{_fmt(e['AP'][b]):>7}")
    return "\n".join(lines)


def format_wider(m: dict) -> str:
    """WIDER FACE's AP per setting as a fixed-width table."""
    lines = [f"{'setting':<8} {'AP':>6} {'recall':>7} {'n_faces':>8}"]
    for s in ("easy", "medium", "hard"):
        lines.append(f"{s:<8} {_fmt(m[s]):>6} {_fmt(m['recall_' + s]):>7} "
                     f"{m['n_faces_' + s]:>8d}")
    lines.append(f"images {m['n_images']} ({m['n_images_with_dets']} with detections)   "
                 f"detections {m['n_dets']}")
    return "\n".join(lines)


def run_wider(args) -> int:
    import time
    from pathlib import Path

    from sodlab.errors import InputError
    from sodlab.files import sha256_file, write_json
    from sodlab.metrics.wider import GT_FILE, evaluate_wider
    from sodlab.provenance import provenance

    if not args.gt_dir:
        raise InputError("--protocol wider needs --gt-dir (the folder with the official "
                         "wider_*_val.mat files)")
    if args.errors:
        raise InputError("--errors (TIDE) goes with --protocol coco only")
    t0 = time.perf_counter()
    metrics = evaluate_wider(args.gt_dir, args.dets, coco_gt=args.gt)
    print(format_wider(metrics))
    if args.out:
        out = {"protocol": "wider", "gt_dir": str(args.gt_dir), "dets": str(args.dets),
               "metrics": metrics,
               "provenance": provenance(data_hash=sha256_file(Path(args.gt_dir) / GT_FILE),
                                        seconds=time.perf_counter() - t0)}
        write_json(args.out, out)
        print(f"wrote {args.out}")
    return 0


def _max_dets(text: str) -> int:
    """``--max-dets`` as a whole number >= 1 (an ``InputError`` otherwise, one line)."""
    from sodlab.errors import InputError

    try:
        n = int(str(text).strip())
    except ValueError:
        raise InputError(f"--max-dets must be a whole number >= 1, got {text!r}") from None
    if n < 1:
        raise InputError(f"--max-dets must be >= 1 (detections kept per image), got {n}")
    return n


def _bucket_args(args):
    """``(bucket set, max dets)`` from ``--buckets`` / ``--max-dets``, checked with ``--errors``."""
    from sodlab.errors import InputError
    from sodlab.metrics.buckets import bucket_set

    bset, max_dets = bucket_set(args.buckets), _max_dets(args.max_dets)
    if args.errors and (bset.name != "coco" or max_dets != 100):
        raise InputError("--errors (TIDE) counts in COCO's buckets at 100 detections per "
                         "image; leave out --buckets/--max-dets or --errors")
    return bset, max_dets


def run(args) -> int:
    import time
    from pathlib import Path

    from sodlab.errors import InputError
    from sodlab.files import sha256_file, write_json
    from sodlab.metrics import error_breakdown, evaluate, load_dets, load_gt
    from sodlab.provenance import provenance

    if args.protocol == "wider":
        if args.buckets != "coco" or _max_dets(args.max_dets) != 100:
            raise InputError("--buckets and --max-dets go with --protocol coco only (WIDER "
                             "FACE's protocol has its own easy/medium/hard settings)")
        return run_wider(args)
    if not args.gt:
        raise InputError("--protocol coco needs --gt (a split folder or annotations.json)")
    bset, max_dets = _bucket_args(args)
    t0 = time.perf_counter()
    gt = load_gt(args.gt)
    dets = load_dets(args.dets, gt)
    metrics = evaluate(gt, dets, buckets=bset.name, max_dets=max_dets)
    out = {"gt": str(args.gt), "dets": str(args.dets), "metrics": metrics}
    if bset.name != "coco" or max_dets != 100:
        print(f"buckets: {bset.name} ({bset.about}); at most {max_dets} detections per "
              "image and category")
        out.update(buckets=bset.name, max_dets=max_dets)
    print(format_table(metrics, bset.buckets))
    if args.errors:
        errors = error_breakdown(gt, dets)
        print()
        print(format_errors(errors))
        out["errors"] = errors
    if args.out:
        gt_file = Path(args.gt) / "annotations.json" if Path(args.gt).is_dir() else args.gt
        out["provenance"] = provenance(data_hash=sha256_file(gt_file),
                                       seconds=time.perf_counter() - t0)
        write_json(args.out, out)
        print(f"wrote {args.out}")
    return 0
