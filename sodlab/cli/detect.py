"""`sodlab detect`: run a trained checkpoint on images; write COCO results JSON (and drawings).

Layer L4. Boxes are in each image's original pixels and category ids are the training
data's own. With ``--ann``, image ids come from that COCO file (images matched by their
``file_name`` relative to ``--images``), so the results evaluate against it with
``sodlab eval``. ``--viz DIR`` writes PNGs with boxes coloured by size bucket.
``--format wider --out DIR`` writes WIDER FACE's submission layout instead,
``DIR/<event>/<file>.txt`` (image name, count, ``x y w h score`` lines) for
``sodlab eval --protocol wider`` or the official tool; the event is the image's folder.
On a folder it ends with the throughput: ``N images in S s, R images/s`` (reading, the
detector, and writing drawings included; loading the checkpoint not).
"""

from __future__ import annotations

import argparse
import sys

_EPILOG = """\
examples:
  sodlab detect --checkpoint runs/fpn/best.pt --images my_photos/ --out dets.json --viz viz/
  sodlab detect --checkpoint runs/fpn/best.pt --images data/val/images \\
      --ann data/val/annotations.json --out dets.json && \\
  sodlab eval --gt data/val --dets dets.json
  sodlab detect --checkpoint runs/fpn/best.pt --images WIDER_val/images --format wider \\
      --out wider_pred/ && sodlab eval --protocol wider --gt-dir eval_tools/ground_truth \\
      --dets wider_pred/
box colours in --viz (box area): tiny <= 16^2 red, small <= 32^2 orange, medium <= 96^2 green,
large blue.
"""


def register(sub) -> None:
    p = sub.add_parser("detect", help="run a trained detector on images (COCO results JSON)",
                       description="Detect objects in an image or a folder of images.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a checkpoint (RUN/best.pt) or a run folder")
    p.add_argument("--images", required=True, metavar="DIR_OR_FILE")
    p.add_argument("--out", required=True, metavar="DETS.json|DIR",
                   help="COCO results JSON; with --format wider, a folder")
    p.add_argument("--format", choices=("coco", "wider"), default="coco",
                   help="coco: one results JSON (default); wider: WIDER FACE's per-image "
                   "<event>/<file>.txt files under --out")
    p.add_argument("--ann", default=None, metavar="ANN.json",
                   help="COCO file (or split folder) whose image ids the results use")
    p.add_argument("--viz", default=None, metavar="DIR", help="write annotated PNGs here")
    p.add_argument("--viz-thresh", type=float, default=0.3,
                   help="draw detections with at least this score (default 0.3)")
    p.add_argument("--score-thresh", type=float, default=0.0,
                   help="keep detections with at least this score (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _ids_from_ann(ann: str, images: str, files: list, base, cat_ids) -> dict:
    """``{image file: image id}`` of the ``files`` (found under ``images``) that the COCO file
    ``ann`` lists, matched by ``file_name`` relative to ``base``, else by a unique base name;
    warns on stderr about the images and the checkpoint's categories it lacks."""
    from pathlib import Path

    from sodlab.data.coco import load_coco
    from sodlab.errors import InputError

    coco = load_coco(ann)
    by_name = {im["file_name"]: int(im["id"]) for im in coco["images"]}
    by_base: dict[str, list[int]] = {}
    for im in coco["images"]:
        by_base.setdefault(Path(im["file_name"]).name, []).append(int(im["id"]))
    ids = {}
    for f in files:
        rel = f.relative_to(base).as_posix()
        if rel in by_name:
            ids[f] = by_name[rel]
        elif len(by_base.get(f.name, [])) == 1:
            ids[f] = by_base[f.name][0]
    skipped = len(files) - len(ids)
    if not ids:
        raise InputError(f"{ann}: none of the {len(files)} images under {images} "
                         "is listed in it (file_name relative to the images folder)")
    if skipped:
        print(f"sodlab detect: {skipped} image(s) not in {ann} skipped", file=sys.stderr)
    missing = set(cat_ids) - {int(c["id"]) for c in coco.get("categories", [])}
    if missing:
        print(f"sodlab detect: warning: category ids {sorted(missing)} of the checkpoint "
              f"are not in {ann}", file=sys.stderr)
    return ids


def _write_wider(out_dir: str, f, base, dets: list[dict]) -> None:
    """One image's detections in WIDER's layout (the event is the image's folder)."""
    from pathlib import Path

    from sodlab.metrics.wider import write_wider_image

    rel = f.relative_to(base)
    name = rel.as_posix() if rel.parent != Path(".") else f"{base.name}/{rel.name}"
    write_wider_image(out_dir, name, [d["bbox"] for d in dets], [d["score"] for d in dets])


def _draw(viz_dir: str, f, base, image, out: dict, thresh: float) -> None:
    """A PNG of ``image`` with its detections of score >= ``thresh`` under ``viz_dir``."""
    from pathlib import Path

    from sodlab.engine.predict import draw_detections
    from sodlab.files import atomic_write

    keep = out["scores"] >= thresh
    pil = draw_detections(image, out["boxes"][keep], out["scores"][keep])
    dest = Path(viz_dir) / (f.relative_to(base).with_suffix("").as_posix() + ".png")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(dest, "wb") as fh:
        pil.save(fh, format="PNG")


def run(args) -> int:
    import time
    from pathlib import Path

    from tqdm.auto import tqdm

    from sodlab.data.coco import to_coco_results
    from sodlab.engine import load_detector
    from sodlab.engine.predict import as_image, list_images
    from sodlab.errors import InputError
    from sodlab.files import write_json

    pred = load_detector(args.checkpoint, device=args.device)
    files = list_images(args.images)
    base = Path(args.images) if Path(args.images).is_dir() else Path(args.images).parent
    if args.ann:
        ids = _ids_from_ann(args.ann, args.images, files, base, pred.cat_ids)
        files = [f for f in files if f in ids]
    else:
        ids = {f: i + 1 for i, f in enumerate(files)}
    wider = args.format == "wider"
    if wider and Path(args.out).is_file():
        raise InputError(f"{args.out}: --format wider writes a folder here, but this is a file")
    dets = []
    t0 = time.perf_counter()
    for f in tqdm(files, disable=args.no_progress, desc="detect"):
        n_before = len(dets)
        image = as_image(f)  # [3, H, W]
        out = pred.predict(image, score_thresh=args.score_thresh)
        for d in to_coco_results([ids[f]], [out]):  # category ids from the checkpoint
            if not args.ann:
                d["file_name"] = f.relative_to(base).as_posix()
            dets.append(d)
        if wider:  # same rounded numbers as the JSON
            _write_wider(args.out, f, base, dets[n_before:])
        if args.viz:
            _draw(args.viz, f, base, image, out, args.viz_thresh)
    if not wider:
        write_json(args.out, dets, indent=None)
    print(f"{len(dets)} detections on {len(files)} images -> {args.out}"
          + ("/<event>/<file>.txt" if wider else "")
          + (f"; drawings in {args.viz}" if args.viz else ""))
    if base == Path(args.images):  # a folder: how fast it went, reading and writing included
        seconds = time.perf_counter() - t0
        print(f"{len(files)} images in {seconds:.1f} s, {len(files) / max(seconds, 1e-9):.1f} "
              "images/s")
    return 0
