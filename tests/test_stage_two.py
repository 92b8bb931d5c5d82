"""Stage two: the spec, a frozen base, the run cache (once per spec), loading, the CLI path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine import CATS, make_split

from sodlab.detector import build_detector, make_config
from sodlab.engine.checkpoint import load_checkpoint
from sodlab.engine.stage_two import (
    SPEC_DEFAULTS,
    build_stage_two,
    cached_stage_two,
    check_stage_two_data,
    load_stage_two,
    parse_stage_two,
    roi_features,
    stage_two_of,
)
from sodlab.errors import InputError

BASE_BUDGET = {"max_steps": 2, "batch_size": 4, "overrides": {"input_size": 64}}
BUDGET = {"max_steps": 2, "batch_size": 4}


def add_large_face(split_dir: Path, *, side: int = 40) -> None:
    """Paint one big rectangle into the first image (so a split has a 'large' object)."""
    ann_path = split_dir / "annotations.json"
    coco = json.loads(ann_path.read_text())
    first = coco["images"][0]
    path = split_dir / "images" / first["file_name"]
    arr = np.asarray(Image.open(path)).copy()
    arr[2:2 + side, 2:2 + side] = (230, 40, 40)
    Image.fromarray(arr).save(path)
    coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": first["id"],
                                "category_id": CATS[0]["id"], "bbox": [2, 2, side, side],
                                "area": float(side * side), "iscrowd": 0})
    ann_path.write_text(json.dumps(coco))


@pytest.fixture(scope="module")
def root(tiny_root):
    return tiny_root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("cache")
    mp.setenv("SODLAB_CACHE", str(path))
    torch.set_num_threads(1)
    yield path
    mp.undo()


def test_spec_defaults_and_refusals():
    assert parse_stage_two({"kind": "roi"}) == {"kind": "roi", **SPEC_DEFAULTS["roi"]}
    assert parse_stage_two('{"kind": "roi", "relation": 0}') == parse_stage_two({"kind": "roi"})
    got = parse_stage_two({"kind": "pgan", "adversarial": False})
    assert got["adversarial"] is False and got["blocks"] == 3
    for bad, words in [({"kind": "nope"}, "'kind'"), ({"relation": 1}, "'kind'"),
                       ({"kind": "roi", "colour": 1}, "unknown keys ['colour']"),
                       ({"kind": "pgan", "relation": 1}, "unknown keys ['relation']"),
                       ({"kind": "roi", "relation": -1}, "'relation' must be"),
                       ({"kind": "roi", "learned_nms": 1}, "'learned_nms' must be true"),
                       ({"kind": "roi", "proposals": 0}, "'proposals' must be"),
                       ({"kind": "roi", "proposal_thresh": 1.5}, "'proposal_thresh'"),
                       ("{not json", "not JSON"), ([1], "JSON object")]:
        with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_stage_two(bad)


def test_build_keeps_the_callers_config_and_freezes_the_base():
    base = build_detector(make_config("fpn", num_classes=2, overrides={"input_size": 64}))
    cfg = base.cfg
    model = build_stage_two(base, {"kind": "roi", "proposal_thresh": 0.2}, num_classes=2)
    assert cfg.score_thresh == 0.05 and model.base.cfg.score_thresh == 0.2
    assert all(not p.requires_grad for p in model.base.parameters())
    assert model.stage_two_spec["kind"] == "roi" and model.num_proposals == 100


def test_cached_stage_two_trains_once_per_spec_and_keeps_the_base(root, cache):
    kw = dict(seed=0, quick=True, base_budget=BASE_BUDGET, budget=BUDGET)
    ckpt, summary = cached_stage_two("fpn", root, {"kind": "roi", "fc": 32}, **kw)
    assert summary["cached"] is False and summary["steps"] == 2
    assert summary["train"]["extra"]["stage_two"]["kind"] == "roi"
    assert summary["train"]["extra"]["base_key"] == summary["base"]["key"]
    base = load_checkpoint(summary["base"]["checkpoint"])["model"]
    two = load_checkpoint(ckpt)["model"]
    # the frozen base: every weight and BatchNorm statistic exactly as trained
    for k, v in base.items():
        assert torch.equal(two[f"base.{k}"], v), k
    assert any(k.startswith("roi_head.") for k in two)
    assert summary["metrics"] is not None and "AP_small" in summary["metrics"]
    # the same spec (defaults spelled out or not) is a cache hit; another spec trains anew
    again, s2 = cached_stage_two("fpn", root, {"kind": "roi", "fc": 32, "relation": 0}, **kw)
    assert s2["cached"] is True and again == ckpt
    other, s3 = cached_stage_two("fpn", root, {"kind": "roi", "fc": 16}, **kw)
    assert s3["cached"] is False and other != ckpt
    assert s3["base"]["key"] == summary["base"]["key"]  # one base for both
    # load_stage_two rebuilds base + head; the one inference path runs it
    pred = load_stage_two(ckpt)
    img = torch.rand(3, 48, 64, generator=torch.Generator().manual_seed(0))
    out = pred.predict(img)
    assert out["boxes"].shape[1] == 4 and set(out["category_ids"].tolist()) <= {7, 42}
    from sodlab.engine.predict import evaluate_model

    m = evaluate_model(pred.model, root / "val", input_size=pred.input_size,
                       cat_ids=pred.cat_ids)
    assert m["AP"] == pytest.approx(summary["metrics"]["AP"])
    # a single-shot checkpoint is refused, and the reverse: a stage two is no base
    with pytest.raises(InputError, match="single-shot detector's checkpoint, not a stage-two"):
        load_stage_two(summary["base"]["checkpoint"])
    from sodlab.engine.stage_two import stage_two_builder

    with pytest.raises(InputError, match="a stage-two checkpoint"):
        stage_two_builder(ckpt, {"kind": "roi"})
    assert stage_two_of(load_checkpoint(ckpt))["fc"] == 32


def test_cli_trains_a_second_stage_on_a_base(root, cache, tmp_path, capsys):
    from sodlab.cli import main
    from sodlab.engine.cache import cached_train

    base_ckpt, _ = cached_train("fpn", root, seed=0, **BASE_BUDGET)
    out = tmp_path / "run"
    args = ["train", "--preset", "fpn", "--data", str(root), "--out", str(out),
            "--batch-size", "4", "--no-progress", "--device", "cpu", "--val-every", "0"]
    rc = main([*args, "--max-steps", "2", "--base", str(base_ckpt),
               "--stage-two", '{"kind": "roi", "fc": 16}'])
    assert rc == 0, capsys.readouterr().err
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["step"] == 2 and stage_two_of(ckpt)["fc"] == 16
    assert ckpt["train"]["extra"]["base_checkpoint"] == str(base_ckpt)
    assert len(load_stage_two(out).predict(torch.rand(3, 40, 40))["scores"]) <= 100
    for extra, words in [(["--base", str(base_ckpt)], "go together"),
                         (["--stage-two", '{"kind": "roi"}'], "go together"),
                         (["--base", str(base_ckpt), "--stage-two", '{"kind": "roi"}',
                           "--set", "width=16"], "--set cannot"),
                         (["--base", str(base_ckpt), "--stage-two", '{"kind": "x"}'], "'kind'"),
                         (["--base", str(out / "best.pt"), "--stage-two", '{"kind": "roi"}'],
                          "a stage-two checkpoint")]:
        rc = main([*args, "--max-steps", "1", *extra])
        assert rc == 2 and words in capsys.readouterr().err, extra
    rc = main(["train", "--preset", "ssh", "--data", str(root), "--out", str(tmp_path / "x"),
               "--max-steps", "1", "--no-progress", "--base", str(base_ckpt),
               "--stage-two", '{"kind": "roi"}'])
    assert rc == 2 and "a 'fpn' detector, but --preset is 'ssh'" in capsys.readouterr().err


def test_pgan_needs_large_objects(root, tmp_path):
    with pytest.raises(InputError, match=r"no object is large enough .* >= 48² px"):
        check_stage_two_data({"kind": "pgan"}, root, input_size=64)
    check_stage_two_data({"kind": "roi"}, root, input_size=64)  # a RoI head needs none
    make_split(tmp_path / "train", n=2, seed=3)
    add_large_face(tmp_path / "train", side=40)  # 40 px of a 64 px image: 40² at 64 px
    with pytest.raises(InputError):
        check_stage_two_data({"kind": "pgan"}, tmp_path, input_size=64)
    check_stage_two_data({"kind": "pgan"}, tmp_path, input_size=80)  # 50 px at 80 px: large


def test_pgan_stage_two_end_to_end(tmp_path, cache):
    root = tmp_path / "data"
    for split, seed in (("train", 0), ("val", 1)):
        make_split(root / split, n=4, seed=seed)
        add_large_face(root / split, side=50)  # 50² >= 48² at 64 px
    ckpt, summary = cached_stage_two("fpn", root, {"kind": "pgan", "fc": 32, "blocks": 1},
                                     seed=0, quick=True, base_budget=BASE_BUDGET,
                                     budget=BUDGET)
    assert summary["steps"] == 2 and summary["metrics"] is not None
    pred = load_stage_two(ckpt)
    head = pred.model.roi_head
    assert [r["phase"] for r in head.history] == [0.0, 1.0] and int(head.gan_step) == 2
    feats = roi_features(pred.model, root / "val", input_size=64)
    F_ = 32 * 7 * 7  # fpn width x pool side²
    assert feats["large"].shape == (1, F_) and feats["small"].shape[1] == F_
    assert feats["enhanced"].shape == feats["small"].shape and len(feats["small"]) >= 4
    assert feats["small_boxes"].shape == (len(feats["small"]), 4)
    assert feats["large_boxes"].tolist() == [[2.0, 2.0, 52.0, 52.0]]  # 50 px, val at 64 px
    # a plain RoI head has no enhancer: its "enhanced" features are the pooled ones
    roi_ckpt, _ = cached_stage_two("fpn", root, {"kind": "roi", "fc": 32}, seed=0, quick=True,
                                   base_budget=BASE_BUDGET, budget=BUDGET)
    plain = roi_features(load_stage_two(roi_ckpt).model, root / "val", input_size=64)
    assert torch.equal(plain["enhanced"], plain["small"])
    torch.testing.assert_close(plain["small"], feats["small"])  # one frozen base, one rule
    # the pooled features are the head's own pooling of the resized ground truth
    from sodlab.data.dataset import DetectionDataset, collate
    from sodlab.data.transforms import ResizeLongest

    images, (tgt, *_) = collate([DetectionDataset(root / "val",
                                                  transforms=ResizeLongest(64))[0]])
    m = pred.model.eval()
    with torch.no_grad():
        fm = m.base.neck(m.base.backbone(images))  # padded as in a batch
        ref = head.pool(fm, [tgt["boxes"][-1:].float()])  # the big face, last annotation
    torch.testing.assert_close(feats["large"], ref.flatten(1))
