"""WIDER FACE's evaluation protocol: .mat fixtures in the official structure, a hand-computed
AP, agreement with a slow loop implementation of the tool's rules, readers/writers, errors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from scipy.io import savemat

from sodlab.cli import main
from sodlab.errors import InputError
from sodlab.metrics.wider import (
    evaluate_wider,
    load_wider_gt,
    read_wider_dets,
    write_wider_dets,
    write_wider_image,
)

SUBSETS = ("easy", "medium", "hard")


# --------------------------------------------------------------------------- fixtures
def _cell(items) -> np.ndarray:
    """A MATLAB cell column (object array [n, 1]) holding ``items``."""
    c = np.empty((len(items), 1), dtype=object)
    for k, it in enumerate(items):
        c[k, 0] = it
    return c


def write_gt(folder, events, files, boxes, keeps):
    """The four official val files: events [E], files [E][I], boxes [E][I] -> [F, 4] x y w h,
    keeps {subset: [E][I] -> 1-based indices}."""
    folder.mkdir(parents=True, exist_ok=True)
    savemat(folder / "wider_face_val.mat", {
        "event_list": _cell(events),
        "file_list": _cell([_cell(fs) for fs in files]),
        "face_bbx_list": _cell([_cell([np.asarray(b, dtype=float).reshape(-1, 4) for b in bs])
                                for bs in boxes]),
    })
    for s in SUBSETS:
        savemat(folder / f"wider_{s}_val.mat", {
            "gt_list": _cell([_cell([np.asarray(k, dtype=float).reshape(-1, 1) for k in ks])
                              for ks in keeps[s]])})
    return folder


def random_case(seed):
    """Random ground truth and detections with ties, duplicates, empty images, logits."""
    rng = np.random.default_rng(seed)
    E = int(rng.integers(1, 4))
    events = [f"{e}--Event{e}" for e in range(E)]
    files, boxes, keeps = [], [], {s: [] for s in SUBSETS}
    dets = {}
    for e in range(E):
        n_img = int(rng.integers(1, 4))
        files.append([f"{e}_Event{e}_img_{i}" for i in range(n_img)])
        eb, ek = [], {s: [] for s in SUBSETS}
        for i in range(n_img):
            F = int(rng.integers(0, 7))
            xy = rng.integers(0, 120, (F, 2))
            wh = rng.integers(3, 25, (F, 2))  # small: the +1-pixel rule matters
            b = np.concatenate([xy, wh], 1).astype(float)
            eb.append(b)
            hard = [k + 1 for k in range(F) if rng.random() < 0.8]
            medium = [k for k in hard if rng.random() < 0.7]
            easy = [k for k in medium if rng.random() < 0.6]
            for s, k in zip(SUBSETS, (easy, medium, hard)):
                ek[s].append(k)
            if rng.random() < 0.15:
                continue  # no detections for this image
            rows = []
            for f in range(F):  # hits, jittered; some twice
                for _ in range(int(rng.integers(0, 3))):
                    rows.append([*(b[f] + rng.normal(0, 1.2, 4)), 0.4 + 0.6 * rng.random()])
            for _ in range(int(rng.integers(0, 5))):  # background
                rows.append([*rng.integers(0, 150, 2), *rng.integers(3, 25, 2),
                             0.7 * rng.random()])
            if not rows:
                continue
            d = np.asarray(rows, dtype=float)
            if seed % 3 == 0:  # raw scores outside [0, 1]: all above 1, or some negative
                d[:, 4] = 4 * d[:, 4] + (1.5 if seed % 2 == 0 else -1.5)
            else:
                d[:, 4] = np.round(d[:, 4], 1)  # ties
            dets[(events[e], files[-1][i])] = d
        boxes.append(eb)
        for s in SUBSETS:
            keeps[s].append(ek[s])
    return events, files, boxes, keeps, dets


# --------------------------------------------------------------------------- slow reference
def slow_wider(events, files, boxes, keeps, dets, thresh_num=1000, iou_thresh=0.5):
    """The tool's rules, one loop at a time, straight from its description."""
    preds = {}
    for key, a in dets.items():  # sort by raw score, descending, stable
        rows = [list(map(float, r)) for r in a]
        order = sorted(range(len(rows)), key=lambda k: -rows[k][4])
        preds[key] = [rows[k] for k in order]
    lo, hi = 1.0, 0.0
    for rows in preds.values():
        for r in rows:
            lo, hi = min(lo, r[4]), max(hi, r[4])
    for rows in preds.values():
        for r in rows:
            r[4] = (r[4] - lo) / (hi - lo) if hi > lo else 1.0

    def iou(a, b):  # x y w h, +1 pixel
        ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
        iw = min(ax2, bx2) - max(a[0], b[0]) + 1
        ih = min(ay2, by2) - max(a[1], b[1]) + 1
        if iw <= 0 or ih <= 0:
            return 0.0
        aa = (ax2 - a[0] + 1) * (ay2 - a[1] + 1)
        ab = (bx2 - b[0] + 1) * (by2 - b[1] + 1)
        return iw * ih / (aa + ab - iw * ih)

    out = {}
    for s in SUBSETS:
        curve = [[0.0, 0.0] for _ in range(thresh_num)]
        count = 0
        for e, ev in enumerate(events):
            for i, f in enumerate(files[e]):
                keep = [k - 1 for k in keeps[s][e][i]]
                count += len(keep)
                gt = [list(map(float, b)) for b in boxes[e][i]]
                pr = preds.get((ev, f), [])
                if not gt or not pr:
                    continue
                recall_list = [0] * len(gt)
                proposal = [1] * len(pr)
                pred_recall = [0] * len(pr)
                for h, p in enumerate(pr):
                    ovs = [iou(p, g) for g in gt]
                    best = max(range(len(gt)), key=lambda k: (ovs[k], -k))
                    if ovs[best] >= iou_thresh:
                        if best not in keep:
                            recall_list[best] = -1
                            proposal[h] = -1
                        elif recall_list[best] == 0:
                            recall_list[best] = 1
                    pred_recall[h] = sum(1 for v in recall_list if v == 1)
                for t in range(thresh_num):
                    th = 1 - (t + 1) / thresh_num
                    last = -1
                    for h, p in enumerate(pr):
                        if p[4] >= th:
                            last = h
                    if last >= 0:
                        curve[t][0] += sum(1 for v in proposal[:last + 1] if v == 1)
                        curve[t][1] += pred_recall[last]
        if count == 0:
            out[s] = -1.0
            continue
        prec = [c[1] / c[0] if c[0] else 0.0 for c in curve]
        rec = [c[1] / count for c in curve]
        mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = max(mpre[k], mpre[k + 1])
        out[s] = sum((mrec[k + 1] - mrec[k]) * mpre[k + 1] for k in range(len(mrec) - 1)
                     if mrec[k + 1] != mrec[k])
    return out


# --------------------------------------------------------------------------- tests
def _hand_case(tmp_path):
    # one image, faces A, B, C, D (x y w h); easy keeps A B, medium A B C, hard all four
    faces = [[10, 10, 20, 20], [50, 50, 20, 20], [100, 100, 10, 10], [200, 10, 16, 16]]
    gt = write_gt(tmp_path / "gt", ["0--Parade"], [["0_Parade_a"]], [[faces]],
                  {"easy": [[[1, 2]]], "medium": [[[1, 2, 3]]], "hard": [[[1, 2, 3, 4]]]})
    dets = {("0--Parade", "0_Parade_a"): np.array([
        [10, 10, 20, 20, 0.9],     # A
        [300, 300, 10, 10, 0.8],   # background
        [100, 100, 10, 10, 0.7],   # C: ignored in easy
        [51, 50, 20, 20, 0.6],     # B
    ])}
    return gt, dets


def test_hand_computed_ap(tmp_path):
    gt, dets = _hand_case(tmp_path)
    m = evaluate_wider(gt, dets)
    # normalised scores 1, 2/3, 1/3, 0 (range [0.6, 0.9]).
    # easy (2 faces): P/R = 1/.5, .5/.5, .5/.5 (C neither), 2/3/1 -> AP .5*1 + .5*2/3 = 5/6
    # medium (3): 1/(1/3), .5/(1/3), 2/3/(2/3), 3/4/1 -> AP 1/3 + 1/3*.75 + 1/3*.75 = 5/6
    # hard (4, D never found): recall steps of 1/4 -> AP .25 + .25*.75 + .25*.75 = 0.625
    assert m["easy"] == pytest.approx(5 / 6)
    assert m["medium"] == pytest.approx(5 / 6)
    assert m["hard"] == pytest.approx(0.625)
    assert (m["n_faces_easy"], m["n_faces_medium"], m["n_faces_hard"]) == (2, 3, 4)
    assert m["recall_hard"] == pytest.approx(0.75)
    assert m["n_images"] == 1 and m["n_dets"] == 4
    # a second detection of A is a false positive: easy precision at the end falls to 2/4
    more = {k: np.vstack([v, [[11, 10, 20, 20, 0.6]]]) for k, v in dets.items()}
    assert evaluate_wider(gt, more)["easy"] == pytest.approx(0.5 + 0.5 * 0.5)


@pytest.mark.parametrize("seed", range(12))
def test_agrees_with_slow_loop_reference(tmp_path, seed):
    events, files, boxes, keeps, dets = random_case(seed)
    gt = write_gt(tmp_path / "gt", events, files, boxes, keeps)
    ours = evaluate_wider(gt, dets)
    ref = slow_wider(events, files, boxes, keeps, dets)
    for s in SUBSETS:
        assert ours[s] == pytest.approx(ref[s], abs=1e-12), s


def test_score_normalisation_range_starts_at_0_1():
    from sodlab.metrics.wider import normalise_scores

    k = ("e", "f")
    row = [0.0, 0.0, 1.0, 1.0]
    out = normalise_scores({k: np.array([[*row, 2.0], [*row, 6.0]])})  # range [min(1, 2), 6]
    np.testing.assert_allclose(out[k][:, 4], [0.2, 1.0])
    out = normalise_scores({k: np.array([[*row, 0.3], [*row, 0.8]])})
    np.testing.assert_allclose(out[k][:, 4], [0.0, 1.0])
    out = normalise_scores({k: np.array([[*row, 0.5], [*row, 0.5]])})  # empty range
    np.testing.assert_array_equal(out[k][:, 4], [1.0, 1.0])


def test_folder_and_coco_inputs_give_the_same_numbers(tmp_path):
    events, files, boxes, keeps, dets = random_case(4)
    gt = write_gt(tmp_path / "gt", events, files, boxes, keeps)
    ref = evaluate_wider(gt, dets)
    # the WIDER layout round-trips exactly
    folder = tmp_path / "pred"
    assert write_wider_dets(folder, dets) == len(dets)
    back = read_wider_dets(folder, load_wider_gt(gt))
    assert set(back) == set(dets)
    for k in dets:  # written in descending score order, same rows
        order = np.argsort(-dets[k][:, 4], kind="stable")
        np.testing.assert_array_equal(back[k], dets[k][order])
    assert evaluate_wider(gt, folder) == ref
    # COCO results named by file_name, and by image_id through our importer's annotations
    images, results = [], []
    for n, (ev, f) in enumerate(sorted(dets), start=1):
        images.append({"id": 10 + n, "file_name": f"{ev}/{f}.jpg", "width": 200, "height": 200})
        for x, y, w, h, s in dets[(ev, f)].tolist():
            results.append({"image_id": 10 + n, "category_id": 1, "bbox": [x, y, w, h],
                            "score": s})
    coco = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "face"}]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    (tmp_path / "dets.json").write_text(json.dumps(results))
    assert evaluate_wider(gt, tmp_path / "dets.json", coco_gt=tmp_path / "ann.json") == ref
    by_name = [{**r, "file_name": images[r["image_id"] - 11]["file_name"]} for r in results]
    for r in by_name:
        del r["image_id"]
    assert evaluate_wider(gt, by_name) == ref


def test_write_wider_image_layout(tmp_path):
    p = write_wider_image(tmp_path, "3--Riot/3_Riot_x.jpg", [[1.5, 2.0, 10.0, 12.25],
                                                             [0.0, 0.0, 4.0, 4.0]], [0.25, 0.75])
    assert p == tmp_path / "3--Riot" / "3_Riot_x.txt"
    assert p.read_text().splitlines() == ["3_Riot_x.jpg", "2", "0.0 0.0 4.0 4.0 0.75",
                                          "1.5 2.0 10.0 12.25 0.25"]
    empty = write_wider_image(tmp_path, "3--Riot/3_Riot_y.jpg", np.zeros((0, 4)), [])
    assert empty.read_text().splitlines() == ["3_Riot_y.jpg", "0"]
    assert read_wider_dets(tmp_path)[("3--Riot", "3_Riot_y")].shape == (0, 5)


def test_images_without_faces_or_detections(tmp_path):
    gt = write_gt(tmp_path / "gt", ["0--P"], [["a", "b", "c"]],
                  [[[[0, 0, 10, 10]], np.zeros((0, 4)), [[5, 5, 10, 10]]]],
                  {s: [[[1], [], [1]]] for s in SUBSETS})
    # detections on the face-less image b are ignored by the tool (neither TP nor FP); c has
    # none, so its face is missed
    dets = {("0--P", "a"): np.array([[0, 0, 10, 10, 0.5]]),
            ("0--P", "b"): np.array([[0, 0, 10, 10, 0.9], [20, 20, 5, 5, 0.1]])}
    m = evaluate_wider(gt, dets)
    assert m["easy"] == pytest.approx(0.5)  # precision 1 up to recall 1/2
    assert m["n_faces_easy"] == 2 and m["n_images_with_dets"] == 2


def test_bad_mat_structure(tmp_path):
    gt = write_gt(tmp_path / "gt", ["0--P"], [["a"]], [[[[0, 0, 10, 10]]]],
                  {s: [[[1]]] for s in SUBSETS})
    savemat(gt / "wider_face_val.mat", {"event_list": np.array([[1.0, 2.0]]),
                                        "file_list": _cell([]), "face_bbx_list": _cell([])})
    with pytest.raises(InputError, match=r"wider_face_val\.mat: event_list"):
        load_wider_gt(gt)
    savemat(gt / "wider_face_val.mat", {"events": _cell(["0--P"])})
    with pytest.raises(InputError, match=r"wider_face_val\.mat: no variable 'event_list'"):
        load_wider_gt(gt)
    write_gt(gt, ["0--P"], [["a"]], [[[[0, 0, 10, 10]]]], {s: [[[1]]] for s in SUBSETS})
    savemat(gt / "wider_hard_val.mat", {"gt_list": _cell([_cell([np.array([[1.0], [3.0]])])])})
    with pytest.raises(InputError, match=r"wider_hard_val\.mat: gt_list\{1\}\{1\} \(0--P/a\): "
                                         r"keep indices .* 1\.\.1"):
        load_wider_gt(gt)
    (gt / "wider_easy_val.mat").write_bytes(b"not a mat file")
    with pytest.raises(InputError, match=r"wider_easy_val\.mat"):
        load_wider_gt(gt)
    with pytest.raises(InputError, match="ground-truth folder not found"):
        load_wider_gt(tmp_path / "nowhere")


def test_bad_detection_folders_and_lines(tmp_path):
    gt = write_gt(tmp_path / "gt", ["0--P"], [["a", "b"]], [[[[0, 0, 10, 10]], [[1, 1, 5, 5]]]],
                  {s: [[[1], [1]]] for s in SUBSETS})
    pred = tmp_path / "pred"
    (pred / "9--Unknown").mkdir(parents=True)
    with pytest.raises(InputError, match=r"9--Unknown: unknown event '9--Unknown'"):
        evaluate_wider(gt, pred)
    (pred / "9--Unknown").rmdir()
    (pred / "0--P").mkdir()
    (pred / "0--P" / "zzz.txt").write_text("zzz.jpg\n0\n")
    with pytest.raises(InputError, match=r"zzz\.txt: image 'zzz' is not in event '0--P'"):
        evaluate_wider(gt, pred)
    (pred / "0--P" / "zzz.txt").unlink()
    bad = pred / "0--P" / "a.txt"
    bad.write_text("a.jpg\n2\n1 2 3 4 0.5\n1 2 three 4 0.5\n")
    with pytest.raises(InputError, match=r"a\.txt:4: expected 'x y w h score'"):
        evaluate_wider(gt, pred)
    bad.write_text("a.jpg\n3\n1 2 3 4 0.5\n")
    with pytest.raises(InputError, match=r"a\.txt:3: the count line \(line 2\) says 3"):
        evaluate_wider(gt, pred)
    bad.write_text("a.jpg\nmany\n")
    with pytest.raises(InputError, match=r"a\.txt:2: expected the number of detections"):
        evaluate_wider(gt, pred)
    bad.write_text("a.jpg\n1\n1 2 3 4 0.5\n")
    assert evaluate_wider(gt, pred)["easy"] == pytest.approx(0.0)  # inside a: IoU 20/121
    # COCO results for an image the .mat does not list
    (tmp_path / "d.json").write_text(json.dumps([{"file_name": "0--P/c.jpg", "bbox": [0, 0, 1, 1],
                                                  "score": 1.0, "category_id": 1}]))
    with pytest.raises(InputError, match=r"d\.json: detection 0: image '0--P/c\.jpg' is not in"):
        evaluate_wider(gt, tmp_path / "d.json")


def test_cli_eval_wider(tmp_path, capsys):
    gt, dets = _hand_case(tmp_path)
    write_wider_dets(tmp_path / "pred", dets)
    out = tmp_path / "m.json"
    rc = main(["eval", "--protocol", "wider", "--gt-dir", str(gt), "--dets",
               str(tmp_path / "pred"), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "easy" in text and "0.833" in text and "0.625" in text
    saved = json.loads(out.read_text())
    assert saved["protocol"] == "wider" and saved["metrics"]["hard"] == pytest.approx(0.625)
    assert saved["provenance"]["data_hash"]
    # bad input exits 2 with one line naming the file and line
    (tmp_path / "pred" / "0--Parade" / "0_Parade_a.txt").write_text("x\n1\n1 2 3\n")
    rc = main(["eval", "--protocol", "wider", "--gt-dir", str(gt), "--dets",
               str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert rc == 2 and "0_Parade_a.txt:3:" in err and err.count("\n") == 1
    assert main(["eval", "--protocol", "wider", "--dets", str(tmp_path / "pred")]) == 2
    assert "--gt-dir" in capsys.readouterr().err
    assert main(["eval", "--dets", str(tmp_path / "pred")]) == 2  # coco needs --gt
    assert "--gt" in capsys.readouterr().err


def test_cli_detect_format_wider(tmp_path, monkeypatch, capsys):
    """``detect --format wider`` writes the same rounded numbers as the JSON, per event."""
    import torch
    from test_engine import _fake_detector_module, make_split

    monkeypatch.setitem(sys.modules, "sodlab.detector", _fake_detector_module())
    torch.set_num_threads(1)
    make_split(tmp_path / "data" / "train", n=4, seed=0)
    make_split(tmp_path / "data" / "val", n=2, seed=1)
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--data", str(tmp_path / "data"), "--out",
                 str(run), "--max-steps", "1", "--batch-size", "2", "--no-progress",
                 "--device", "cpu"]) == 0
    images = tmp_path / "images"
    for k, src in enumerate(sorted((tmp_path / "data" / "val" / "images").iterdir())):
        dest = images / "0--Parade" / f"0_Parade_{k}{src.suffix}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
    assert main(["detect", "--checkpoint", str(run), "--images", str(images), "--out",
                 str(tmp_path / "d.json"), "--no-progress"]) == 0
    assert main(["detect", "--checkpoint", str(run), "--images", str(images), "--format",
                 "wider", "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    capsys.readouterr()
    got = read_wider_dets(tmp_path / "pred")
    assert set(got) == {("0--Parade", "0_Parade_0"), ("0--Parade", "0_Parade_1")}
    js = json.loads((tmp_path / "d.json").read_text())
    for (ev, f), a in got.items():
        rows = sorted(([*d["bbox"], d["score"]] for d in js
                       if d["file_name"].startswith(f"{ev}/{f}.")), key=lambda r: -r[4])
        np.testing.assert_array_equal(a, np.asarray(rows).reshape(-1, 5))
    (tmp_path / "afile").write_text("")
    assert main(["detect", "--checkpoint", str(run), "--images", str(images), "--format",
                 "wider", "--out", str(tmp_path / "afile"), "--no-progress"]) == 2
