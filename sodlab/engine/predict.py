"""Run a trained detector: a split folder to COCO results, metrics by size, one image to boxes.

Layer L4. The engine resizes every image so its longer side is ``input_size`` (as in
training), pads the batch to a multiple of 32, runs the detector in ``eval()`` mode and maps
boxes back to the ORIGINAL image's pixels (divide by the exact per-axis resize ratios,
clip to the image) and contiguous labels back to the dataset's own category ids. Taught in
notebook 03_fpn; ``sodlab detect`` and ``sodlab.load(...).predict`` use it.

Shapes: images ``[B, 3, Hp, Wp]`` float in [0, 1]; boxes ``[N, 4]`` xyxy pixels.
Dimension legend: B images in a batch, N detections, Hp x Wp padded input size.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sodlab.data.coco import load_coco, to_coco_results
from sodlab.data.dataset import DetectionDataset, collate, read_image
from sodlab.data.transforms import ResizeLongest
from sodlab.engine.precision import autocast, prepare_images
from sodlab.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_original(boxes: torch.Tensor, size: tuple[int, int],
                orig: tuple[int, int]) -> torch.Tensor:
    """Map xyxy boxes from a resized image of ``size`` (h, w) to the original (h, w); clip."""
    sy, sx = orig[0] / size[0], orig[1] / size[1]
    out = boxes * boxes.new_tensor([sx, sy, sx, sy])  # [N, 4]
    out[:, 0::2] = out[:, 0::2].clamp(0, orig[1])
    out[:, 1::2] = out[:, 1::2].clamp(0, orig[0])
    return out


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Run ``model`` in eval mode inside the block and restore its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.inference_mode()
def detect_batch(model: torch.nn.Module, images: Sequence[torch.Tensor], *,
                 input_size: int | None, precision: str = "fp32") -> list[dict]:
    """THE inference path: detections for original images ``[3, H, W]``, in their own pixels.

    ``input_size``: resize each image so its longer side is this many pixels (as in
    training), or ``None`` to run on the tensors as given. Either way the batch is
    zero-padded at right/bottom to a multiple of 32, the model runs in eval mode (its
    previous mode is restored after), boxes are mapped back to each original image's pixels
    (exact per-axis ratios) and clipped to it. Labels stay contiguous (``to_coco_results``
    or ``Predictor`` map them to category ids). Everything else — the CLI, evaluation, the
    image pyramid, SNIP multi-scale testing, sliced inference — calls this. ``precision``:
    ``"fp32"`` (default: the numbers every committed result uses) or ``"bf16"`` (autocast and
    channels-last input, ``sodlab.engine.precision``; give the model
    ``prepare_model(model, "bf16")`` too for full speed).
    """
    if input_size is None:
        batch = [(img, {}) for img in images]
    else:
        resize = ResizeLongest(int(input_size))
        batch = [resize(img, {}) for img in images]
    x, targets = collate(batch)  # [B, 3, Hp, Wp]
    dev = _device_of(model)
    with eval_mode(model), autocast(precision, dev):
        outs = model(prepare_images(x.to(dev), precision))
    results = []
    for img, tgt, out in zip(images, targets, outs):
        boxes = to_original(out["boxes"].float().cpu(), tgt["size"], tuple(img.shape[-2:]))
        results.append({"boxes": boxes, "scores": out["scores"].float().cpu(),
                        "labels": out["labels"].cpu()})
    return results


def as_given_predict_fn(model: torch.nn.Module):
    """``fn(image [3, h, w]) -> {"boxes", "scores", "labels"}``: ``detect_batch`` with no resize.

    The ``predict_fn`` that ``sodlab.snip.multiscale_predict`` and ``sodlab.slicing`` expect
    (they rescale or tile the image themselves).
    """
    def fn(img: torch.Tensor) -> dict:
        return detect_batch(model, [img], input_size=None)[0]
    return fn


@torch.inference_mode()
def detect_pyramid(model: torch.nn.Module, images: Sequence[torch.Tensor], *,
                   input_sizes: Sequence[int], nms_iou: float = 0.5,
                   max_dets: int = 100) -> list[dict]:
    """An image pyramid: detect at every input size, map back, merge with class-wise NMS."""
    import torchvision

    per_size = [detect_batch(model, images, input_size=s) for s in input_sizes]
    results = []
    for outs in zip(*per_size):
        boxes = torch.cat([o["boxes"] for o in outs])  # [N, 4]
        scores = torch.cat([o["scores"] for o in outs])
        labels = torch.cat([o["labels"] for o in outs])
        keep = torchvision.ops.batched_nms(boxes, scores, labels, nms_iou)[:max_dets]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return results


def predict_split(model: torch.nn.Module, split_dir: str | os.PathLike, *, input_size: int,
                  batch_size: int = 8, score_thresh: float = 0.0, progress: bool = False,
                  cat_ids: Sequence[int] | None = None,
                  timing: dict | None = None,
                  pyramid: Sequence[int] | None = None,
                  max_images: int | None = None) -> list[dict]:
    """COCO result dicts for every image of a split folder, boxes in original pixels.

    ``cat_ids`` maps contiguous labels to category ids (default: the split's own sorted
    category ids). ``timing``, if given, receives ``images`` and ``seconds``. ``pyramid``:
    input sizes of an image pyramid (``detect_pyramid``) instead of ``input_size`` alone.
    ``max_images``: only the split's first images, in file order (``first_images``).
    """
    ds = DetectionDataset(split_dir)
    ids = list(cat_ids) if cat_ids is not None else ds.cat_ids
    dets: list[dict] = []
    n_done, seconds = 0, 0.0
    order = range(len(ds) if not max_images else min(len(ds), int(max_images)))
    chunks = [list(order[i:i + batch_size]) for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, disable=not progress, desc="predict", leave=False):
        images = [ds[i][0] for i in chunk]
        t0 = time.perf_counter()
        outs = (detect_pyramid(model, images, input_sizes=pyramid) if pyramid else
                detect_batch(model, images, input_size=input_size))
        seconds += time.perf_counter() - t0
        n_done += len(chunk)
        dets += to_coco_results([int(ds.images[i]["id"]) for i in chunk], outs, cat_ids=ids,
                                score_thresh=score_thresh)
    if timing is not None:
        timing.update(images=n_done, seconds=seconds)
    return dets


def first_images(coco: dict, n: int | None) -> dict:
    """``coco`` restricted to its first ``n`` images (file order) and their annotations;
    ``coco`` itself when ``n`` is None or 0."""
    if not n:
        return coco
    images = list(coco["images"])[:int(n)]
    keep = {int(im["id"]) for im in images}
    return {**coco, "images": images,
            "annotations": [a for a in coco["annotations"] if int(a["image_id"]) in keep]}


def evaluate_model(model: torch.nn.Module, split_dir: str | os.PathLike, *, input_size: int,
                   batch_size: int = 8, progress: bool = False,
                   cat_ids: Sequence[int] | None = None,
                   pyramid: Sequence[int] | None = None,
                   max_images: int | None = None) -> dict:
    """Size-wise COCO metrics of ``model`` on a split folder, plus ``images_per_s``.

    ``images_per_s`` counts resize + forward + post-processing (not image decoding).
    ``max_images``: score only the split's first images (a cheap check during training).
    """
    from sodlab.metrics import evaluate

    timing: dict = {}
    dets = predict_split(model, split_dir, input_size=input_size, batch_size=batch_size,
                         progress=progress, cat_ids=cat_ids, timing=timing, pyramid=pyramid,
                         max_images=max_images)
    metrics = dict(evaluate(first_images(load_coco(split_dir), max_images), dets))
    metrics["images_per_s"] = timing["images"] / max(timing["seconds"], 1e-9)
    metrics["num_detections"] = len(dets)
    return metrics


@torch.no_grad()
def mean_loss(model: torch.nn.Module, split_dir: str | os.PathLike, *, input_size: int,
              batch_size: int = 8, max_images: int | None = None) -> float:
    """The detector's training loss averaged over a split (no augmentation, weights unchanged).

    A check that holds even after a tiny budget: a model that learned anything has a lower
    loss on held-out images than an untrained one, long before its AP leaves zero.
    """
    ds = DetectionDataset(split_dir, transforms=ResizeLongest(input_size))
    n = len(ds) if max_images is None else min(len(ds), max_images)
    was_training = model.training
    model.train()  # the loss path; BatchNorm must not update its statistics, so freeze it
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.eval()
    total, count = 0.0, 0
    dev = _device_of(model)
    for i in range(0, n, batch_size):
        images, targets = collate([ds[j] for j in range(i, min(i + batch_size, n))])
        targets = [{k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in targets]
        total += float(model(images.to(dev), targets)["loss"]) * len(targets)
        count += len(targets)
    model.train(was_training)
    return total / max(count, 1)


def as_image(image_or_path: Any) -> torch.Tensor:
    """A path, PIL image, uint8 ``[H, W, 3]`` array or float ``[3, H, W]`` tensor -> float ``[3, H, W]``."""
    if isinstance(image_or_path, (str, os.PathLike)):
        return read_image(image_or_path)
    if hasattr(image_or_path, "convert") and hasattr(image_or_path, "size"):  # PIL
        arr = np.asarray(image_or_path.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    if isinstance(image_or_path, np.ndarray):
        arr = image_or_path
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise InputError(f"image array must be HxWx3, got shape {arr.shape}")
        t = torch.from_numpy(np.array(arr[:, :, :3])).permute(2, 0, 1)
        return t.float().div_(255.0) if arr.dtype == np.uint8 else t.float()
    if isinstance(image_or_path, torch.Tensor):
        t = image_or_path
        if t.ndim != 3 or t.shape[0] != 3:
            raise InputError(f"image tensor must be [3, H, W], got {list(t.shape)}")
        return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()
    raise InputError(f"cannot read an image from a {type(image_or_path).__name__}")


class Predictor:
    """A trained detector with its preprocessing and category ids; ``predict(image)``."""

    def __init__(self, model: torch.nn.Module, *, input_size: int, cat_ids: Sequence[int],
                 categories: Sequence[dict] = (), config: dict | None = None) -> None:
        self.model = model
        self.input_size = int(input_size)
        self.cat_ids = [int(c) for c in cat_ids]
        self.categories = list(categories)
        self.config = config or {}

    def predict(self, image_or_path: Any, *, score_thresh: float = 0.0) -> dict | list[dict]:
        """``{"boxes": [N, 4] xyxy original px, "scores": [N], "category_ids": [N]}``.

        One image (a path, PIL image, array or tensor, any size), or a list of them (then a
        list of such dicts, run as one batch through ``detect_batch``).
        """
        many = isinstance(image_or_path, (list, tuple))
        images = [as_image(x) for x in (image_or_path if many else [image_or_path])]
        ids = torch.tensor(self.cat_ids, dtype=torch.int64)
        outs = []
        for out in detect_batch(self.model, images, input_size=self.input_size):
            keep = out["scores"] >= score_thresh
            outs.append({"boxes": out["boxes"][keep], "scores": out["scores"][keep],
                         "category_ids": ids[out["labels"][keep]]})
        return outs if many else outs[0]

    __call__ = predict


def load_detector(checkpoint: str | os.PathLike, device: str = "cpu", *,
                  build_model=None) -> Predictor:
    """A ``Predictor`` from a checkpoint file (or a run folder holding best.pt / last.pt).

    ``build_model(config)`` rebuilds a model that ``sodlab.detector.build_detector`` does not
    (the run was trained with one); its weights are then loaded from the checkpoint. A
    stage-two checkpoint (``sodlab.engine.stage_two``) is rebuilt with its base
    (``sodlab.engine.checkpoint.build_from_checkpoint``), so ``sodlab detect`` and ``sodlab
    eval`` read both kinds.
    """
    from sodlab.engine.checkpoint import load_checkpoint

    return predictor_from_checkpoint(load_checkpoint(checkpoint), device,
                                     build_model=build_model)


def predictor_from_checkpoint(ckpt: dict, device: str = "cpu", *,
                              build_model=None) -> Predictor:
    """A ``Predictor`` from a checkpoint dict that ``load_checkpoint`` read (``device``
    ``"auto"``: CUDA where available)."""
    from sodlab.engine.checkpoint import build_from_checkpoint

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_from_checkpoint(ckpt, device, build_model=build_model)
    return Predictor(model, input_size=ckpt["config"]["input_size"], cat_ids=ckpt["cat_ids"],
                     categories=ckpt.get("categories", ()), config=ckpt["config"])


def list_images(path: str | os.PathLike) -> list[Path]:
    """Image files under a folder (recursive, sorted) or the file itself; InputError if none."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise InputError(f"{p}: no such image file or folder")
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def draw_detections(image: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor):
    """A PIL image of ``image`` [3, H, W] with xyxy boxes coloured by size bucket (box area)."""
    from PIL import Image, ImageDraw

    from sodlab.boxes import bucket_of
    from sodlab.viz import BUCKET_RGB

    arr = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr)
    draw = ImageDraw.Draw(pil)
    for box, score in zip(boxes.tolist(), scores.tolist()):
        area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
        colour = BUCKET_RGB[bucket_of(area)]
        draw.rectangle(box, outline=colour, width=1 if area <= 32 ** 2 else 2)
        draw.text((box[0], max(box[1] - 10, 0)), f"{score:.2f}", fill=colour)
    return pil
