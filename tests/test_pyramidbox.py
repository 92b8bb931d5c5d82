"""PyramidBox parts: PyramidAnchors labels by hand, data-anchor-sampling, max-in-out, LFPN, CPM."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from sodlab.anchors import all_anchors, anchors_for_level, s3fd_levels
from sodlab.data.transforms import DataAnchorSampling
from sodlab.matching import IGNORE, NEGATIVE, context_boxes, pyramid_anchor_labels
from sodlab.models.context import CPM, LevelCPM
from sodlab.models.heads import ContextClassifier, Head
from sodlab.models.necks import LFPN, Plain, build_neck

# ----------------------------------------------------------------------------- PyramidAnchors

FACE = torch.tensor([[6.0, 6.0, 22.0, 22.0]])  # 16 px, centre (14, 14): cell (3, 3) at stride 4


def _positive_centres(k: int, stride: int) -> set[tuple[float, float]]:
    """Anchor centres of one level of S3FD's paper anchors (4 x stride) labelled for branch k."""
    lv = {lv.stride: lv for lv in s3fd_levels((4, 8, 16, 32))}[stride]
    anchors = anchors_for_level(8, 8, lv)  # 8 x 8 cells: covers 32 px at stride 4
    lab = pyramid_anchor_labels(anchors, context_boxes(FACE, k))
    centres = (anchors[lab == 0, :2] + anchors[lab == 0, 2:]) / 2
    return {tuple(c) for c in centres.tolist()}


def test_a_16px_face_at_stride_4_by_hand():
    # k = 0, face: stride-4 anchors of 16 px; IoU 1 at (14, 14), 0.6 one cell off, 0.39
    # diagonally, 0.33 two cells off -> the 3 x 3 block of cells around the face's own
    assert _positive_centres(0, 4) == {(x, y) for x in (10, 14, 18) for y in (10, 14, 18)}
    for s in (8, 16, 32):  # a 32 px anchor holding the whole face: IoU 256 / 1024 = 0.25
        assert _positive_centres(0, s) == set()
    # k = 1, head = the face grown 2x about its centre, [-2, -2, 30, 30], on 32 px anchors at
    # stride 8 (centres 4, 12, 20, 28): (12, 12) 0.78, (12, 20) 0.62, (20, 20) 0.49,
    # (4, 12) 0.48, (4, 20) 0.39, (12, 28) 0.36 (540 / 1508) pass; (4, 4) 0.31,
    # (20, 28) 0.30, (4, 28) 0.24 fail -> ten anchors (the set is symmetric in x and y)
    assert _positive_centres(1, 8) == ({(x, y) for x in (4, 12, 20) for y in (4, 12, 20)}
                                       - {(4, 4)}) | {(12, 28), (28, 12)}
    for s in (4, 16, 32):
        assert _positive_centres(1, s) == set()
    # k = 2, body = the face grown 4x, [-18, -18, 46, 46], on 64 px anchors at stride 16
    # (centres 8, 24, 40): (8, 8) 0.70, (8, 24) 0.62, (24, 24) 0.55, (8, 40) 0.37 pass;
    # (24, 40) 0.33 fails -> six anchors
    assert _positive_centres(2, 16) == {(8, 8), (24, 8), (8, 24), (24, 24), (40, 8), (8, 40)}
    for s in (4, 8, 32):
        assert _positive_centres(2, s) == set()


def test_threshold_is_strict_at_035():
    anchor = torch.tensor([[0.0, 0.0, 20.0, 10.0]])  # area 200
    for w, want in ((7.0, NEGATIVE), (7.01, 0), (6.99, NEGATIVE)):  # IoU = 10 w / 200
        box = torch.tensor([[0.0, 0.0, w, 10.0]])
        assert pyramid_anchor_labels(anchor, box).tolist() == [want], w
    # the same boundary through a derived head box: [1.75, 2.5, 5.25, 7.5] x 2 = [0, 0, 7, 10]
    face = torch.tensor([[1.75, 2.5, 5.25, 7.5]])
    assert context_boxes(face, 1).tolist() == [[0.0, 0.0, 7.0, 10.0]]
    assert pyramid_anchor_labels(anchor, context_boxes(face, 1)).tolist() == [NEGATIVE]
    assert pyramid_anchor_labels(anchor, context_boxes(face, 1), threshold=0.349).tolist() == [0]


def test_real_context_boxes_replace_derived_ones_row_by_row():
    faces = torch.tensor([[10.0, 10, 20, 20], [40, 40, 50, 50]])
    given = torch.tensor([[0.0, 0, 30, 40], [math.nan] * 4])
    out = context_boxes(faces, 2, given=given)
    assert out[0].tolist() == [0, 0, 30, 40]  # the real body box
    assert out[1].tolist() == [25, 25, 65, 65]  # derived: 10 px x 4 about (45, 45)
    assert context_boxes(faces, 0).tolist() == faces.tolist()


def _loop_labels(anchors, targets, ignore, thr):
    out = []
    for a in anchors.tolist():
        best, arg, crowd = -1.0, None, False
        for j, b in enumerate(targets.tolist()):
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            iou = inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
            if iou > thr and ignore[j]:
                crowd = True
            elif iou > thr and iou > best:
                best, arg = iou, j
        out.append(arg if arg is not None else (IGNORE if crowd else NEGATIVE))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_labels_against_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = anchors_for_level(6, 6, s3fd_levels((8,))[0])
    xy = torch.rand(5, 2, generator=g) * 40
    wh = 6 + torch.rand(5, 2, generator=g) * 30
    boxes = torch.cat([xy, xy + wh], 1)
    ignore = torch.tensor([False, True, False, False, True])
    got = pyramid_anchor_labels(anchors, boxes, ignore).tolist()
    assert got == _loop_labels(anchors, boxes, ignore.tolist(), 0.35)


# ----------------------------------------------------------------------- data-anchor-sampling

SIZES = [16.0, 32.0, 64.0, 128.0, 256.0, 512.0]  # PyramidBox's anchors


def _scene(face_wh: float, *, H: int = 120, W: int = 160):
    """A black image with white face squares (and one more box for the drop/clip rules)."""
    image = torch.zeros(3, H, W)
    boxes = torch.tensor([[40.0, 30.0, 40.0 + face_wh, 30.0 + face_wh],
                          [100.0, 60.0, 130.0, 100.0]])
    for b in boxes.int().tolist():
        image[:, b[1]:b[3], b[0]:b[2]] = 1.0
    target = {"boxes": boxes, "labels": torch.tensor([0, 0]),
              "iscrowd": torch.tensor([False, False]), "area": torch.tensor([100.0, 1200.0]),
              "head_boxes": boxes + torch.tensor([-2.0, -2, 2, 2]),
              "body_boxes": torch.tensor([[30.0, 20.0, 70.0, 140.0], [math.nan] * 4]),
              "image_id": 7}
    return image, target


@pytest.mark.parametrize("face", [5.0, 12.0, 40.0, 70.0])
def test_das_target_sizes_lie_in_the_stated_range(face):
    das = DataAnchorSampling(SIZES, 64, p=1.0)
    boxes = torch.tensor([[10.0, 10.0, 10.0 + face, 10.0 + face]])
    s = face
    nearest = min(range(len(SIZES)), key=lambda i: (abs(SIZES[i] - s), i))
    seen = set()
    for seed in range(300):
        d = das.draw(boxes, None, torch.Generator().manual_seed(seed))
        assert d["face"] == 0 and d["nearest"] == nearest
        assert 0 <= d["index"] <= min(5, nearest + 1)
        a = SIZES[d["index"]]
        assert a / 2 <= d["target"] <= 2 * a
        assert d["scale"] == pytest.approx(d["target"] / s)
        seen.add(d["index"])
    assert seen == set(range(min(5, nearest + 1) + 1))  # every allowed index is drawn


@pytest.mark.parametrize("seed", range(12))
def test_das_boxes_stay_tight_after_rescale_and_crop(seed):
    das = DataAnchorSampling([4.0, 8.0, 16.0, 32.0], 48, p=1.0)
    image, target = _scene(12.0)
    out, t = das(image, target, torch.Generator().manual_seed(seed))
    assert out.shape == (3, 48, 48)
    b = t["boxes"]
    assert len(b) >= 1
    assert (b >= 0).all() and (b <= 48).all() and (b[:, 2:] > b[:, :2]).all()
    assert set(t) >= {"boxes", "labels", "iscrowd", "area", "head_boxes", "body_boxes"}
    assert t["image_id"] == 7 and all(len(t[k]) == len(b) for k in ("labels", "iscrowd"))
    # tight: the half-intensity region of the white squares is the union of the boxes,
    # to a pixel (bilinear up-scaling / antialiased down-scaling put the 0.5 level on the edge)
    white = out[0] > 0.5  # [48, 48]
    near = torch.zeros(48, 48, dtype=torch.bool)
    for x1, y1, x2, y2 in b.tolist():
        near[max(0, math.floor(y1) - 1):math.ceil(y2) + 1,
             max(0, math.floor(x1) - 1):math.ceil(x2) + 1] = True
        if x2 - x1 >= 4 and y2 - y1 >= 4:
            assert white[math.ceil(y1) + 1:math.floor(y2) - 1,
                         math.ceil(x1) + 1:math.floor(x2) - 1].all()
    assert not (white & ~near).any()


@pytest.mark.parametrize("seed", range(40))
def test_das_chosen_face_is_inside_the_crop_at_its_target_size(seed):
    das = DataAnchorSampling([4.0, 8.0, 16.0, 32.0], 96, p=1.0)
    image, target = _scene(10.0)
    g = torch.Generator().manual_seed(seed)
    torch.rand((), generator=g)  # __call__ draws p first, then the same choices
    d = das.draw(target["boxes"], target["iscrowd"], g)
    out, t = das(image, target, torch.Generator().manual_seed(seed))
    scale = d["scale"]
    sx = scale if scale >= 1 else round(160 * scale) / 160  # the shrunk image is whole pixels
    sy = scale if scale >= 1 else round(120 * scale) / 120
    assert abs(sx - scale) <= 0.5 / 160 and abs(sy - scale) <= 0.5 / 120
    wh = (target["boxes"][d["face"], 2:] - target["boxes"][d["face"], :2]).tolist()
    want = [wh[0] * sx, wh[1] * sy]
    # the chosen face is in the crop, whole (not clipped) and trained, at the drawn size
    hits = [i for i, bb in enumerate(t["boxes"].tolist())
            if abs(bb[2] - bb[0] - want[0]) < 1e-2 and abs(bb[3] - bb[1] - want[1]) < 1e-2]
    assert hits, (d, t["boxes"])
    assert not t["iscrowd"][hits].all()
    if scale >= 1:
        assert math.sqrt(want[0] * want[1]) == pytest.approx(d["target"], rel=1e-5)


def test_das_object_rules_and_context_boxes():
    das = DataAnchorSampling([4.0, 8.0, 16.0], 40, p=1.0)
    image, target = _scene(12.0)
    # force a known geometry: scale 1, crop at (30, 20): face kept whole; the second box
    # [100, 60, 130, 100] -> [70, 40, 100, 80] lies outside the 40 px crop -> dropped
    t = das._move_target(target, 30.0, 20.0, 1.0, 1.0)
    assert t["boxes"].tolist() == [[10.0, 10.0, 22.0, 22.0]]
    assert t["head_boxes"].tolist() == [[8.0, 8.0, 24.0, 24.0]]
    assert t["body_boxes"].tolist() == [[0.0, 0.0, 40.0, 120.0]]  # moved, not clipped
    # crop at (90, 55): second box clipped to [10, 5, 40, 40], centre (25, 25) inside -> kept;
    # crop at (60, 40): face [-20, -10, -8, 2] and second box [40, 20, 70, 60] hold no crop
    # pixel -> both dropped; crop at (75, 30): second box [25, 30, 55, 70], centre (40, 50)
    # outside -> kept clipped, ignored
    t = das._move_target(target, 90.0, 55.0, 1.0, 1.0)
    assert t["boxes"].tolist() == [[10.0, 5.0, 40.0, 40.0]]
    assert t["iscrowd"].tolist() == [False]
    assert t["area"].tolist() == pytest.approx([1200.0 * (30 * 35) / (30 * 40)])
    assert torch.isnan(t["body_boxes"]).all()  # a missing context box stays missing
    assert len(das._move_target(target, 60.0, 40.0, 1.0, 1.0)["boxes"]) == 0
    t = das._move_target(target, 75.0, 30.0, 1.0, 1.0)
    assert t["boxes"].tolist() == [[25.0, 30.0, 40.0, 40.0]] and t["iscrowd"].tolist() == [True]


def test_das_probability_and_json():
    das = DataAnchorSampling(**json.loads(json.dumps(
        {"anchor_sizes": [4, 8, 16], "size": 32, "p": 0.0})))
    assert DataAnchorSampling(**das.to_dict()).to_dict() == das.to_dict()
    image, target = _scene(12.0)
    out, t = das(image, target, torch.Generator().manual_seed(0))
    assert out.shape == (3, 24, 32)  # p = 0: ResizeLongest(32) only
    torch.testing.assert_close(t["boxes"], target["boxes"] * 0.2)
    with pytest.raises(ValueError, match="ascending"):
        DataAnchorSampling([8, 4], 32)
    # no trained face: resized only
    crowd = dict(target, iscrowd=torch.tensor([True, True]))
    out, _ = DataAnchorSampling([4, 8], 32, p=1.0)(image, crowd, torch.Generator())
    assert out.shape == (3, 24, 32)


# ------------------------------------------------------------------------------- max-in-out

def test_max_in_out_counts_one_one_is_the_plain_head():
    torch.manual_seed(0)
    plain = Head(8, {4: 2, 8: 1}, 3, depth=1, prior=None, background_prior=0.99)
    torch.manual_seed(0)
    same = Head(8, {4: 2, 8: 1}, 3, depth=1, prior=None, background_prior=0.99,
                maxout={4: 0, 8: 0}, maxin={4: 0, 8: 0})
    sd_a, sd_b = plain.state_dict(), same.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    feats = {4: torch.randn(2, 8, 4, 5), 8: torch.randn(2, 8, 2, 3)}
    for s in feats:
        for x, y in zip(plain(feats)[s], same(feats)[s]):
            assert torch.equal(x, y)


def test_max_in_out_takes_the_max_of_each_group():
    torch.manual_seed(0)
    # finest level: 1 face, 3 background scores; the other: 3 face scores per class, 1 bg
    head = Head(8, {4: 2, 8: 2}, 3, depth=0, prior=None, maxout={4: 2}, maxin={8: 2})
    assert head.cls["4"].out_channels == 2 * 5 and head.cls["8"].out_channels == 2 * 7
    x = torch.randn(1, 8, 3, 4)
    out = head({4: x, 8: x})
    raw4 = head.cls["4"](x).permute(0, 2, 3, 1).reshape(1, -1, 5)
    raw8 = head.cls["8"](x).permute(0, 2, 3, 1).reshape(1, -1, 7)  # [bg, c1 x 3, c2 x 3]
    c4, c8 = out[4][0], out[8][0]
    assert c4.shape == c8.shape == (1, 3 * 4 * 2, 3)
    for a in range(c8.shape[1]):  # loop reference
        assert c4[0, a, 0] == max(raw4[0, a, :3].tolist())
        assert c4[0, a, 1:].tolist() == raw4[0, a, 3:].tolist()
        assert c8[0, a, 0] == raw8[0, a, 0]
        assert c8[0, a, 1] == max(raw8[0, a, 1:4].tolist())
        assert c8[0, a, 2] == max(raw8[0, a, 4:7].tolist())
    with pytest.raises(ValueError, match="maxin"):
        Head(8, {4: 1}, 1, maxin={4: 2})


def test_context_classifier_shapes_and_prior():
    cc = ContextClassifier(8, {4: 2, 8: 1})
    out = cc({4: torch.randn(2, 8, 3, 3), 8: torch.randn(2, 8, 2, 2)})
    assert out[4].shape == (2, 18, 2, 2) and out[8].shape == (2, 4, 2, 2)
    assert out[4].softmax(-1)[..., 0].mean() > 0.95


# ------------------------------------------------------------------------------------- LFPN

CH = {4: 6, 8: 7, 16: 8, 32: 9, 64: 10, 128: 11}


def _feats(B=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {s: torch.randn(B, c, math.ceil(size / s), math.ceil(size / s), generator=g)
            for s, c in CH.items()}


def test_lfpn_shapes_and_default_start():
    neck = build_neck("lfpn", CH, list(CH), 16).eval()
    assert neck.start == 32 and neck.fused == [4, 8, 16]
    out = neck(_feats(2))
    assert sorted(out) == sorted(CH)
    for s, f in out.items():
        assert f.shape == (2, 16, math.ceil(64 / s), math.ceil(64 / s))
    with pytest.raises(ValueError, match="start"):
        LFPN(CH, list(CH), 16, start=24)


def test_lfpn_levels_from_the_start_up_are_not_fused():
    torch.manual_seed(0)
    neck = LFPN(CH, list(CH), 16, start=32).eval()
    torch.manual_seed(1)
    plain = Plain(CH, [32, 64, 128], 16).eval()
    plain.load_state_dict({k: v for k, v in neck.state_dict().items() if k.startswith("proj.")})
    f = _feats()
    out = neck(f)
    ref = plain(f)
    for s in (32, 64, 128):  # projected only: the same as the plain neck
        assert torch.equal(out[s], ref[s])
    g = dict(f)
    g[4] = torch.randn_like(f[4])
    g[8] = torch.randn_like(f[8])  # changing fine maps leaves the start level and above
    g[64] = torch.randn_like(f[64])  # and a level above the start feeds no fusion
    out2 = neck(g)
    for s in (32, 128):
        assert torch.equal(out[s], out2[s])
    assert torch.equal(out[16], out2[16])  # stride 16 sees only 16 and 32
    assert not torch.equal(out[8], out2[8])
    # the fusion is a product: a zero lateral map gives a zero level
    g = dict(f)
    neck.lateral["16"][1].weight.data.zero_()
    neck.lateral["16"][1].bias.data.zero_()
    assert neck(g)[16].abs().max() == 0


def test_lfpn_fusions_against_a_loop():
    """Product and sum from the same weights, each against the pathway written out by hand."""
    torch.manual_seed(0)
    prod = LFPN(CH, list(CH), 16).eval()
    add = LFPN(CH, list(CH), 16, fusion="sum").eval()
    add.load_state_dict(prod.state_dict())
    f = _feats(seed=3)
    for neck, merge in ((prod, torch.mul), (add, torch.add)):
        out = neck(f)
        top = f[32]
        for s in (16, 8, 4):  # coarse to fine
            lat = neck.lateral[str(s)](f[s])
            up = F.interpolate(neck.top[str(s)](top), size=lat.shape[-2:], mode="bilinear",
                               align_corners=False)
            top = merge(up, lat)
            assert torch.allclose(out[s], top, atol=1e-6), (neck.fusion, s)
    assert not torch.allclose(prod(f)[4], add(f)[4])
    with pytest.raises(ValueError, match="fusion"):
        LFPN(CH, list(CH), 16, fusion="concat")


def test_lfpn_fusion_is_a_detector_option():
    """``lfpn_fusion`` reaches the neck, is checked, and leaves the product's run key alone."""
    from sodlab.detector import build_detector, make_config
    from sodlab.engine.cache import _beside_defaults
    from sodlab.errors import InputError

    def cfg(**over):
        return make_config("s3fd", num_classes=1, overrides={"lfpn": True, **over})

    assert build_detector(cfg(lfpn_fusion="sum")).neck.fusion == "sum"
    assert build_detector(cfg()).neck.fusion == "product"
    assert "lfpn_fusion" not in _beside_defaults(make_config("pyramidbox", num_classes=1))
    with pytest.raises(InputError, match="lfpn_fusion"):
        cfg(lfpn_fusion="max")


# -------------------------------------------------------------------------------------- CPM

def test_cpm_shapes_and_receptive_field():
    torch.manual_seed(0)
    cpm = CPM(16).eval()
    x = torch.randn(4, 16, 15, 15, requires_grad=True)
    y = cpm.branches(x)
    assert y.shape == (4, 16, 15, 15)
    y[:, :, 7, 7].sum().backward()  # four inputs, so no cell is hidden by a dead ReLU
    reach = torch.nonzero(x.grad.abs().sum((0, 1))).tolist()
    rows, cols = {r for r, _ in reach}, {c for _, c in reach}
    assert rows == cols == set(range(4, 11))  # 7x7: the deepest branch has three 3x3 convs
    assert LevelCPM(16, [4, 8])({4: torch.randn(1, 16, 4, 4), 8: torch.randn(1, 16, 2, 2)})[
        8].shape == (1, 16, 2, 2)
    with pytest.raises(ValueError, match="quarters"):
        CPM(18)


def test_cpm_starts_as_the_identity_and_learns_its_gate():
    torch.manual_seed(0)
    cpm = CPM(8).eval()
    x = torch.randn(2, 8, 6, 6)
    assert torch.equal(cpm(x), x)  # gate zero: the head first sees the neck unchanged
    cpm(x).square().sum().backward()
    assert cpm.gate.grad.abs().sum() > 0  # ...and the gate has a gradient to leave zero with
    with torch.no_grad():  # the gate is per channel: a closed channel passes, an open one adds
        cpm.gate.copy_(torch.tensor([0.0, 1.0] * 4).view(1, 8, 1, 1))
        y, branch = cpm(x), cpm.branches(x)
    assert torch.equal(y[:, 0::2], x[:, 0::2])
    assert torch.allclose(y[:, 1::2] - x[:, 1::2], branch[:, 1::2])
    assert branch[:, 1::2].abs().sum() > 0


# ------------------------------------------------------------------------- the pyramidbox preset

def _batch(with_context: bool):
    x = torch.rand(2, 3, 128, 128)
    faces = torch.tensor([[20.0, 24, 36, 40], [70, 60, 78, 69], [90, 10, 120, 44]])
    targets = []
    for _ in range(2):
        t = {"boxes": faces, "labels": torch.tensor([0, 0, 0]),
             "iscrowd": torch.tensor([False, False, True]), "size": (128, 120)}
        if with_context:
            t["head_boxes"] = context_boxes(faces, 1) + 1.0
            t["body_boxes"] = torch.tensor([[0.0, 10, 60, 140], [math.nan] * 4,
                                            [80, 0, 130, 128]])  # leaves the image
        targets.append(t)
    return x, targets


@pytest.mark.parametrize("with_context", [True, False])
@pytest.mark.parametrize("boxes", ["paper", "real"])
def test_pyramidbox_preset_trains_one_step_and_predicts(with_context, boxes):
    from sodlab.detector import CONTEXT_WEIGHTS, build_detector, make_config

    torch.manual_seed(0)
    cfg = make_config("pyramidbox", num_classes=1,
                      overrides={"input_size": 128, "pyramid_boxes": boxes})
    assert cfg.lfpn and cfg.cpm and cfg.pyramid_anchors and cfg.max_in_out
    assert cfg.strides == [4, 8, 16, 32, 64, 128]
    assert cfg.context_keys == (("head_bbox", "body_bbox") if boxes == "real" else ())
    model = build_detector(cfg)
    assert model.neck.start == 32 and model.head.maxout == {4: 2}
    assert model.head.maxin == {8: 2, 16: 2, 32: 2, 64: 2, 128: 2}
    x, targets = _batch(with_context)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    losses = model(x, targets)
    assert {"loss", "cls", "box", "head", "body", "context_derived"} <= set(losses)
    total = losses["cls"] + losses["box"] + CONTEXT_WEIGHTS["head"] * losses["head"] + \
        CONTEXT_WEIGHTS["body"] * losses["body"]
    torch.testing.assert_close(losses["loss"].detach(), total)
    assert losses["head"] > 0 and losses["body"] > 0 and torch.isfinite(losses["loss"])
    # two trained faces x two branches; real boxes given: only one body row is missing
    assert float(losses["context_derived"]) == (0.25 if with_context and boxes == "real"
                                                else 1.0)
    opt.zero_grad()
    losses["loss"].backward()
    assert model.context_head.cls["8"].weight.grad.abs().sum() > 0
    opt.step()
    model.eval()
    out = model(x)
    assert len(out) == 2 and out[0]["boxes"].shape[1] == 4
    # test time uses the face branch only: the context scores do not change the detections
    for conv in model.context_head.cls.values():
        conv.weight.data.normal_()
    again = model(x)
    assert all(torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
               for a, b in zip(out, again))


def test_pyramidbox_context_labels_in_the_loss_follow_the_stated_rule():
    from sodlab.detector import build_detector, make_config

    torch.manual_seed(0)
    model = build_detector(make_config("pyramidbox", num_classes=1))
    face = torch.tensor([[6.0, 6.0, 22.0, 22.0]])  # head [0, 0, 30, 30], body [0, 0, 46, 46]
    anchors = all_anchors(model.levels, (64, 64))  # 4 ... 128 px (the paper's x 1/4)
    seen = {}

    def spy(logits, labels, num_pos, **kw):
        seen.setdefault("n", []).append(int((labels >= 0).sum()))
        return logits.sum() * 0

    import sodlab.detector as det

    real = det.softmax_ohem_loss
    det.softmax_ohem_loss = spy
    try:
        A = len(anchors)
        t = [{"boxes": face, "labels": torch.tensor([0]), "iscrowd": torch.tensor([False]),
              "size": (64, 64)}]
        model.loss(torch.zeros(1, A, 2), torch.zeros(1, A, 4), anchors, t,
                   context=torch.zeros(1, A, 2, 2), hw=(64, 64))
        # real boxes: a body box leaving the image is matched by its clipped, visible part
        model.cfg.pyramid_boxes = "real"
        body = torch.tensor([[-20.0, 0.0, 44.0, 64.0]])  # -> [0, 0, 44, 64]
        model.loss(torch.zeros(1, A, 2), torch.zeros(1, A, 4), anchors,
                   [dict(t[0], body_boxes=body)], context=torch.zeros(1, A, 2, 2), hw=(64, 64))
    finally:
        det.softmax_ohem_loss = real
    # face, head, body positives against the same rule called directly
    want = [int((pyramid_anchor_labels(anchors, context_boxes(face, k).clamp(0, 64)) >= 0).sum())
            for k in (1, 2)]
    assert seen["n"][1:3] == want and min(want) > 0
    clipped = torch.tensor([[0.0, 0.0, 44.0, 64.0]])
    assert seen["n"][5] == int((pyramid_anchor_labels(anchors, clipped) >= 0).sum()) > 0
    assert seen["n"][5] != int((pyramid_anchor_labels(anchors, body) >= 0).sum())


def test_pyramidbox_config_errors():
    from sodlab.detector import make_config
    from sodlab.errors import InputError

    with pytest.raises(InputError, match="max_in_out"):
        make_config("pyramidbox", num_classes=1, overrides={"loss": "focal", "maxout_bg": 0})
    with pytest.raises(InputError, match="lfpn"):
        make_config("pyramidbox", num_classes=1, overrides={"neck": "fpn"})
    with pytest.raises(InputError, match="pyramid_boxes"):
        make_config("pyramidbox", num_classes=1, overrides={"pyramid_boxes": "drawn"})
    cfg = make_config("s3fd", num_classes=1, overrides=["lfpn=true", "pyramid_anchors=true"])
    assert cfg.lfpn and cfg.pyramid_anchors and not cfg.cpm and cfg.pyramid_boxes == "paper"
