"""Train a fixed-size patch classifier on crops mined from a split folder, with hard negatives.

Positives are square crops around the face boxes (jittered a little in position and size);
negatives are random squares overlapping no face (IoU < 0.3), which also catch the
face-like non-faces the images hold without annotations; hard negatives are the
top-scoring false windows of the classifier itself, run as a sliding-window detector
over the training images (bootstrapping, Sung & Poggio 1998; Viola & Jones 2001). Taught
in notebook 01_sliding_window_pyramid; the classifier is ``sodlab.models.classifiers``.

Shapes: crops ``[N, 3, window, window]`` in [0, 1]; labels ``[N]`` float (1 face, 0 not);
boxes ``[M, 4]`` xyxy pixels of the image they belong to.

Dimension legend: N crops, M boxes, H W image height/width.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from tqdm.auto import tqdm

from sodlab.boxes import xywh_to_xyxy
from sodlab.data.coco import annotations_by_image, images_dir, load_coco
from sodlab.data.dataset import read_image
from sodlab.errors import InputError
from sodlab.models.classifiers import PatchClassifier, build_patch_classifier, sliding_window_detect


@dataclass
class SplitImage:
    """One image of a split with its face boxes (``boxes [M, 4]`` xyxy px; crowd included)."""

    image_id: int
    image: torch.Tensor  # [3, H, W]
    boxes: torch.Tensor  # [M, 4]


def load_split_images(split_dir: str | os.PathLike, *, max_images: int | None = None,
                      ) -> list[SplitImage]:
    """The first ``max_images`` images of a split folder (in file order) and their boxes."""
    coco = load_coco(split_dir)
    by_image = annotations_by_image(coco)
    out = []
    for im in coco["images"][:max_images]:
        xywh = torch.tensor([a["bbox"] for a in by_image.get(int(im["id"]), [])],
                            dtype=torch.float32).reshape(-1, 4)
        img = read_image(images_dir(split_dir) / im["file_name"])
        out.append(SplitImage(im["id"], img, xywh_to_xyxy(xywh)))
    if not out:
        raise InputError(f"{split_dir}: the split holds no images to mine crops from")
    return out


def crops_at_boxes(image: torch.Tensor, boxes: torch.Tensor, window: int) -> torch.Tensor:
    """Boxes of ``image [3, H, W]`` resampled to ``window`` x ``window`` (``roi_align``, which
    averages several samples per output pixel when shrinking). ``[M, 3, window, window]``"""
    if len(boxes) == 0:
        return torch.zeros(0, 3, window, window)
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes.float()], dim=1)   # [M, 5]
    return torchvision.ops.roi_align(image[None], rois, output_size=window, aligned=True,
                                     sampling_ratio=-1)


def positive_boxes(gt: torch.Tensor, *, copies: int, jitter: float, min_face: float,
                   g: torch.Generator) -> torch.Tensor:
    """``copies`` jittered squares per face of side >= ``min_face``. ``[M', 4]``

    A square has side ``max(w, h) * exp(u * jitter)`` and its centre moved by up to
    ``jitter * side`` in x and y (u uniform in [-1, 1]).
    """
    wh = gt[:, 2:] - gt[:, :2]                                             # [M, 2]
    gt = gt[wh.max(1).values >= min_face]
    if len(gt) == 0 or copies == 0:
        return torch.zeros(0, 4)
    gt = gt.repeat_interleave(copies, dim=0)                               # [M', 4]
    u = torch.rand(len(gt), 3, generator=g) * 2 - 1                        # [M', 3]
    side = (gt[:, 2:] - gt[:, :2]).max(1).values * torch.exp(u[:, 0] * jitter)
    cx = (gt[:, 0] + gt[:, 2]) / 2 + u[:, 1] * jitter * side
    cy = (gt[:, 1] + gt[:, 3]) / 2 + u[:, 2] * jitter * side
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def random_negative_boxes(height: int, width: int, gt: torch.Tensor, *, n: int, min_side: float,
                          iou_thresh: float, g: torch.Generator) -> torch.Tensor:
    """Up to ``n`` random squares inside the image with IoU < ``iou_thresh`` to every face.

    Sides are log-uniform in ``[min_side, min(H, W)]``. ``[<=n, 4]``
    """
    hi = min(height, width)
    if hi < min_side or n == 0:
        return torch.zeros(0, 4)
    u = torch.rand(4 * n, 3, generator=g)                                  # [4n, 3]
    side = torch.exp(math.log(min_side) + u[:, 0] * (math.log(hi) - math.log(min_side)))
    x0, y0 = u[:, 1] * (width - side), u[:, 2] * (height - side)
    boxes = torch.stack([x0, y0, x0 + side, y0 + side], 1)                 # [4n, 4]
    if len(gt):
        boxes = boxes[torchvision.ops.box_iou(boxes, gt).max(1).values < iou_thresh]
    return boxes[:n]


def mine_crops(images: list[SplitImage], *, window: int = 24, pos_copies: int = 4,
               neg_per_image: int = 40, jitter: float = 0.1, min_face: float = 10.0,
               iou_thresh: float = 0.3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and random negative crops of ``images``: ``(crops [N, 3, w, w], labels [N])``."""
    g = torch.Generator().manual_seed(seed)
    crops, labels = [], []
    for it in images:
        H, W = it.image.shape[-2:]
        pos = positive_boxes(it.boxes, copies=pos_copies, jitter=jitter, min_face=min_face, g=g)
        neg = random_negative_boxes(H, W, it.boxes, n=neg_per_image, min_side=min_face,
                                    iou_thresh=iou_thresh, g=g)
        crops += [crops_at_boxes(it.image, pos, window), crops_at_boxes(it.image, neg, window)]
        labels += [torch.ones(len(pos)), torch.zeros(len(neg))]
    return torch.cat(crops), torch.cat(labels)


def mine_hard_negatives(model: PatchClassifier, images: list[SplitImage], *, per_image: int = 20,
                        stride: int = 4, scale_step: float = 2 ** 0.5, first_scale: float = 1.0,
                        iou_thresh: float = 0.3, score_thresh: float = 0.2) -> torch.Tensor:
    """The top ``per_image`` false windows (IoU < ``iou_thresh`` to every face) the classifier,
    run as a sliding-window detector, finds in each image. ``[N, 3, w, w]``"""
    out = []
    for it in images:
        boxes, _ = sliding_window_detect(model, it.image, scale_step=scale_step, stride=stride,
                                  score_thresh=score_thresh, nms_iou=0.5, first_scale=first_scale,
                                  max_dets=None)                              # best first
        if len(it.boxes) and len(boxes):
            boxes = boxes[torchvision.ops.box_iou(boxes, it.boxes).max(1).values < iou_thresh]
        out.append(crops_at_boxes(it.image, boxes[:per_image], model.window))
    return torch.cat(out)


def fit_patch_classifier(model: PatchClassifier, crops: torch.Tensor, labels: torch.Tensor, *,
                         steps: int, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                         progress: bool = False) -> list[float]:
    """Adam on balanced batches (half faces, half not) with random horizontal flips.

    Returns the loss of every step (binary cross-entropy on logits).
    """
    pos, neg = (labels > 0.5).nonzero()[:, 0], (labels <= 0.5).nonzero()[:, 0]
    if len(pos) == 0 or len(neg) == 0:
        raise InputError(f"need face and background crops to train, got {len(pos)} and {len(neg)}")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    half = batch_size // 2
    losses = []
    model.train()
    for step in tqdm(range(steps), disable=not progress, desc="classifier"):
        idx = torch.cat([pos[torch.randint(len(pos), (half,), generator=g)],
                         neg[torch.randint(len(neg), (batch_size - half,), generator=g)]])
        x, y = crops[idx], labels[idx]                                     # [b, 3, w, w], [b]
        flip = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        for group in opt.param_groups:  # cosine decay to 10 %
            group["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = F.binary_cross_entropy_with_logits(model.classify(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def crop_metrics(model: PatchClassifier, crops: torch.Tensor, labels: torch.Tensor) -> dict:
    """Accuracy at 0.5, balanced accuracy and ROC AUC of the classifier on labelled crops."""
    model.eval()
    scores = torch.cat([torch.sigmoid(model.classify(crops[i:i + 512]))
                        for i in range(0, len(crops), 512)])                # [N]
    y = labels > 0.5
    pred = scores >= 0.5
    tpr = float((pred & y).sum() / y.sum().clamp(min=1))
    tnr = float((~pred & ~y).sum() / (~y).sum().clamp(min=1))
    ranks = torch.empty(len(scores))
    ranks[scores.argsort()] = torch.arange(1, len(scores) + 1, dtype=torch.float32)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    auc = (float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1)
    return {"accuracy": float((pred == y).float().mean()), "balanced_accuracy": (tpr + tnr) / 2,
            "auc": auc, "tpr": tpr, "tnr": tnr, "n_pos": n_pos, "n_neg": n_neg}


def train_classifier(split_dir: str | os.PathLike, *, window: int = 24, steps: int = 150,
                     mining_rounds: int = 1, mining_steps: int | None = None,
                     max_images: int | None = None, hard_per_image: int = 20,
                     first_scale: float = 1.0, scale_step: float = 2 ** 0.5, stride: int = 4,
                     batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                     progress: bool = False) -> tuple[PatchClassifier, dict]:
    """Build, train and bootstrap a patch classifier on a split folder.

    ``steps`` on positives + random negatives, then ``mining_rounds`` rounds that add the
    hard negatives of the current model and train ``mining_steps`` (default ``steps // 2``)
    more. Returns ``(model in eval mode, info)`` with crop counts, losses and seconds.
    """
    t0 = time.perf_counter()
    torch.manual_seed(seed)  # weight init; the data order comes from explicit generators
    images = load_split_images(split_dir, max_images=max_images)
    crops, labels = mine_crops(images, window=window, seed=seed)
    model = build_patch_classifier(window)
    info = {"n_pos": int(labels.sum()), "n_neg": int((labels == 0).sum()), "hard": [],
            "images": len(images)}
    losses = fit_patch_classifier(model, crops, labels, steps=steps, batch_size=batch_size,
                                  lr=lr, seed=seed, progress=progress)
    for r in range(mining_rounds):
        hard = mine_hard_negatives(model, images, per_image=hard_per_image, stride=stride,
                                   scale_step=scale_step, first_scale=first_scale)
        info["hard"].append(len(hard))
        crops = torch.cat([crops, hard])
        labels = torch.cat([labels, torch.zeros(len(hard))])
        losses += fit_patch_classifier(model, crops, labels, steps=mining_steps or steps // 2,
                                       batch_size=batch_size, lr=lr / 3, seed=seed + 1 + r,
                                       progress=progress)
    info.update(losses=losses, seconds=time.perf_counter() - t0)
    return model, info
