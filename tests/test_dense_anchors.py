"""Dense anchors (FaceBoxes densification, S3FD interval), scale compensation, matching
statistics, max-out background and the anchor explorer, against hand cases and loops."""

import math

import pytest
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator

from sodlab.anchors import (
    LevelSpec,
    all_anchors,
    anchors_for_level,
    cell_anchors,
    s3fd_levels,
    tiling_density,
)
from sodlab.detector import build_detector, level_specs, make_config
from sodlab.errors import InputError
from sodlab.matching import NEGATIVE, match_anchors, match_counts, object_match_stats, stats_by_size
from sodlab.models.heads import Head


def test_densified_cell_by_hand():
    a = cell_anchors([8.0], [1.0], [4], 32)  # four centres per axis: -12, -4, 4, 12
    assert a.shape == (16, 4)
    centres = ((a[:, :2] + a[:, 2:]) / 2)
    assert sorted(set(centres[:, 0].tolist())) == [-12.0, -4.0, 4.0, 12.0]
    assert centres[:4, 1].tolist() == [-12.0] * 4  # row-major: x varies fastest
    assert torch.allclose(a[:, 2:] - a[:, :2], torch.full((16, 2), 8.0))
    # n = 2 on a 16-px stride: centres at -4 and +4
    b = cell_anchors([16.0], [1.0], [2], 16)
    assert sorted(set(((b[:, 0] + b[:, 2]) / 2).tolist())) == [-4.0, 4.0]


def test_faceboxes_paper_design_has_21_anchors_per_cell_and_density_4():
    lv = LevelSpec(32, (32.0, 64.0, 128.0), (1.0,), densify=(4, 2, 1))
    assert lv.num_anchors == 16 + 4 + 1 == 21
    assert tiling_density(lv) == [4.0, 4.0, 4.0]
    assert tiling_density(LevelSpec(32, (32.0, 64.0, 128.0))) == [1.0, 2.0, 4.0]
    assert tiling_density(LevelSpec(64, (256.0,))) == [4.0]
    # densified anchors of size s, stride t: centres every t / n px over the whole map
    a = anchors_for_level(2, 2, lv)[:, :2]
    assert len(a) == 2 * 2 * 21


def test_s3fd_interval():
    levels = s3fd_levels()
    assert [lv.stride for lv in levels] == [4, 8, 16, 32, 64, 128]
    assert [lv.sizes[0] for lv in levels] == [16, 32, 64, 128, 256, 512]
    assert all(tiling_density(lv) == [4.0] for lv in levels)


def test_undensified_equals_torchvision_with_corner_offset():
    sizes, ratios = (16.0, 32.0), (0.5, 1.0, 2.0)
    gen = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    from torchvision.models.detection.image_list import ImageList

    feats = [torch.zeros(1, 1, 5, 7)]
    tv = gen(ImageList(torch.zeros(1, 3, 40, 56), [(40, 56)]), feats)[0]  # [5*7*6, 4]
    ours = anchors_for_level(5, 7, LevelSpec(8, sizes, ratios, offset=0.0, densify=(1, 1)))
    # torchvision: ratios outer, sizes inner, base anchors rounded; compare as sets per cell
    tv = tv.view(35, 6, 4)
    ours = ours.view(35, 6, 4)
    for c in range(35):
        a = sorted(map(tuple, tv[c].tolist()))
        b = sorted(map(tuple, ours[c].round().tolist()))
        assert a == b


def test_level_spec_errors():
    with pytest.raises(ValueError):
        LevelSpec(8, (8.0, 16.0), densify=(2,))
    with pytest.raises(ValueError):
        LevelSpec(0, (8.0,))
    with pytest.raises(ValueError):
        cell_anchors([8.0], [1.0], [2])  # densified without a stride


@pytest.mark.parametrize("preset", ["faceboxes", "faceboxes_s16", "s3fd", "fpn"])
@pytest.mark.parametrize("hw", [(128, 128), (97, 161)])
def test_anchor_count_equals_head_outputs(preset, hw):
    torch.manual_seed(0)
    model = build_detector(make_config(preset, num_classes=1)).eval()
    feats = model.neck(model.backbone(torch.zeros(1, 3, *hw)))
    outs = model.head(feats)
    n_out = sum(o[0].shape[1] for o in outs.values())
    assert n_out == len(all_anchors(model.levels, hw))


def test_presets_keep_the_papers_structure():
    fb = level_specs(make_config("faceboxes", num_classes=1))
    assert [lv.stride for lv in fb] == [32, 64, 128]
    assert fb[0].num_anchors == 21 and [lv.num_anchors for lv in fb[1:]] == [1, 1]
    paper = [[32, 64, 128], [256], [512]]
    assert [[s * 4 for s in lv.sizes] for lv in fb] == paper  # x 1/4, one factor
    assert [tiling_density(lv) for lv in fb] == [[1.0, 1.0, 1.0], [1.0], [1.0]]
    s16 = level_specs(make_config("faceboxes_s16", num_classes=1))
    assert [lv.stride for lv in s16] == [16, 32, 64, 128]
    assert sorted(s for lv in s16 for s in lv.sizes) == sorted(s for lv in fb for s in lv.sizes)
    assert all(d == 1.0 for lv in s16 for d in tiling_density(lv))  # same density, finer grid
    s3 = level_specs(make_config("s3fd", num_classes=1))
    assert [lv.sizes[0] * 4 for lv in s3] == [4 * lv.stride for lv in s3]  # anchor = 4 x stride
    cfg = make_config("s3fd", num_classes=1)
    assert cfg.compensate and cfg.pos_iou == 0.35 and cfg.maxout_bg == 2


def _loop_compensate(anchors, boxes, n, thr=0.35, min_iou=0.1):
    iou = torchvision.ops.box_iou(anchors, boxes).tolist()
    out = []
    for row in iou:
        best = max(range(len(row)), key=lambda j: row[j])
        out.append(best if row[best] >= thr else -1)
    counts = [out.count(j) for j in range(len(boxes))]
    if n is None:
        n = max(1, round(sum(counts) / len(counts)))
    for j in range(len(boxes)):
        if counts[j] >= n:
            continue
        free = [i for i in range(len(anchors)) if out[i] < 0 and iou[i][j] > min_iou]
        free.sort(key=lambda i: -iou[i][j])
        for i in free[:n - counts[j]]:
            out[i] = j
    return out


@pytest.mark.parametrize("seed", range(4))
def test_scale_compensation_against_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    anchors = all_anchors(s3fd_levels((4, 8, 16), per_stride=1.0), (64, 64))
    xy = torch.rand(5, 2, generator=g) * 48
    wh = torch.rand(5, 2, generator=g) * 20 + 3
    boxes = torch.cat([xy, xy + wh], 1)
    got = match_anchors(anchors, boxes, pos_iou=0.35, neg_iou=0.35, allow_low_quality=False,
                        compensate=True)
    want = _loop_compensate(anchors, boxes, None)
    assert got.tolist() == want


def test_compensation_lifts_a_small_face_and_steals_nothing():
    anchors = all_anchors([LevelSpec(8, (16.0,))], (64, 64))
    # a 16-px face between four anchor centres (IoU 144 / 368 = 0.39 each), and a 6-px face
    # whose best anchor has IoU 36 / 256 = 0.14, the next 24 / 256 = 0.09
    boxes = torch.tensor([[8.0, 8, 24, 24], [40, 40, 46, 46]])
    plain = match_counts(anchors, boxes, pos_iou=0.35, neg_iou=0.35, allow_low_quality=False)
    assert plain.tolist() == [4, 0]
    comp = match_anchors(anchors, boxes, pos_iou=0.35, neg_iou=0.35, allow_low_quality=False,
                         compensate=True, compensate_n=3)
    counts = torch.bincount(comp[comp >= 0], minlength=2)
    assert counts.tolist() == [4, 1]  # the 6-px face has a single anchor with IoU > 0.1
    before = match_anchors(anchors, boxes, pos_iou=0.35, neg_iou=0.35, allow_low_quality=False)
    assert (comp[before >= 0] == before[before >= 0]).all()
    assert (comp[comp < 0] == NEGATIVE).all()


def test_object_match_stats_and_bins_by_hand():
    levels = [LevelSpec(8, (8.0,))]
    samples = [((32, 32), torch.tensor([[0.0, 0, 8, 8], [0, 0, 32, 32], [3, 3, 5, 5]]),
                torch.tensor([False, False, True]))]
    st = object_match_stats(levels, samples, pos_iou=0.5, neg_iou=0.5, allow_low_quality=False)
    assert st["size"].tolist() == [8.0, 32.0] and st["matched"].tolist() == [1, 0]
    rows = stats_by_size(st, [0, 16, 64])
    assert rows[0]["objects"] == 1 and rows[0]["mean_matched"] == 1.0
    assert rows[1]["share_unmatched"] == 1.0
    assert math.isnan(stats_by_size(st, [100, 200])[0]["mean_matched"])


def test_maxout_background_is_the_max_of_its_scores():
    torch.manual_seed(0)
    head = Head(8, {4: 2}, 3, depth=0, prior=None, maxout={4: 2})
    x = torch.randn(1, 8, 3, 5)
    cls, _ = head({4: x})[4]
    raw = head.cls["4"](x).permute(0, 2, 3, 1).reshape(1, -1, 5)  # [1, HWA, 3 + 2]
    assert cls.shape == (1, 3 * 5 * 2, 3)
    assert torch.equal(cls[..., 0], raw[..., :3].max(-1).values)
    assert torch.equal(cls[..., 1:], raw[..., 3:])


def test_softmax_heads_start_at_background():
    torch.manual_seed(0)
    model = build_detector(make_config("s3fd", num_classes=2)).eval()
    outs = model.head(model.neck(model.backbone(torch.rand(1, 3, 64, 64))))
    for cls, _ in outs.values():
        p_bg = cls.softmax(-1)[..., 0]
        assert p_bg.mean() > 0.9


def test_maxout_needs_softmax():
    with pytest.raises(InputError, match="softmax"):
        make_config("s3fd", num_classes=1, overrides={"loss": "focal"})
    with pytest.raises(InputError, match="densify"):
        make_config("faceboxes", num_classes=1, overrides={"anchor_densify": [[4, 2], [1], [1]]})


def test_anchor_explorer_callbacks():
    from sodlab.widgets.anchors import Design, anchor_view, design_levels, explorer

    levels = design_levels([8, 16], [[8.0], [16.0]], densify=[[2], [1]])
    box = torch.tensor([20.0, 20, 28, 29])
    view = anchor_view(Design(levels, (64, 64), 0.35), box)
    anchors = all_anchors(levels, (64, 64))
    want = match_counts(anchors, box[None], pos_iou=0.35, neg_iou=0.35, allow_low_quality=False)
    assert view["count"] == int(want[0]) > 0
    assert view["heat"].shape == (8, 8) and view["cell_anchors"][8].shape == (4, 4)
    assert view["figure"] is not None
    comp = anchor_view(Design(levels, (64, 64), 0.9, compensate=True, compensate_n=2), box,
                       figure=False)
    assert comp["count"] == 2 and comp["figure"] is None
    with pytest.raises(InputError):
        anchor_view(Design(levels), [5, 5, 5, 9])
    with pytest.raises(InputError):
        design_levels([8], [[8.0], [16.0]])
    w = explorer(canvas=(64, 64), draw=False)
    w.redraw()
    assert "matched" in w.children[3].value
    w.children[0].children[1].value = "8; x"  # a bad design shows an error, no exception
    assert "error" in w.children[3].value
