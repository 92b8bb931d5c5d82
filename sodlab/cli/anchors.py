"""`sodlab anchors fit`: anchors fitted to a dataset's own objects, and the recall they buy.

Layer L4. Wraps ``sodlab.anchor_fit``: k-means (1 - IoU) on the training boxes' widths and
heights at the preset's input size, the ``--set`` overrides that put those anchors on the
preset's levels, and the best possible recall per size bucket before and after. Prints a
table and the overrides to pass to ``sodlab train``; ``--json OUT`` writes the same. With
``--matcher nwd|dotd`` it also calibrates that measure's thresholds to the preset's IoU
matching on the fitted anchors (``sodlab.anchor_fit.calibrate_thresholds``) and adds them to
the printed overrides.
"""

from __future__ import annotations

import argparse
import shlex

_FIT_EPILOG = """\
best possible recall (BPR): the share of training boxes (crowd boxes left out) to which the
preset's anchors give at least one positive anchor under the preset's own matching rule:
an anchor with IoU >= pos_iou (fpn, baseline, ssh: 0.5; faceboxes, s3fd, pyramidbox: 0.35)
or, for s3fd and pyramidbox, one taken by S3FD's scale compensation (IoU > 0.1; the
starred columns then give the threshold stage alone). The low-quality rule (every box also
takes its best anchor, however poor) is left out, since it would make every recall 100 %:
a box no anchor can match is trained only through that rule, if at all. Boxes are
measured as training sees them: each image resized so its longer side is input_size,
anchors tiled over it. Buckets are COCO's on each box's area in its own image (tiny
<= 16^2, small <= 32^2 including tiny, medium <= 96^2, large), as 'sodlab eval' reports AP.

fitting: k-means on the boxes' (w, h) with distance 1 - IoU (YOLOv2's dimension clusters,
MMDetection's optimize_anchors); each centre becomes an anchor of size sqrt(w h) and ratio
h / w on the level whose preset anchors are nearest in size. Levels no centre lands on keep
their preset sizes; anchor_sizes are printed in the preset's units (px / anchor_scale).
The ratios (h / w) are shared by all levels: the preset's number of them, fewer where the
fitted shapes agree (faces: one), so the fitted anchors are k sizes x those ratios.
--k defaults to the preset's anchor shapes per position, sizes x ratios (fpn 15, s3fd 6).
Recall depends on how densely anchors tile the image as much as on their shapes: more
sizes (a larger --k) raise it, and cost anchors (the count is printed before and after).

--matcher nwd|dotd: also the thresholds at which that measure gives each training box, on
average, as many positive anchors as IoU >= pos_iou does on the fitted anchors (with the
preset's best-anchor rescue), and leaves as many ignored as IoU between neg_iou and pos_iou
(and, for s3fd and pyramidbox, as many compensation candidates as IoU > 0.1); found by
bisection on a grid of the measure's scale, printed rounded to 2 decimals with the mean
positives per box by size (AI-TOD's buckets on sqrt(w h) at the input size).

examples:
  sodlab anchors fit --data data/synth/quick-seed0 --preset fpn
  sodlab anchors fit --data data/synth/quick-seed0 --preset fpn --matcher nwd
  sodlab anchors fit --data my_root --preset s3fd --k 8 --set input_size=512 --json fit.json
"""


def register(sub) -> None:
    p = sub.add_parser("anchors", help="fit anchor sizes and ratios to a dataset's objects",
                       description="Anchor design for your own data: fit anchors to the "
                       "training boxes and measure the best possible recall of a preset.")
    asub = p.add_subparsers(dest="anchors_command", metavar="ACTION", required=True)
    f = asub.add_parser("fit", help="fit anchors to a split's boxes; recall before and after",
                        description="Fit anchors to the training boxes of a dataset for a "
                        "preset; print the best possible recall per size bucket before and "
                        "after, and the --set overrides for 'sodlab train'.",
                        epilog=_FIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--data", metavar="ROOT", required=True,
                   help="dataset root holding the split folder (or the split folder itself)")
    f.add_argument("--preset", required=True,
                   help="detector preset: baseline, fpn, ssh, faceboxes, faceboxes_s16, s3fd, "
                   "pyramidbox or fast")
    f.add_argument("--split", default="train", help="split folder to fit on (default: train)")
    f.add_argument("--k", type=int, default=None,
                   help="number of anchor shapes to fit (default: the preset's anchor sizes "
                   "x ratios)")
    f.add_argument("--seed", type=int, default=0, help="k-means seed (default: 0)")
    f.add_argument("--iters", type=int, default=300, help="k-means iterations at most "
                   "(default: 300)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override the anchors are fitted for, as in 'sodlab train' "
                   "(repeatable; e.g. input_size=512); repeated in the printed line")
    f.add_argument("--matcher", choices=("nwd", "dotd"), default=None,
                   help="also calibrate this measure's thresholds to the preset's IoU matching "
                   "on the fitted anchors, and add them to the printed overrides")
    f.add_argument("--json", metavar="OUT", default=None, help="also write the result as JSON")
    f.set_defaults(func=run_fit)


def _split_dir(root: str, split: str):
    from pathlib import Path

    from sodlab.errors import InputError

    p = Path(root)
    if not p.exists():
        raise InputError(f"{p}: no such folder")
    if (p / split / "annotations.json").is_file():
        return p / split
    if (p / "annotations.json").is_file():
        return p
    raise InputError(f"{p}: no {split}/annotations.json (a dataset root holds split folders "
                     f"such as train/ and val/)")


def _pct(row: dict) -> str:
    return "-" if row["recall"] is None else f"{100 * row['recall']:.1f} %"


def _print_report(rep: dict, split_dir) -> None:
    print(f"preset {rep['preset']} on {split_dir}: {rep['boxes']} boxes in {rep['images']} "
          f"images at input size {rep['input_size']} px ({rep['crowd']} crowd and "
          f"{rep['degenerate']} empty boxes left out)")
    print(f"k-means, k = {rep['k']}, seed {rep['seed']}: anchors (w x h px) " +
          ", ".join(f"{w:g}x{h:g}" for w, h in rep["centres_wh"]))
    print(f"best possible recall (a positive anchor at {rep['rule']}):")
    stages = "before_threshold" in rep
    head = f"  {'bucket':<8}{'boxes':>8}{'before':>10}{'after':>10}"
    print(head + (f"{'before*':>10}{'after*':>10}" if stages else ""))
    for name, before in rep["before"].items():
        cols = [before, rep["after"][name]]
        cols += [rep["before_threshold"][name], rep["after_threshold"][name]] if stages else []
        print(f"  {name:<8}{before['boxes']:>8}" + "".join(f"{_pct(c):>10}" for c in cols))
    if stages:
        print("  * the threshold stage alone, without S3FD compensation")
    print(f"anchors per {rep['input_size']} x {rep['input_size']} image: "
          f"{rep['anchors']['before']} before, {rep['anchors']['after']} after")
    if "calibration" in rep:
        _print_calibration(rep["calibration"], rep["matcher"])
    print("train with:")
    print("  " + " ".join(f"--set {shlex.quote(o)}" for o in rep["overrides"]))


def _print_calibration(cal: dict, kind: str) -> None:
    """The calibrated thresholds and the mean positives per box by size, IoU beside them."""
    t = cal["thresholds"][kind]
    print(f"{kind} thresholds calibrated on the fitted anchors ({cal['rule']}): " +
          ", ".join(f"{kind}_{k} {v:.4f}" for k, v in t.items() if v is not None))
    rows = [r for r in cal["table"] if r["measure"] == "IoU" or r["measure"].lower() == kind]
    buckets = list(rows[0]["positives"])
    print(f"  positives per box  {'':<18}" + "".join(f"{b:>10}" for b in buckets))
    for r in rows:
        label = f"{r['measure']} {r['setting']} ({r['pos']:g} / {r['neg']:g})"
        print(f"  {label:<37}" + "".join("-".rjust(10) if r["positives"][b] is None else
                                        f"{r['positives'][b]:>10.2f}" for b in buckets))


def _with_calibration(rep: dict, data, kind: str) -> dict:
    """``rep`` with ``matcher``, ``calibration`` (``calibrate_thresholds`` on the fitted
    anchors) and the overrides that train with the measure at its calibrated thresholds."""
    from sodlab.anchor_fit import calibrate_thresholds, calibrated_overrides, override_args
    from sodlab.detector import make_config

    cfg = make_config(rep["preset"], num_classes=data.num_classes, overrides=rep["overrides"])
    cal = calibrate_thresholds(cfg, data.boxes, data.image_size, kinds=(kind,))
    extra = dict(calibrated_overrides(cal, kind))
    kept = [o for o in rep["overrides"] if o.split("=", 1)[0].strip() not in extra]
    return {**rep, "matcher": kind, "calibration": cal,
            "overrides": kept + override_args(extra)}


def run_fit(args) -> int:
    from sodlab.detector import PRESETS
    from sodlab.errors import InputError

    if args.preset not in PRESETS:
        raise InputError(f"unknown preset {args.preset!r}; choose from {sorted(PRESETS)}")
    if args.k is not None and args.k < 1:
        raise InputError(f"--k must be >= 1, got {args.k}")
    if args.iters < 1:
        raise InputError(f"--iters must be >= 1, got {args.iters}")
    split_dir = _split_dir(args.data, args.split)

    from sodlab.anchor_fit import fit_preset, load_training_boxes
    from sodlab.files import write_json

    data = load_training_boxes(split_dir)
    rep = fit_preset(args.preset, data, k=args.k, seed=args.seed, iters=args.iters,
                     base_overrides=args.overrides)
    if args.matcher:
        rep = _with_calibration(rep, data, args.matcher)
    _print_report(rep, split_dir)
    if args.json:
        write_json(args.json, {"data": str(split_dir), **rep})
        print(f"wrote {args.json}")
    return 0
