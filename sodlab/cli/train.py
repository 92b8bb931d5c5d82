"""`sodlab train`: train a preset detector on a dataset root; writes last.pt, best.pt, log.jsonl.

Layer L4. Wraps ``sodlab.engine.train``. Budgets: ``--max-steps`` or ``--epochs`` (images
seen = steps x batch, the budget techniques are compared by), or ``--max-seconds`` (wall
clock, for comparisons with other tools). Exit 2 for bad input, 3 when the loss diverges.
Under ``torchrun --nproc_per_node=K -m sodlab train ...`` it trains data-parallel.
With ``--base BASE/best.pt --stage-two JSON`` it trains a second stage (a RoI head, or the
Perceptual GAN head) on that trained, frozen base (``sodlab.engine.stage_two``).
``--pixel-cache``/``--no-pixel-cache`` and ``--prefetch N`` change only how fast batches
arrive (``sodlab.data.pixel_cache``, ``sodlab.engine.train.Prefetcher``), never the weights.
"""

from __future__ import annotations

import argparse
import os
import sys

_EPILOG = """\
examples:
  sodlab train --preset fpn --data data/synth/quick-seed0 --out runs/fpn --max-steps 300
  sodlab train --preset ssh --data my_root --out runs/ssh --epochs 5 --set input_size=512
  sodlab train --preset fpn --data my_root --out runs/fpn --max-steps 300 --resume
  sodlab train --preset fpn --data my_root --out runs/fpn --max-steps 300 --workers 2 \
      --prefetch 2 --no-pixel-cache   # the data path's speed options (same weights)
  torchrun --nproc_per_node=2 -m sodlab train --preset fpn --data my_root --out runs/ddp \\
      --max-steps 300 --batch-size 4     # 2 processes x 4 = the images of --batch-size 8
  sodlab train --preset fpn --data my_root --out runs/pgan --base runs/fpn/best.pt \\
      --stage-two '{"kind": "pgan"}' --max-steps 200   # a second stage on a trained base
a dataset root holds train/ and val/ split folders (annotations.json + images/).
stage-two specs (JSON): {"kind": "roi"} a RoI head (keys relation, relation_heads,
learned_nms); {"kind": "pgan"} Perceptual GAN (keys adversarial, blocks,
collapse_patience); both: proposals, proposal_thresh, fc, pool.
"""


def register(sub) -> None:
    p = sub.add_parser("train", help="train a detector preset on a dataset root",
                       description="Train a single-shot detector preset; validation metrics by "
                       "object size go to RUN/log.jsonl.", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True,
                   help="detector preset: baseline, fpn, ssh, faceboxes, faceboxes_s16, s3fd, "
                   "pyramidbox or fast")
    p.add_argument("--data", metavar="ROOT", default=None,
                   help="dataset root with train/ and val/ (default: the embedded quick dataset)")
    p.add_argument("--out", metavar="RUN", required=True, help="run folder to write")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None)
    budget.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget (stops at whichever budget comes first)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step and process")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto (default): bf16 autocast + channels-last where the CPU has "
                   "AVX-512-BF16/AMX (or a CUDA GPU supports it), else fp32; fp32: the "
                   "reference path everywhere")
    p.add_argument("--recipe", default=None, metavar="JSON",
                   help="training recipe as JSON, e.g. '{\"oversample\": 3}' or "
                   "'{\"snip\": {\"scales\": [2, 1, 0.5], \"ranges\": [[0, 40], [20, 80], "
                   "[60, null]]}}' (keys: oversample, copy_paste, snip, sniper, flip)")
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable; values parsed as JSON)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (0: never)")
    p.add_argument("--val-images", type=int, default=100, metavar="N",
                   help="score only the first N validation images at each validation during "
                   "training, which picks best.pt (default 100; 0: all); the final metrics "
                   "are always scored on the whole split")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--pixel-cache", action=argparse.BooleanOptionalAction, default=True,
                   help="read decoded images from the pixel cache on disk (default on): each "
                   "image of the training split is decoded once, the first time any run uses "
                   "the split (about H x W x 3 bytes per image, under runs/pixels or "
                   "$SODLAB_PIXELS; skipped with a warning when the disk is short), and later "
                   "epochs and runs read the pixels instead of decoding. Same pixels, same "
                   "weights; --no-pixel-cache decodes every time")
    p.add_argument("--prefetch", type=int, default=0, metavar="N",
                   help="prepare the next N batches while a step runs (default 0: off); "
                   "a background thread with --workers 0, else each worker keeps N batches "
                   "in flight (at least 1). Same batches in the same order, same weights. "
                   "Off by default because on few cores the thread competes with the step "
                   "(sodlab bench --only data_path measures it on your machine)")
    p.add_argument("--base", metavar="CKPT", default=None,
                   help="a trained single-shot detector's checkpoint (BASE_RUN/best.pt): "
                   "train a second stage on it, frozen (needs --stage-two)")
    p.add_argument("--stage-two", metavar="JSON", default=None,
                   help="the second stage's spec, e.g. '{\"kind\": \"roi\"}' or "
                   "'{\"kind\": \"pgan\", \"adversarial\": false}' (needs --base; "
                   "the base's config is kept, so no --set)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from sodlab.detector import PRESETS
    from sodlab.engine import TrainingDiverged, summary_line, train
    from sodlab.errors import InputError

    if args.preset not in PRESETS:
        raise InputError(f"--preset {args.preset}: unknown preset; choose from "
                         f"{', '.join(sorted(PRESETS))}")
    if args.data is None:
        from sodlab.data import ensure_dataset

        args.data = ensure_dataset("quick", 0, progress=not args.no_progress)
    rank = int(os.environ.get("RANK", "0"))
    recipe = None
    if args.recipe:
        import json

        try:
            recipe = json.loads(args.recipe)
        except ValueError as exc:
            raise InputError(f"--recipe {args.recipe!r}: not JSON ({exc})") from None
        if not isinstance(recipe, dict):
            raise InputError(f"--recipe {args.recipe!r}: expected a JSON object")
    if (args.base is None) != (args.stage_two is None):
        raise InputError("--base and --stage-two go together: a second stage needs a trained "
                         "base checkpoint and a spec")
    if args.base is not None and args.overrides:
        raise InputError("--set cannot change a base's config; a second stage keeps it")
    fields = dict(max_steps=args.max_steps, epochs=args.epochs, max_seconds=args.max_seconds,
                  batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
                  seed=args.seed, device=args.device, resume=args.resume,
                  progress=not args.no_progress, val_every=args.val_every,
                  val_images=args.val_images,
                  num_workers=args.workers, precision=args.precision, recipe=recipe,
                  pixel_cache=args.pixel_cache, prefetch=args.prefetch)
    try:
        if args.base is not None:
            from sodlab.engine.stage_two import train_stage_two

            summary = train_stage_two(args.base, args.data, args.out, args.stage_two,
                                      preset=args.preset, **fields)
            what = f"a second stage on {args.base}"
        else:
            summary = train(args.preset, args.data, args.out, overrides=args.overrides, **fields)
            what = args.preset
    except TrainingDiverged as exc:
        print(f"sodlab: training diverged: {exc}", file=sys.stderr)
        return 3
    if rank == 0:
        print(f"trained {what}: {summary_line(summary)}")
        print(f"wrote {args.out}/best.pt, last.pt, log.jsonl, config.json")
    return 0
