"""Training recipes: JSON specs become the engine's transforms, oversampling and masks."""

import json

import pytest
import torch

from sodlab.augment import CopyPaste
from sodlab.data.transforms import RandomHFlip, ResizeLongest
from sodlab.engine.recipes import build_transforms
from sodlab.errors import InputError
from sodlab.snip import SniperChip, SnipScale


@pytest.fixture()
def split(tmp_path):
    coco = {"images": [{"id": 1}, {"id": 2}, {"id": 3}],
            "annotations": [{"image_id": 1, "area": 100.0, "iscrowd": 0},
                            {"image_id": 2, "area": 5000.0, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "face"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path


def test_default_is_flip_only(split):
    kw = build_transforms(None, input_size=256, train_split=split)
    assert [type(t) for t in kw["transforms"]] == [ResizeLongest, RandomHFlip]
    assert kw["oversample"] is None and kw["with_masks"] is False


def test_oversample_and_copy_paste(split):
    kw = build_transforms({"oversample": 3, "copy_paste": {"p": 1.0, "with_context": True}},
                      input_size=256, train_split=split)
    assert kw["oversample"] == [3, 1, 1]
    assert kw["with_masks"] is True
    cp = kw["transforms"][-1]
    assert isinstance(cp, CopyPaste) and cp.p == 1.0 and cp.kwargs == {"with_context": True}


def test_snip_and_sniper_replace_the_chain(split):
    kw = build_transforms({"snip": {"scales": [2, 1, 0.5], "ranges": [[0, 32], [16, 64], [48, None]]}},
                      input_size=256, train_split=split)
    assert isinstance(kw["transforms"][0], SnipScale) and len(kw["transforms"]) == 2
    assert kw["transforms"][0].ranges[2][1] == float("inf")
    kw = build_transforms({"sniper": {"scales": [1], "ranges": [[0, None]], "chip": 128},
                       "flip": False}, input_size=256, train_split=split)
    assert isinstance(kw["transforms"][0], SniperChip) and len(kw["transforms"]) == 1
    img, t = kw["transforms"][0](torch.rand(3, 300, 300), {
        "boxes": torch.tensor([[10.0, 10, 40, 40]]), "labels": torch.tensor([0]),
        "iscrowd": torch.tensor([False]), "area": torch.tensor([900.0]), "image_id": 1},
        torch.Generator().manual_seed(0))
    assert img.shape[1] <= 128 and img.shape[2] <= 128


def test_bad_recipes(split):
    with pytest.raises(InputError, match="unknown recipe keys"):
        build_transforms({"mosaic": True}, input_size=256, train_split=split)
    with pytest.raises(InputError, match="not both"):
        build_transforms({"snip": {"scales": [1], "ranges": [[0, None]]},
                      "sniper": {"scales": [1], "ranges": [[0, None]]}},
                     input_size=256, train_split=split)
    with pytest.raises(InputError, match="valid at no scale"):
        build_transforms({"snip": {"scales": [2, 1], "ranges": [[0, 10], [20, None]]}},
                     input_size=256, train_split=split)


# ------------------------------------------------------------------ das (data-anchor-sampling)

def test_das_comes_first_with_the_detectors_anchor_sizes(split):
    from sodlab.data.transforms import DataAnchorSampling

    # one list per level, as scaled_anchor_sizes gives them, unsorted and with a repeat
    sizes = [[16.0], [4.0], [8.0, 16.0]]
    kw = build_transforms({"das": {"p": 1.0, "max_index": 1}}, input_size=64,
                          train_split=split, anchor_sizes=sizes)
    first, *rest = kw["transforms"]
    assert isinstance(first, DataAnchorSampling)
    assert first.to_dict() == {"anchor_sizes": [4.0, 8.0, 16.0], "size": 64, "p": 1.0,
                               "max_index": 1}
    assert [type(t) for t in rest] == [RandomHFlip]
    assert kw["oversample"] is None and kw["with_masks"] is False and kw["batch_scales"] is None
    # defaults: p 0.5, every anchor reachable; flat sizes are accepted too
    kw = build_transforms({"das": {}, "flip": False}, input_size=64, train_split=split,
                          anchor_sizes=[4, 8, 16, 32])
    assert len(kw["transforms"]) == 1
    assert kw["transforms"][0].to_dict() == {"anchor_sizes": [4.0, 8.0, 16.0, 32.0],
                                             "size": 64, "p": 0.5, "max_index": 3}


def test_das_crops_a_square_around_a_face(split):
    kw = build_transforms({"das": {"p": 1.0}, "flip": False}, input_size=48,
                          train_split=split, anchor_sizes=[[4.0], [8.0], [16.0]])
    das = kw["transforms"][0]
    target = {"boxes": torch.tensor([[100.0, 80, 130, 110]]), "labels": torch.tensor([0]),
              "iscrowd": torch.tensor([False]), "area": torch.tensor([900.0]), "image_id": 1}
    for seed in range(5):
        img, t = das(torch.rand(3, 200, 300), target, torch.Generator().manual_seed(seed))
        assert img.shape == (3, 48, 48)
        # the 30 px face is nearest the 16 px anchor (index 2, the last): its new size is
        # drawn in [a / 2, 2 a] for some anchor a of 4 ... 16
        wh = t["boxes"][0, 2:] - t["boxes"][0, :2]
        assert 2.0 - 1e-4 <= float(wh.prod().sqrt()) <= 32.0 + 1e-4


def _describe(t) -> tuple:
    return type(t).__name__, {k: repr(v) for k, v in vars(t).items()}


def test_other_keys_ignore_anchor_sizes(split):
    for recipe in (None, {"oversample": 3}, {"snip": {"scales": [1], "ranges": [[0, None]]}},
                   {"copy_paste": {"p": 1.0}, "flip": False}):
        a = build_transforms(recipe, input_size=64, train_split=split)
        b = build_transforms(recipe, input_size=64, train_split=split, anchor_sizes=[4, 8])
        assert [_describe(t) for t in a["transforms"]] == [_describe(t) for t in b["transforms"]]
        assert {k: v for k, v in a.items() if k != "transforms"} == \
            {k: v for k, v in b.items() if k != "transforms"}


def test_bad_das_recipes(split):
    with pytest.raises(InputError, match="anchor sizes"):
        build_transforms({"das": {"p": 0.5}}, input_size=64, train_split=split)
    with pytest.raises(InputError, match="not both"):
        build_transforms({"das": {}, "snip": {"scales": [1], "ranges": [[0, None]]}},
                         input_size=64, train_split=split, anchor_sizes=[4, 8])
    with pytest.raises(InputError, match="unknown keys"):
        build_transforms({"das": {"prob": 0.5}}, input_size=64, train_split=split,
                         anchor_sizes=[4, 8])
    with pytest.raises(InputError, match="p must be in"):
        build_transforms({"das": {"p": 2}}, input_size=64, train_split=split,
                         anchor_sizes=[4, 8])
    with pytest.raises(InputError, match="max_index"):
        build_transforms({"das": {"max_index": 5}}, input_size=64, train_split=split,
                         anchor_sizes=[4, 8])
    with pytest.raises(InputError, match="expected an object"):
        build_transforms({"das": 0.5}, input_size=64, train_split=split, anchor_sizes=[4, 8])


def _image_split(split_dir, n: int = 4):
    """A split of ``n`` 64 x 48 noise images with one bright 12 x 10 box each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (split_dir / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        arr = (rng.random((48, 64, 3)) * 60).astype(np.uint8)
        x, y = int(rng.integers(0, 50)), int(rng.integers(0, 36))
        arr[y:y + 10, x:x + 12] = 230
        Image.fromarray(arr).save(split_dir / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 48})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [x, y, 12, 10],
                     "area": 120.0, "iscrowd": 0})
    (split_dir / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}))


def test_the_engine_gives_das_the_detectors_scaled_anchor_sizes(tmp_path):
    from sodlab.data.transforms import DataAnchorSampling
    from sodlab.detector import make_config, scaled_anchor_sizes
    from sodlab.engine.train import TrainConfig, build_dataset, train

    _image_split(tmp_path / "data" / "train")
    over = {"input_size": 64, "width": 8, "anchor_scale": 0.5}
    cfg = make_config("s3fd", num_classes=1, overrides=over)
    want = sorted(a for lv in scaled_anchor_sizes(cfg) for a in lv)
    assert want == [8.0, 16.0, 32.0, 64.0, 128.0, 256.0]  # 16 ... 512 x 0.5
    ds = build_dataset(tmp_path / "data" / "train", TrainConfig(recipe={"das": {"p": 1.0}}),
                       input_size=64, anchor_sizes=scaled_anchor_sizes(cfg))
    assert ds.transforms.transforms[0].anchor_sizes == want
    img, t = ds[0]
    assert img.shape == (3, 64, 64)
    # through train(): the run records the chain it built from the config's own sizes
    summary = train("s3fd", tmp_path / "data", tmp_path / "run", max_steps=1, batch_size=2,
                    recipe={"das": {"p": 1.0}}, overrides=over, val_every=0,
                    progress=False, device="cpu", precision="fp32")
    assert summary["train"]["transforms"][0] == repr(DataAnchorSampling(want, 64, p=1.0))
