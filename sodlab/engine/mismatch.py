"""The SNIP resolution-mismatch experiment on crops from a split folder: CNN-B, CNN-S, CNN-B-FT.

Singh & Davis 2018, section 3 (``docs/methods.md``): train on high resolution, test on images
down-sampled by 2, 4, 8 and up-sampled back; compare with a net trained at the low
resolution (CNN-S) and with CNN-B fine-tuned on up-sampled low-resolution crops (CNN-B-FT).
Here the task is face vs background on 32 x 32 crops of the embedded dataset (or any split
folder with one category of interest). Taught in notebook 05_snip_sniper.

Shapes: crops ``[N, 3, S, S]`` float in [0, 1], labels ``[N]`` int64 (1 = object, 0 = background).
Dimension legend: N crops, S crop side.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from sodlab.boxes import xywh_to_xyxy
from sodlab.data.coco import annotations_by_image, images_dir, load_coco
from sodlab.models.mismatch import build_cnn_b, build_cnn_s
from sodlab.tiling import resize_image


def object_and_background_crops(split_dir: str | Path, *, size: int = 32,
                                min_object: float = 24.0, negatives_per_image: int = 2,
                                max_images: int | None = None, seed: int = 0,
                                progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Square crops of objects with sqrt(area) >= ``min_object`` (label 1) and of background (0).

    Object crops are centred on the box with side 1.2 x its longer side; background crops
    have sizes drawn from the same objects and overlap no annotated object (IoU < 0.05).
    All crops are resized (antialiased) to ``size`` x ``size``.
    """
    coco = load_coco(split_dir)
    anns = annotations_by_image(coco)
    rng = np.random.default_rng(seed)
    images = coco["images"][:max_images] if max_images else coco["images"]
    xs, ys = [], []
    for im in tqdm(images, disable=not progress, desc="crops"):
        objs = anns.get(im["id"], [])
        if not objs:
            continue
        img = Image.open(images_dir(split_dir) / im["file_name"]).convert("RGB")
        W, H = img.size
        boxes = xywh_to_xyxy(torch.tensor([a["bbox"] for a in objs], dtype=torch.float32))
        sides = []
        for a, b in zip(objs, boxes):
            if a.get("iscrowd") or math.sqrt(a["area"]) < min_object:
                continue
            side = 1.2 * float(max(b[2] - b[0], b[3] - b[1]))
            cx, cy = float(b[0] + b[2]) / 2, float(b[1] + b[3]) / 2
            sides.append(side)
            xs.append(_crop(img, cx - side / 2, cy - side / 2, side, size))
            ys.append(1)
        for _ in range(negatives_per_image if sides else 0):
            side = float(rng.choice(sides))
            if side >= min(W, H):
                continue
            for _try in range(20):
                x0, y0 = rng.uniform(0, W - side), rng.uniform(0, H - side)
                cand = torch.tensor([[x0, y0, x0 + side, y0 + side]], dtype=torch.float32)
                if torchvision.ops.box_iou(cand, boxes).max() < 0.05:
                    xs.append(_crop(img, x0, y0, side, size))
                    ys.append(0)
                    break
    if not xs:
        return torch.zeros(0, 3, size, size), torch.zeros(0, dtype=torch.long)
    return torch.stack(xs), torch.tensor(ys, dtype=torch.long)


def _crop(img: Image.Image, x0: float, y0: float, side: float, size: int) -> torch.Tensor:
    """A square crop resized to ``size``; parts outside the image are black (faces at a border)."""
    W, H = img.size
    if x0 < 0 or y0 < 0 or x0 + side > W or y0 + side > H:
        pad = int(math.ceil(side))
        img = ImageOps.expand(img, border=pad, fill=0)
        x0, y0 = x0 + pad, y0 + pad
    patch = img.resize((size, size), Image.Resampling.BILINEAR, box=(x0, y0, x0 + side,
                                                                      y0 + side),
                       reducing_gap=None)
    return torch.from_numpy(np.asarray(patch, dtype=np.float32) / 255.0).permute(2, 0, 1)


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Down-sample crops by ``factor`` with anti-aliasing. ``[N, 3, S, S] -> [N, 3, S/f, S/f]``."""
    if factor == 1:
        return x
    s = x.shape[-1] // factor
    return resize_image(x, (s, s), antialias=True)


def down_up(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Down-sample by ``factor`` then up-sample back to the original side (SNIP's test images)."""
    if factor == 1:
        return x
    return resize_image(downsample(x, factor), tuple(x.shape[-2:]), antialias=False)


def fit_crop_classifier(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        epochs: int = 8, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
                        progress: bool = False) -> list[float]:
    """Train a crop classifier with AdamW and flips; returns the mean loss per epoch."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    losses = []
    model.train()
    for _ in tqdm(range(epochs), disable=not progress, desc="epochs"):
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(x))
    _recalibrate_bn(model, x, batch_size)
    return losses


@torch.no_grad()
def _recalibrate_bn(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Set BatchNorm running statistics to the exact averages over ``x`` with the final weights.

    After a few hundred steps the exponential running averages still lag behind the weights,
    and a short training run would be judged by stale statistics in eval mode.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    for i in range(0, len(x), batch_size):
        model(x[i:i + batch_size])
    for m in bns:
        m.momentum = 0.1


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of crops classified correctly."""
    model.eval()
    pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def _seeded(build, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def mismatch_experiment(train: tuple[torch.Tensor, torch.Tensor],
                        test: tuple[torch.Tensor, torch.Tensor], *,
                        factors: tuple[int, ...] = (1, 2, 4, 8), epochs: int = 8,
                        ft_epochs: int = 3, seed: int = 0, progress: bool = False) -> list[dict]:
    """Accuracy of CNN-B, CNN-S and CNN-B-FT at each test resolution (1/factor of the crop side).

    CNN-B trains once at full resolution and is tested on ``down_up(x, f)``. For each f > 1,
    CNN-S trains on ``downsample(x, f)`` and is tested the same way; CNN-B-FT is a copy of
    CNN-B fine-tuned for ``ft_epochs`` on ``down_up(x, f)``. Returns one row per factor.
    """
    (xtr, ytr), (xte, yte) = train, test
    cnn_b = _seeded(build_cnn_b, seed)
    fit_crop_classifier(cnn_b, xtr, ytr, epochs=epochs, seed=seed, progress=progress)
    base_state = {k: v.clone() for k, v in cnn_b.state_dict().items()}
    rows = []
    for f in factors:
        row = {"factor": f, "test_px": xte.shape[-1] // f,
               "CNN-B": accuracy(cnn_b, down_up(xte, f), yte)}
        if f > 1:
            cnn_s = _seeded(build_cnn_s, seed)
            fit_crop_classifier(cnn_s, downsample(xtr, f), ytr, epochs=epochs, seed=seed,
                                progress=progress)
            row["CNN-S"] = accuracy(cnn_s, downsample(xte, f), yte)
            ft = _seeded(build_cnn_b, seed)
            ft.load_state_dict(base_state)
            fit_crop_classifier(ft, down_up(xtr, f), ytr, epochs=ft_epochs, lr=1e-3, seed=seed,
                progress=progress)
            row["CNN-B-FT"] = accuracy(ft, down_up(xte, f), yte)
        rows.append(row)
    return rows
