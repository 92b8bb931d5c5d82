"""Engine: training end to end, resume equality, divergence, prediction mapping, run cache, DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sodlab.errors import InputError

CATS = [{"id": 7, "name": "seven"}, {"id": 42, "name": "forty-two"}]


def make_split(split_dir: Path, *, n: int, seed: int, size=(64, 48)) -> Path:
    """A tiny split folder: noise images with bright rectangles of category 7 or 42."""
    rng = np.random.default_rng(seed)
    (split_dir / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    w, h = size
    for i in range(n):
        arr = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        for _ in range(2):
            bw, bh = int(rng.integers(6, 20)), int(rng.integers(6, 20))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            cat = CATS[int(rng.integers(0, 2))]["id"]
            arr[y:y + bh, x:x + bw] = (230, 40, 40) if cat == 7 else (40, 230, 40)
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cat,
                         "bbox": [x, y, bw, bh], "area": float(bw * bh), "iscrowd": 0})
        name = f"im{i:03d}.png"
        Image.fromarray(arr).save(split_dir / "images" / name)
        images.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
    (split_dir / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": CATS}))
    return split_dir


@pytest.fixture(scope="module")
def root(tiny_root):
    return tiny_root


# ---------------------------------------------------------------- a tiny stand-in detector
@dataclasses.dataclass
class TinyConfig:
    preset: str = "tiny"
    num_classes: int = 2
    input_size: int = 64
    width: int = 8
    bn: bool = False


class TinyDetector(torch.nn.Module):
    """Contract-obeying stand-in: one score per class and a box per stride-8 cell.

    The loss is a mean over images (so data-parallel training equals one big batch).
    """

    stride = 8

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        c = cfg.num_classes
        layers = [torch.nn.Conv2d(3, cfg.width, 3, padding=1)]
        if cfg.bn:
            layers.append(torch.nn.BatchNorm2d(cfg.width))
        layers += [torch.nn.ReLU(), torch.nn.AvgPool2d(self.stride),
                   torch.nn.Conv2d(cfg.width, c + 4, 1)]
        self.net = torch.nn.Sequential(*layers)
        self.c = c

    def forward(self, images, targets=None):
        out = self.net(images)  # [B, C+4, h, w]
        b, _, h, w = out.shape
        logits, reg = out[:, :self.c], out[:, self.c:]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        centers = torch.stack([xs, ys, xs, ys]).float().add(0.5).mul(self.stride)  # [4, h, w]
        boxes = centers[None] + reg * self.stride + torch.tensor(
            [-8.0, -8.0, 8.0, 8.0]).view(1, 4, 1, 1)  # [B, 4, h, w]
        if self.training and targets is not None:
            per_image = []
            for i, t in enumerate(targets):
                cls_t = torch.zeros_like(logits[i])
                box_t = boxes[i].detach().clone()
                for box, lab in zip(t["boxes"], t["labels"]):
                    cx = int(((box[0] + box[2]) / 2 / self.stride).clamp(0, w - 1))
                    cy = int(((box[1] + box[3]) / 2 / self.stride).clamp(0, h - 1))
                    cls_t[lab, cy, cx] = 1.0
                    box_t[:, cy, cx] = box
                bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[i], cls_t)
                l1 = (boxes[i] - box_t).abs().mean() / self.stride
                per_image.append(bce + l1)
            loss = torch.stack(per_image).mean()
            return {"loss": loss, "cls": loss.detach(), "box": loss.detach()}
        scores = logits.sigmoid().flatten(2)  # [B, C, h*w]
        res = []
        for i in range(b):
            s, idx = scores[i].flatten().topk(min(20, scores[i].numel()))
            lab, cell = idx // (h * w), idx % (h * w)
            res.append({"boxes": boxes[i].flatten(1)[:, cell].T.contiguous(), "scores": s,
                        "labels": lab.long()})
        return res


def _fake_detector_module() -> types.ModuleType:
    m = types.ModuleType("sodlab.detector")
    m.DetectorConfig = TinyConfig
    m.PRESETS = {"tiny": TinyConfig}

    def make_config(preset, *, num_classes, overrides=()):
        if preset not in m.PRESETS:
            raise InputError(f"unknown preset {preset!r}")
        kv = overrides if isinstance(overrides, dict) else dict(
            (o.split("=", 1)[0], json.loads(o.split("=", 1)[1])) for o in overrides)
        return TinyConfig(preset=preset, num_classes=num_classes, **kv)

    m.make_config = make_config
    m.config_from_dict = lambda d: TinyConfig(**d)
    m.config_with_overrides = lambda cfg, o: dataclasses.replace(cfg, **o)
    m.build_detector = TinyDetector
    return m


@pytest.fixture
def tiny_detector(monkeypatch):
    """Use the stand-in detector as ``sodlab.detector`` (engine tests do not wait on the real one)."""
    monkeypatch.setitem(sys.modules, "sodlab.detector", _fake_detector_module())
    torch.set_num_threads(1)
    return "tiny"


# ---------------------------------------------------------------- tests
def test_epoch_batches_are_a_function_of_seed_and_epoch():
    from sodlab.engine.train import epoch_batches

    a = epoch_batches(10, batch_size=2, world_size=2, seed=3, epoch=1)
    assert a == epoch_batches(10, batch_size=2, world_size=2, seed=3, epoch=1)
    assert a != epoch_batches(10, batch_size=2, world_size=2, seed=3, epoch=2)
    assert len(a) == 2 and all(len(b) == 4 for b in a) and len({i for b in a for i in b}) == 8
    assert epoch_batches(3, batch_size=4, world_size=1, seed=0, epoch=0)[0].__len__() == 4


def test_train_writes_checkpoints_log_and_metrics(root, tmp_path, tiny_detector):
    from sodlab.engine import load_checkpoint, train

    s = train("tiny", root, tmp_path / "run", max_steps=4, batch_size=4, progress=False,
              device="cpu")
    assert s["steps"] == 4 and s["images_seen"] == 16 and s["epochs"] == 2
    for name in ("last.pt", "best.pt", "log.jsonl", "config.json"):
        assert (tmp_path / "run" / name).is_file()
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["epoch", "epoch", "end"]
    assert "AP_small" in lines[-1]["metrics"] and "images_per_s" in lines[-1]["metrics"]
    ck = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ck["cat_ids"] == [7, 42] and ck["step"] == 4 and ck["categories"] == CATS
    assert {"optimizer", "scheduler", "rng", "provenance", "config"} <= set(ck)


def test_validation_during_training_scores_a_subset_and_the_end_the_whole_split(
        root, tmp_path, tiny_detector):
    from sodlab.data.coco import load_coco
    from sodlab.engine import load_detector, train
    from sodlab.engine.predict import evaluate_model, first_images
    from sodlab.metrics import evaluate

    s = train("tiny", root, tmp_path / "run", max_steps=4, batch_size=4, progress=False,
              device="cpu", val_images=2)
    pred = load_detector(tmp_path / "run" / "last.pt")
    whole = evaluate_model(pred.model, root / "val", input_size=pred.input_size,
                           cat_ids=pred.cat_ids)
    for k in ("AP", "AP50", "AP_small", "num_detections"):
        assert s["metrics"][k] == whole[k], k           # the final metrics: the whole split
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    mid = [x["val"] for x in lines if x["event"] == "epoch" and x["val"]]
    two = evaluate_model(pred.model, root / "val", input_size=pred.input_size,
                         cat_ids=pred.cat_ids, max_images=2)
    gt = load_coco(root / "val")
    assert len(first_images(gt, 2)["images"]) == 2 and first_images(gt, 0) is gt
    ids = {im["id"] for im in first_images(gt, 2)["images"]}
    assert all(a["image_id"] in ids for a in first_images(gt, 2)["annotations"])
    # the subset's metrics are the whole pipeline run on a split of those two images alone
    from sodlab.engine.predict import predict_split
    dets = predict_split(pred.model, root / "val", input_size=pred.input_size,
                         cat_ids=pred.cat_ids, max_images=2)
    assert {d["image_id"] for d in dets} <= ids
    assert two["AP"] == dict(evaluate(first_images(gt, 2), dets))["AP"]
    assert two["num_detections"] <= whole["num_detections"]
    if mid:
        assert all(v["num_detections"] <= whole["num_detections"] for v in mid)


def test_resume_gives_the_same_weights(root, tmp_path, tiny_detector):
    from sodlab.engine import load_checkpoint, train

    kw = dict(batch_size=3, progress=False, device="cpu", val_every=0, seed=5)
    train("tiny", root, tmp_path / "straight", max_steps=6, **kw)
    s = train("tiny", root, tmp_path / "resumed", max_steps=6, stop_at_step=3, **kw)
    assert s["stopped"] == "stop_at_step" and s["steps"] == 3
    train("tiny", root, tmp_path / "resumed", max_steps=6, resume=True, **kw)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_global_rng_is_left_alone(root, tmp_path, tiny_detector):
    from sodlab.engine import train

    torch.manual_seed(123)
    before = torch.get_rng_state()
    train("tiny", root, tmp_path / "r", max_steps=1, batch_size=2, progress=False, val_every=0)
    assert torch.equal(before, torch.get_rng_state())


def test_nan_loss_stops_cleanly(root, tmp_path, tiny_detector):
    from sodlab.engine import TrainingDiverged, train

    class NanDetector(TinyDetector):
        def forward(self, images, targets=None):
            out = super().forward(images, targets)
            return {**out, "loss": out["loss"] * float("nan")} if self.training else out

    with pytest.raises(TrainingDiverged, match="loss became nan at step 1"):
        train("tiny", root, tmp_path / "nan", max_steps=3, batch_size=2, progress=False,
              build_model=NanDetector)


def test_predict_maps_boxes_and_ids_back(root, tmp_path, tiny_detector):
    import sodlab
    from sodlab.engine import predict_split, train
    from sodlab.metrics import evaluate

    train("tiny", root, tmp_path / "run", max_steps=2, batch_size=4, progress=False,
          val_every=0)
    pred = sodlab.load(tmp_path / "run" / "best.pt")
    img = root / "val" / "images" / "im000.png"
    out = pred.predict(img)
    assert out["boxes"].shape[1] == 4 and set(out["category_ids"].tolist()) <= {7, 42}
    assert float(out["boxes"][:, 2].max()) <= 64 and float(out["boxes"][:, 3].max()) <= 48
    arr = np.asarray(Image.open(img))
    same = pred.predict(arr)
    assert torch.allclose(same["boxes"], out["boxes"])
    assert torch.allclose(pred.predict(Image.open(img))["scores"], out["scores"])
    both = pred.predict([img, arr])  # a list runs as one batch, results per image
    assert len(both) == 2 and torch.allclose(both[0]["boxes"], out["boxes"], atol=1e-4)
    # the same image at twice the size gives boxes at twice the coordinates (input_size fixed)
    big = np.asarray(Image.open(img).resize((128, 96), Image.BILINEAR))
    assert pred.predict(big)["boxes"][:, 2:].max() <= 128
    dets = predict_split(pred.model, root / "val", input_size=64, cat_ids=pred.cat_ids)
    assert {d["category_id"] for d in dets} <= {7, 42}
    assert "AP" in evaluate(json.loads((root / "val" / "annotations.json").read_text()), dets)


def test_to_original_inverts_resize():
    from sodlab.engine.predict import to_original

    boxes = torch.tensor([[10.0, 5.0, 30.0, 20.0]])
    out = to_original(boxes, (24, 32), (48, 64))
    assert torch.allclose(out, torch.tensor([[20.0, 10.0, 60.0, 40.0]]))


def test_run_cache_trains_once(root, tmp_path, tiny_detector):
    from sodlab.engine import cached_train

    kw = dict(seed=0, max_steps=2, batch_size=4, cache_dir=tmp_path / "cache")
    p1, s1 = cached_train("tiny", root, **kw)
    p2, s2 = cached_train("tiny", root, **kw)
    assert p1 == p2 and p1.is_file() and not s1["cached"] and s2["cached"]
    assert "AP_small" in s2["metrics"]
    p3, _ = cached_train("tiny", root, **{**kw, "seed": 1})
    assert p3 != p1


DDP_SCRIPT = r"""
import os, sys
import torch
import torch.multiprocessing as mp
sys.path.insert(0, sys.argv[1])
from test_engine import TinyConfig, TinyDetector
from sodlab.engine import train

def run(rank, root, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(TinyConfig(), root, out, max_steps=2, batch_size=2, progress=False, device="cpu",
          val_every=0, build_model=TinyDetector, seed=3, precision="fp32")

if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[2], sys.argv[3], int(sys.argv[4])), nprocs=2)
"""


@pytest.mark.slow
def test_ddp_two_processes_equal_one_with_double_batch(root, tmp_path):
    import socket

    from sodlab.engine import load_checkpoint, train

    torch.set_num_threads(1)
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(Path(__file__).parent), str(root),
                    str(tmp_path / "ddp"), str(port)], check=True, env=env, timeout=300)
    # fp32: bf16 sums in another order on each rank, so only fp32 can agree to 1e-6
    train(TinyConfig(), root, tmp_path / "one", max_steps=2, batch_size=4, progress=False,
          device="cpu", val_every=0, build_model=TinyDetector, seed=3, precision="fp32")
    a = load_checkpoint(tmp_path / "ddp" / "last.pt")
    b = load_checkpoint(tmp_path / "one" / "last.pt")
    assert a["train"]["world_size"] == 2 and a["images_seen"] == b["images_seen"] == 8
    init = TinyDetector(TinyConfig())
    moved = 0.0
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
        moved += float((b["model"][k] - init.state_dict()[k]).abs().sum())
    assert moved > 0


def test_worker_processes_do_not_change_the_result(root, tmp_path, tiny_detector):
    from sodlab.engine import load_checkpoint, train

    for w in (0, 2):
        train(TinyConfig(bn=True), root, tmp_path / f"w{w}", max_steps=3, batch_size=3,
              progress=False, val_every=0, build_model=TinyDetector, num_workers=w)
    a = load_checkpoint(tmp_path / "w0" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "w2" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mst_draws_one_scale_per_batch(root):
    from sodlab.data.dataset import collate
    from sodlab.engine.train import (
        ScaleGrouped,
        TrainConfig,
        build_dataset,
        epoch_batches,
        scale_grouped,
    )

    mst = {"snip": {"scales": [2.0, 1.0, 0.5], "ranges": [[0, None]] * 3}}
    ds = build_dataset(root / "train", TrainConfig(recipe=mst, seed=1), input_size=64)
    assert isinstance(ds, ScaleGrouped) and ds.n_scales == 3
    batches = scale_grouped(epoch_batches(len(ds), batch_size=4, world_size=1, seed=1, epoch=0)
                            * 6, 3, seed=1, epoch=0)
    seen = set()
    for b in batches:
        items = [ds[i] for i in b]
        scales = {t["snip_scale"] for _, t in items}
        assert len(scales) == 1  # one scale for the whole batch
        seen |= scales
        images, _ = collate(items)
        real = sum(img.shape[1] * img.shape[2] for img, _ in items)
        assert real / images[:, 0].numel() > 0.6  # same-size images: little padding
    assert seen == {2.0, 1.0, 0.5}  # every scale is drawn over the epochs' batches
    # per image (the earlier recipe) still draws scales independently inside a batch
    per_image = build_dataset(root / "train", TrainConfig(
        recipe={"snip": {**mst["snip"], "group": "image"}}, seed=1), input_size=64)
    assert not isinstance(per_image, ScaleGrouped)
    assert len({per_image[i][1]["snip_scale"] for i in range(len(per_image))}) > 1


def test_fixed_scale_leaves_other_draws_alone(root):
    from sodlab.engine.train import TrainConfig, build_dataset

    mst = {"snip": {"scales": [2.0, 1.0, 0.5], "ranges": [[0, None]] * 3}}
    ds = build_dataset(root / "train", TrainConfig(recipe=mst, seed=2), input_size=64)
    free = build_dataset(root / "train", TrainConfig(
        recipe={"snip": {**mst["snip"], "group": "image"}}, seed=2), input_size=64)
    for i in range(len(free)):
        img, t = free[i]
        k = [2.0, 1.0, 0.5].index(t["snip_scale"])
        img2, t2 = ds[(i, k)]  # the same scale, forced: identical item (flip included)
        assert torch.equal(img, img2) and torch.equal(t["boxes"], t2["boxes"])
