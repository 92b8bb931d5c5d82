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
