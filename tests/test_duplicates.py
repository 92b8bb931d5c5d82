"""sodlab.metrics.duplicates: hand cases and loop references for duplicates, missed
neighbours, post-processing dispatch, side-by-side timing and relation-weight summaries."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torchvision

from sodlab.data.coco import to_coco_results
from sodlab.errors import InputError
from sodlab.metrics import duplicates as dup
from sodlab.nms import soft_nms


# --------------------------------------------------------------------------- references
def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _ref_image(faces, groups, dets, iou=0.5, overlap=0.0):
    """Face by face, detection by detection, as the module docstring says."""
    F = len(faces)
    owner = []
    for d in dets:
        best, who = -1.0, -1
        for f in range(F):
            v = _iou(d, faces[f])
            if v > best:
                best, who = v, f
        owner.append(who if best >= iou else -1)
    owned = [sum(1 for o in owner if o == f) for f in range(F)]
    found = [any(_iou(d, faces[f]) >= iou for d in dets) for f in range(F)]

    def neighbours(f, g):
        return f != g and groups[f] >= 0 and groups[f] == groups[g]

    out = dict.fromkeys(["duplicates", "group_duplicates", "group_missed", "missed_in_groups",
                         "missed_neighbours", "neighbour_overlaps"], 0)
    out["faces"] = F
    out["group_faces"] = sum(1 for g in groups if g >= 0)
    for f in range(F):
        extra = max(owned[f] - 1, 0)
        out["duplicates"] += extra
        if groups[f] < 0:
            continue
        out["group_duplicates"] += extra
        if found[f]:
            continue
        out["group_missed"] += 1
        if any(found[g] for g in range(F) if neighbours(f, g)):
            out["missed_in_groups"] += 1
        if any(owner[k] >= 0 and neighbours(f, owner[k]) and _iou(d, faces[f]) > overlap
               for k, d in enumerate(dets)):
            out["missed_neighbours"] += 1
    for f, g in itertools.combinations(range(F), 2):
        if neighbours(f, g) and _iou(faces[f], faces[g]) > overlap:
            out["neighbour_overlaps"] += 1
    return out


def _random_scene(gen, F=6, D=12):
    xy = torch.rand(F, 2, generator=gen) * 60
    wh = 8 + torch.rand(F, 2, generator=gen) * 20
    faces = torch.cat([xy, xy + wh], 1)  # [F, 4]
    groups = torch.randint(-1, 2, (F,), generator=gen)  # -1, 0 or 1
    pick = torch.randint(0, F, (D,), generator=gen)
    jitter = (torch.rand(D, 4, generator=gen) - 0.5) * 10
    dets = faces[pick] + jitter
    dets[:, 2:] = torch.maximum(dets[:, 2:], dets[:, :2] + 1)
    return faces, groups, dets


# --------------------------------------------------------------------------- image_duplicates
def test_hand_case_duplicates_and_a_missed_neighbour():
    # faces 0 and 1 form group 0 and touch; face 2 is on its own
    faces = torch.tensor([[0., 0., 10., 10.], [8., 0., 18., 10.], [50., 50., 60., 60.]])
    groups = torch.tensor([0, 0, -1])
    dets = torch.tensor([[0., 0., 10., 10.],     # face 0
                         [0.5, 0., 10.5, 10.],   # face 0 again: a duplicate
                         [1., 0., 11., 10.],     # and again
                         [50., 50., 60., 60.],   # face 2
                         [50., 51., 60., 61.]])  # face 2 again (not in a group)
    out = dup.image_duplicates(faces, groups, dets)
    assert out["duplicates"] == 3 and out["group_duplicates"] == 2
    # face 1 is not found while face 0's boxes overlap it: a missed neighbour
    assert out["group_missed"] == 1 and out["missed_in_groups"] == 1
    assert out["missed_neighbours"] == 1 and out["neighbour_overlaps"] == 1
    # with an overlap threshold above what face 0's boxes reach, nothing suppressed it
    assert dup.image_duplicates(faces, groups, dets, overlap=0.2)["missed_neighbours"] == 0


def test_a_duplicate_belongs_to_the_face_it_overlaps_most():
    faces = torch.tensor([[0., 0., 10., 10.], [4., 0., 14., 10.]])
    groups = torch.tensor([0, 0])
    # both detections sit nearer face 0: face 1 has none of its own, though one reaches 0.5
    dets = torch.tensor([[0., 0., 10., 10.], [1., 0., 11., 10.]])
    out = dup.image_duplicates(faces, groups, dets)
    assert out["group_duplicates"] == 1
    assert out["group_missed"] == 0  # IoU(det 1, face 1) = 0.54: face 1 counts as found


def test_labels_keep_detections_on_their_own_category():
    faces = torch.tensor([[0., 0., 10., 10.]])
    dets = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 10.]])
    out = dup.image_duplicates(faces, torch.tensor([0]), dets, face_labels=torch.tensor([1]),
                               det_labels=torch.tensor([1, 2]))
    assert out["duplicates"] == 0 and out["group_missed"] == 0


def test_empty_images():
    z = torch.zeros(0, 4)
    out = dup.image_duplicates(z, torch.zeros(0, dtype=torch.long), z)
    assert all(v == 0 for v in out.values())
    out = dup.image_duplicates(torch.tensor([[0., 0., 5., 5.], [9., 0., 14., 5.]]),
                               torch.tensor([1, 1]), z)
    assert out["group_missed"] == 2 and out["missed_in_groups"] == 0
    out = dup.image_duplicates(z, torch.zeros(0, dtype=torch.long), torch.ones(3, 4) * 2)
    assert out["duplicates"] == 0


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("overlap", [0.0, 0.1])
def test_image_duplicates_against_the_loop(seed, overlap):
    gen = torch.Generator().manual_seed(seed)
    faces, groups, dets = _random_scene(gen)
    got = dup.image_duplicates(faces, groups, dets, overlap=overlap)
    want = _ref_image(faces.tolist(), groups.tolist(), dets.tolist(), overlap=overlap)
    assert got == want


# --------------------------------------------------------------------------- duplicate_stats
def _coco(per_image):
    """A COCO dict from ``[(faces xyxy, groups, crowd flags)]`` per image."""
    images, anns = [], []
    for i, (faces, groups, crowd) in enumerate(per_image):
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 100, "height": 100})
        for box, g, c in zip(faces, groups, crowd):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1,
                         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                         "area": (box[2] - box[0]) * (box[3] - box[1]), "iscrowd": int(c),
                         "group": None if g < 0 else int(g)})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "face"}]}


def _dets(per_image):
    outs = [{"boxes": torch.tensor(b, dtype=torch.float32).reshape(-1, 4),
             "scores": torch.tensor(s, dtype=torch.float32),
             "labels": torch.zeros(len(s), dtype=torch.long)} for b, s in per_image]
    return to_coco_results(range(1, len(per_image) + 1), outs, cat_ids=[1])


def test_stats_hand_case_rates_score_threshold_and_crowd():
    gt = _coco([
        ([[0, 0, 10, 10], [30, 0, 40, 10], [60, 60, 70, 70]], [0, 0, -1], [0, 0, 0]),
        ([[0, 0, 10, 10], [20, 20, 30, 30]], [-1, -1], [0, 1]),  # not crowded
        ([[0, 0, 10, 10]], [2], [1]),  # its only group face is a crowd face: not crowded
    ])
    dets = _dets([
        ([[0, 0, 10, 10], [0, 0, 10, 10.5], [30, 0, 40, 10], [0, 0, 10.5, 10]],
         [0.9, 0.8, 0.7, 0.1]),
        ([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [20, 20, 30, 30]],
         [0.9, 0.9, 0.9, 0.9]),  # the two on the crowd face count nowhere
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.9]),
    ])
    s = dup.duplicate_stats(gt, dets)
    assert s["images"] == 3 and s["crowded_images"] == 1 and s["group_faces"] == 2
    assert s["group_duplicates"] == 2 and s["duplicates"] == 3
    assert s["duplicates_per_image"] == 2.0 and s["duplicates_all_per_image"] == 1.0
    assert s["recall_groups"] == 1.0 and s["missed_neighbours_per_image"] == 0.0
    high = dup.duplicate_stats(gt, dets, score_thresh=0.5)
    assert high["group_duplicates"] == 1 and high["duplicates"] == 2


def test_stats_without_groups_give_the_empty_mark():
    gt = _coco([([[0, 0, 10, 10]], [-1], [0])])
    s = dup.duplicate_stats(gt, _dets([([[0, 0, 10, 10]], [0.9])]))
    assert s["crowded_images"] == 0 and s["duplicates_per_image"] == dup.EMPTY
    assert s["recall_groups"] == dup.EMPTY and s["duplicates_all_per_image"] == 0.0


def test_stats_sum_the_per_image_loop():
    gen = torch.Generator().manual_seed(3)
    scenes, det_lists, want = [], [], dict.fromkeys(["group_duplicates", "missed_neighbours",
                                                     "missed_in_groups", "duplicates"], 0)
    for _ in range(5):
        faces, groups, dets = _random_scene(gen)
        scenes.append((faces.tolist(), groups.tolist(), [0] * len(faces)))
        det_lists.append((dets.tolist(), [0.5] * len(dets)))
    gt = _coco(scenes)
    records = _dets(det_lists)
    # the records are rounded to 1e-3 px: the reference reads them back the same way
    for i, (faces, groups, _) in enumerate(scenes):
        boxes = [[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2],
                  r["bbox"][1] + r["bbox"][3]] for r in records if r["image_id"] == i + 1]
        ref = _ref_image(faces, groups, boxes)
        for k in want:
            want[k] += ref[k]
    s = dup.duplicate_stats(gt, records)
    assert {k: s[k] for k in want} == want


def test_stats_bad_input():
    gt = _coco([([[0, 0, 10, 10]], [0], [0])])
    with pytest.raises(InputError, match="image ids"):
        dup.duplicate_stats(gt, _dets([([[0, 0, 1, 1]], [1.0])] * 2))
    with pytest.raises(InputError, match="COCO dict"):
        dup.duplicate_stats([], [])
    with pytest.raises(InputError, match="iou"):
        dup.duplicate_stats(gt, [], iou=0.0)
    gt["annotations"][0]["group"] = "left"
    with pytest.raises(InputError, match="group"):
        dup.duplicate_stats(gt, [])


def test_crowded_image_ids_order_and_threshold():
    gt = _coco([
        ([[0, 0, 5, 5], [9, 0, 14, 5]], [0, 0], [0, 0]),
        ([[0, 0, 5, 5], [9, 0, 14, 5], [20, 0, 25, 5]], [1, 1, 1], [0, 0, 0]),
        ([[0, 0, 5, 5], [9, 0, 14, 5]], [0, 0], [0, 1]),  # one left after the crowd one
        ([[0, 0, 5, 5]], [-1], [0]),
    ])
    assert dup.crowded_image_ids(gt) == [2, 1]
    assert dup.crowded_image_ids(gt, min_faces=1) == [2, 1, 3]


# --------------------------------------------------------------------------- post-processing
def _candidates(seed=0, D=40):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(D, 2, generator=gen) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(D, 2, generator=gen) * 20], 1)
    return {"boxes": boxes, "scores": torch.rand(D, generator=gen),
            "labels": torch.randint(0, 2, (D,), generator=gen)}


def test_remove_duplicates_matches_the_library_calls():
    c = _candidates()
    got = dup.remove_duplicates(c, method="nms", iou=0.4, max_dets=None)
    keep = torchvision.ops.batched_nms(c["boxes"], c["scores"], c["labels"], 0.4)
    assert torch.equal(got["boxes"], c["boxes"][keep])
    assert torch.equal(got["scores"], c["scores"][keep])
    for method in ("gaussian", "linear"):
        got = dup.remove_duplicates(c, method=f"soft-nms-{method}", sigma=0.3, linear_iou=0.2,
                                    score_thresh=0.01, max_dets=10)
        keep, scores = soft_nms(c["boxes"], c["scores"], c["labels"], method=method,
                                sigma=0.3, iou=0.2, score_thresh=0.01, max_dets=10)
        assert torch.equal(got["labels"], c["labels"][keep])
        assert torch.equal(got["scores"], scores) and len(scores) == 10
    got = dup.remove_duplicates(c, method="none", max_dets=5)
    assert torch.equal(got["scores"], torch.sort(c["scores"], descending=True).values[:5])
    with pytest.raises(InputError, match="method"):
        dup.remove_duplicates(c, method="soft")


class _Head:
    def __init__(self):
        self.nms_iou, self.max_dets, self.duplicate = 0.5, 100, object()


def test_candidates_only_sets_and_restores_even_on_error():
    head = _Head()
    learned = head.duplicate
    with dup.candidates_only(head):
        assert (head.nms_iou, head.max_dets, head.duplicate) == (1.0, None, None)
    assert (head.nms_iou, head.max_dets, head.duplicate) == (0.5, 100, learned)
    with pytest.raises(RuntimeError), dup.candidates_only(head):
        raise RuntimeError("boom")
    assert head.duplicate is learned


def test_time_side_by_side_takes_turns_and_reports_medians(monkeypatch):
    clock = iter(range(1000))  # each perf_counter call advances one "second"
    calls = []
    durations = {"a": [0, 5, 1, 9], "b": [0, 2, 2, 2]}  # warmup first, then the counted ones

    def fake():
        return float(next(clock))

    def make(name):
        def fn():
            calls.append(name)
            for _ in range(durations[name][len([c for c in calls if c == name]) - 1]):
                next(clock)
        return fn

    monkeypatch.setattr(dup.time, "perf_counter", fake)
    out = dup.time_side_by_side({"a": make("a"), "b": make("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    # the clock also advances once per reading: a call of k ticks measures k + 1
    assert out == {"a": 6.0, "b": 3.0}
    with pytest.raises(InputError):
        dup.time_side_by_side({}, repeats=0)


# --------------------------------------------------------------------------- relation weights
def test_match_faces_against_the_loop():
    gen = torch.Generator().manual_seed(1)
    faces, _, boxes = _random_scene(gen, F=5, D=20)
    got = dup.match_faces(boxes, faces).tolist()
    for n, b in enumerate(boxes.tolist()):
        ious = [_iou(b, f) for f in faces.tolist()]
        best = max(range(len(ious)), key=lambda i: (ious[i], -i))
        assert got[n] == (best if ious[best] >= 0.5 else -1)
    assert dup.match_faces(boxes, torch.zeros(0, 4)).tolist() == [-1] * 20


def _weights(gen, H, N, M):
    return torch.softmax(torch.randn(H, N, M, generator=gen), -1)


def test_face_attention_against_the_loop():
    gen = torch.Generator().manual_seed(2)
    w = _weights(gen, 3, 7, 7)
    face_of = torch.tensor([0, 0, 1, -1, 2, 2, -1])
    got = dup.face_attention(w, face_of, 4)
    wm = w.mean(0)
    for f in range(4):
        rows = [n for n in range(7) if face_of[n] == f]
        for g in range(4):
            cols = [m for m in range(7) if face_of[m] == g]
            want = (sum(float(wm[n, m]) for n in rows for m in cols) / len(rows)) if rows else 0
            assert got[f, g].item() == pytest.approx(want, abs=1e-6)
    assert got[:3].sum(1).le(1 + 1e-6).all()


def test_group_attention_against_the_loop():
    gen = torch.Generator().manual_seed(4)
    N = 9
    w = _weights(gen, 2, N, N)
    face_of = torch.tensor([0, 0, 1, 2, 3, 4, -1, -1, 1])
    groups = torch.tensor([0, 0, 0, 1, -1])
    identities = torch.tensor([7, 8, 9, 7, 8])
    got = dup.group_attention(w, face_of, groups, identities=identities)
    rel = w.mean(0) * N
    buckets: dict[str, list[float]] = {k: [] for k in ("self", "same face", "same group",
                                                       "same identity", "other face",
                                                       "background")}
    for n in range(N):
        f = int(face_of[n])
        if f < 0 or groups[f] < 0:
            continue
        for m in range(N):
            g = int(face_of[m])
            if m == n:
                k = "self"
            elif g < 0:
                k = "background"
            elif g == f:
                k = "same face"
            elif groups[g] == groups[f]:
                k = "same group"
            elif identities[g] == identities[f]:
                k = "same identity"
            else:
                k = "other face"
            buckets[k].append(float(rel[n, m]))
    for k, vals in buckets.items():
        assert got[f"{k} pairs"] == len(vals)
        assert got[k] == pytest.approx(sum(vals) / len(vals) if vals else dup.EMPTY, abs=1e-5)
    across = buckets["other face"] + buckets["same identity"]
    assert got["within / across"] == pytest.approx(
        (sum(buckets["same group"]) / len(buckets["same group"])) / (sum(across) / len(across)),
        rel=1e-5)


def test_group_attention_without_groups_or_faces():
    gen = torch.Generator().manual_seed(5)
    w = _weights(gen, 1, 3, 3)
    got = dup.group_attention(w, torch.tensor([-1, -1, -1]), torch.zeros(0, dtype=torch.long))
    assert got["same group"] == dup.EMPTY and got["within / across"] == dup.EMPTY
    assert got["self pairs"] == 0
    with pytest.raises(InputError):
        dup.group_attention(torch.ones(2, 2, 2, 2), torch.zeros(2), torch.zeros(1))


def test_draw_relations_one_line_per_strong_pair_widths_by_strength():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sodlab.viz import draw_relations

    boxes = torch.tensor([[0., 0., 2., 2.], [10., 0., 12., 2.], [0., 10., 2., 12.]])
    strength = torch.tensor([[0.5, 0.4, 0.0], [0.2, 0.5, 0.01], [0.1, 0.01, 0.8]])
    fig, ax = plt.subplots()
    lines = draw_relations(ax, boxes, strength, min_strength=0.02, max_width=4.0)
    # pairs (0, 1): 0.3, (0, 2): 0.05, (1, 2): 0.01 (below the minimum); weakest first
    assert len(lines) == 2
    assert [ln.get_linewidth() for ln in lines] == pytest.approx([4.0 * 0.05 / 0.3, 4.0])
    assert list(lines[1].get_xdata()) == [1.0, 11.0] and list(lines[1].get_ydata()) == [1.0, 1.0]
    directed = draw_relations(ax, boxes, strength, symmetric=False, min_strength=0.15)
    assert len(directed) == 2  # 0 -> 1 (0.4) and 1 -> 0 (0.2)
    plt.close(fig)


def test_stats_per_face_keeps_each_images_best_boxes():
    gt = _coco([([[0, 0, 10, 10], [30, 0, 40, 10]], [0, 0], [0, 0]),
                ([[0, 0, 10, 10]], [1], [0])])
    dets = _dets([
        # face 0 twice at the top, face 1 third: with 2 faces, per_face=1 keeps the duplicate
        ([[0, 0, 10, 10], [0, 0, 10, 10.5], [30, 0, 40, 10]], [0.9, 0.8, 0.7]),
        ([[0, 0, 10, 10], [0, 0, 10.5, 10], [0, 0, 10, 10.5]], [0.2, 0.3, 0.1]),
    ])
    one = dup.duplicate_stats(gt, dets, per_face=1.0)
    assert one["group_duplicates"] == 1 and one["group_missed"] == 1
    half = dup.duplicate_stats(gt, dets, per_face=0.5)  # ceil(0.5 * 2) = 1, ceil(0.5) = 1
    assert half["group_duplicates"] == 0 and half["group_missed"] == 1
    assert dup.duplicate_stats(gt, dets, per_face=1.5)["group_duplicates"] == 2
    assert dup.duplicate_stats(gt, dets, per_face=3.0)["group_duplicates"] == \
        dup.duplicate_stats(gt, dets)["group_duplicates"] == 3
    # ranking alone decides: scaling every score changes nothing
    scaled = [{**d, "score": d["score"] * 0.01} for d in dets]
    assert dup.duplicate_stats(gt, scaled, per_face=1.0) == one
    with pytest.raises(InputError, match="per_face"):
        dup.duplicate_stats(gt, dets, per_face=-1)


def test_group_attention_when_across_pairs_get_no_weight():
    # RoIs on faces 0 and 1 (one group) and face 2 (another); a relation module whose geometry
    # weight is ReLU'd to zero gives the across pairs exactly 0: the ratio is inf, not a crash
    face_of = torch.tensor([0, 1, 2])
    groups = torch.tensor([0, 0, 1])
    w = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # [N, M]
    got = dup.group_attention(w, face_of, groups)
    assert got["other face"] == 0.0 and got["other face pairs"] == 4
    assert got["same group"] == pytest.approx(1.5) and got["within / across"] == math.inf
    # within zero as well: undefined, marked empty
    w0 = torch.eye(3)
    assert dup.group_attention(w0, face_of, groups)["within / across"] == dup.EMPTY
