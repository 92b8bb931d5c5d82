"""`sodlab data`: make the embedded dataset, import foreign labels, check a split folder.

Layer L4. ``make`` writes the procedural dataset (``sodlab.data.synth``); ``import``
turns WIDER FACE / VOC / COCO / YOLO labels into a split folder (``annotations.json`` +
``images/``) and prints what it converted, clipped and dropped; ``check`` lists every
problem of a split folder, annotations file or dataset root and exits 1 if it found any.
"""

from __future__ import annotations

import argparse

MAX_LINES = 50  # per-record lines printed before "... and N more"

_CONVENTION = """\
pixel convention: a box [x1, y1, x2, y2] covers x1 <= x < x2 in continuous pixels; COCO's
[x, y, w, h] has x2 = x + w.
"""

_MAKE_EPILOG = """\
The dataset is procedural and deterministic: the same --size and --seed give identical
annotations and pixels. It is built only from images bundled with installed packages.
Without --out it goes to the cache folder data/synth/<size>-seed<k>/ that the notebooks use,
and a complete cache made by the current generator version is kept (--force rebuilds it).

example:
  sodlab data make --size quick --seed 0
"""

_IMPORT_EPILOG = _CONVENTION + """
formats (--src):
  wider  a wider_face_{train,val}_bbx_gt.txt file: an image file-name line, a count line,
         then one line per face 'x y w h blur expression illumination invalid occlusion
         pose' (x2 = x + w); an image with 0 faces is followed by one line of zeros.
         invalid=1 -> iscrowd 1 (kept, ignored in training and evaluation).
         One category: {"id": 1, "name": "face"}. --images: the WIDER_*/images folder.
  voc    a folder of Pascal VOC .xml files; bndbox xmin..ymax are 1-based inclusive and
         become x1 = xmin - 1, x2 = xmax. difficult=1 -> iscrowd 1. Class names become
         category ids 1..K sorted by name, or in the order of --classes (objects of other
         classes are dropped and reported). --images: the JPEGImages folder.
  coco   a COCO annotations .json file; image, annotation and category ids are kept as
         they are (any integers). --images: the folder its file_name values are relative to.
  yolo   a folder of label .txt files, one per image with the same name, lines
         'class cx cy w h' as fractions of the image size; class k -> category id k + 1,
         named from --classes FILE (one name per line; default: classes.txt in --src).
         Image sizes are read from the images. Images without a label file have no objects.

what happens to the data:
  images that are not 8-bit RGB (grey, RGBA, 16-bit, palette, CMYK) are converted to
  8-bit RGB PNG copies; others are copied byte for byte. Boxes reaching outside the image
  are clipped to it; boxes with zero or negative area (after clipping) are dropped. A
  missing or unreadable image is an error line and is skipped. Every change is counted in
  the summary and listed per record. A malformed label file stops the import with its
  file and line. The split folder is written atomically; an earlier import at --out is
  replaced.

example:
  sodlab data import --format wider --src wider_face_split/wider_face_val_bbx_gt.txt \\
      --images WIDER_val/images --out data/wider/val
"""

_CHECK_EPILOG = _CONVENTION + """
checks: missing or unreadable images, images that are not 8-bit RGB, width/height in the
JSON that differ from the file, duplicate image/annotation/category ids, annotations with
unknown image or category ids, malformed records, boxes outside the image, boxes with zero
or negative width, height or area.

exit status: 0 no problems, 1 problems found (listed), 2 unusable input (no such path,
invalid JSON).

example:
  sodlab data check data/wider/val
"""


def register(sub) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("data", help="make the embedded dataset, import labels, check a split",
                       description="Make the embedded synthetic dataset, import WIDER FACE / "
                       "VOC / COCO / YOLO labels into a split folder (annotations.json + "
                       "images/), or check a split folder.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    m = dsub.add_parser("make", help="generate the embedded synthetic dataset (train/ + val/)",
                        description="Generate the embedded procedural face dataset: a dataset "
                        "root with split folders train/ and val/.", epilog=_MAKE_EPILOG,
                        formatter_class=raw)
    m.add_argument("--out", metavar="DIR", default=None,
                   help="dataset root to write (default: the cache data/synth/<size>-seed<k>/)")
    m.add_argument("--size", choices=("quick", "full"), default="quick",
                   help="quick: small, for notebooks in quick mode; full: for real comparisons "
                   "(default: quick)")
    m.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    m.add_argument("--force", action="store_true",
                   help="rebuild the cache folder even if it is complete and up to date")
    m.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    m.set_defaults(func=run_make)

    i = dsub.add_parser("import", help="import WIDER FACE / VOC / COCO / YOLO labels into a "
                        "split folder", description="Import foreign labels and their images "
                        "into one split folder (annotations.json + images/).",
                        epilog=_IMPORT_EPILOG, formatter_class=raw)
    i.add_argument("--format", required=True, choices=("wider", "voc", "coco", "yolo"),
                   help="label format of --src (see below)")
    i.add_argument("--src", required=True, metavar="PATH",
                   help="labels: WIDER .txt file, VOC .xml folder, COCO .json file, or YOLO "
                   ".txt folder")
    i.add_argument("--images", required=True, metavar="DIR",
                   help="folder the labels' image file names are relative to")
    i.add_argument("--out", required=True, metavar="SPLIT_DIR",
                   help="split folder to write (annotations.json + images/)")
    i.add_argument("--classes", metavar="FILE", default=None,
                   help="class names, one per line: VOC id order, YOLO class names")
    i.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    i.set_defaults(func=run_import)

    c = dsub.add_parser("check", help="list problems of a split folder or dataset root",
                        description="Check a split folder, an annotations.json file, or a "
                        "dataset root (each split folder in it) against the data contract.",
                        epilog=_CHECK_EPILOG, formatter_class=raw)
    c.add_argument("path", metavar="DIR", help="split folder, annotations file or dataset root")
    c.add_argument("--fast", action="store_true",
                   help="read image headers only (misses truncated image files)")
    c.add_argument("--all", action="store_true", help=f"print every problem (default: the "
                   f"first {MAX_LINES} per split)")
    c.set_defaults(func=run_check)


def _print_lines(lines: list[str], limit: int | None) -> None:
    shown = lines if limit is None else lines[:limit]
    for line in shown:
        print(f"  {line}")
    if len(shown) < len(lines):
        print(f"  ... and {len(lines) - len(shown)} more")


def run_make(args) -> int:
    from pathlib import Path

    from sodlab.data import dataset_is_complete, synth
    from sodlab.data.coco import load_coco

    out = Path(args.out) if args.out else Path(synth.default_dataset_dir(args.size, args.seed))
    version = synth.GENERATOR_VERSION
    if args.out is None and not args.force and dataset_is_complete(out, version):
        print(f"{out}: up to date (generator version {version}); --force rebuilds it")
        return 0
    root = synth.make_dataset(out, size=args.size, seed=args.seed, progress=args.progress)

    for split in ("train", "val"):
        d = Path(root) / split
        if (d / "annotations.json").is_file():
            coco = load_coco(d)
            print(f"{d}: {len(coco['images'])} images, {len(coco['annotations'])} annotations")
    print(f"dataset root: {root}")
    return 0


def run_import(args) -> int:
    from sodlab.data.formats import import_split

    report = import_split(args.format, args.src, args.images, args.out, classes=args.classes,
                          progress=args.progress)
    print(report.summary())
    _print_lines(report.messages, MAX_LINES)
    print(f"wrote {report.out}")
    return 0


def run_check(args) -> int:
    from collections import Counter

    from sodlab.data.check import check_path

    results = check_path(args.path, decode=not args.fast)
    total = 0
    for split, problems in results.items():
        total += len(problems)
        if not problems:
            print(f"{split}: OK")
            continue
        kinds = Counter(p.kind for p in problems)
        print(f"{split}: {len(problems)} problems (" +
              ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) + ")")
        _print_lines([str(p) for p in problems], None if args.all else MAX_LINES)
    return 1 if total else 0
