"""`sodlab eval`: size-wise COCO AP / AR / recall of a detections file, and optionally its TIDE errors.

Layer L4. Reads a ground-truth split folder or ``annotations.json`` and a COCO results
JSON, prints a table (rows tiny/small/medium/large/all; columns AP, AR, R50, n_gt) and
writes the metrics with their provenance to ``--out`` as JSON. ``--protocol wider`` runs
WIDER FACE's own evaluation instead (``sodlab.metrics.wider``): AP on the easy, medium and
hard settings from the official val ``.mat`` files in ``--gt-dir``, for a folder of
WIDER-layout ``.txt`` files or a COCO results JSON.
"""

from __future__ import annotations

import argparse

_EPILOG = """\
buckets use the ground truth's COCO 'area' field with pycocotools' inclusive ranges:
  tiny [0, 16^2] (a subset of small), small [0, 32^2], medium [32^2, 96^2], large [96^2, 1e10]
AP = COCO AP at IoU 0.50:0.95, AR = recall averaged over IoU 0.50:0.95, R50 = recall at IoU
0.50, all at 100 detections per image; -1 marks a bucket with no objects.

--protocol wider: WIDER FACE's own rules (its MATLAB tool's): scores min-max normalised
over all detections, IoU >= 0.5 with +1-pixel boxes, a detection on a face outside the
setting neither true nor false positive, 1,000 score thresholds, AP under the interpolated
precision-recall curve; one AP each for easy, medium and hard.

examples:
  sodlab eval --gt data/synth/quick-seed0/val --dets runs/fpn/dets.json --out metrics.json --errors
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
    p.add_argument("--errors", action="store_true",
                   help="also break false positives and misses into TIDE error types per "
                   "bucket")
    p.set_defaults(func=run)


def _fmt(v: float) -> str:
    return "    -" if v < 0 else f"{v:5.3f}"


def format_table(m: dict) -> str:
    """The metrics as a fixed-width table: one row per bucket."""
    lines = [f"{'bucket':<8} {'AP':>6} {'AR':>6} {'R50':>6} {'n_gt':>7}"]
    for b in ("tiny", "small", "medium", "large", "all"):
        sfx = "" if b == "all" else f"_{b}"
        lines.append(f"{b:<8} {_fmt(m['AP' + sfx]):>6} {_fmt(m['AR' + sfx]):>6} "
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


def run(args) -> int:
    import time
    from pathlib import Path

    from sodlab.errors import InputError
    from sodlab.files import sha256_file, write_json
    from sodlab.metrics import error_breakdown, evaluate, load_dets, load_gt
    from sodlab.provenance import provenance

    if args.protocol == "wider":
        return run_wider(args)
    if not args.gt:
        raise InputError("--protocol coco needs --gt (a split folder or annotations.json)")
    t0 = time.perf_counter()
    gt = load_gt(args.gt)
    dets = load_dets(args.dets, gt)
    metrics = evaluate(gt, dets)
    print(format_table(metrics))
    out = {"gt": str(args.gt), "dets": str(args.dets), "metrics": metrics}
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
