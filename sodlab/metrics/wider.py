"""WIDER FACE's own evaluation: AP on the validation set's easy, medium and hard settings.

Layer L1. After Yang et al. 2016, "WIDER FACE: A face detection benchmark"; the rules are
those of the benchmark's MATLAB tool (``wider_eval.m``) as the widely used Python port
(``evaluation.py`` of WiderFace-Evaluation) reproduces them; docs/methods.md ("WIDER FACE's
evaluation protocol") describes them and notebooks 04_ssh_receptive_fields and
06_dense_anchors quote published numbers measured with them. Per setting:

1. Scores are min-max normalised over all detections of the set. As in the tool, the range
   starts as [0, 1], so it is [min(1, lowest score), max(0, highest score)]; where that
   range is empty (all scores equal) every score becomes 1 (the tool divides by zero).
2. Each image's detections, in descending score order (stable), are matched one by one to
   the face they overlap most (the first such face on ties) if that IoU is >= 0.5, with
   the tool's +1-pixel convention: a box ``x y w h`` spans ``x .. x + w`` inclusive, so
   its area is ``(w + 1) * (h + 1)``. Faces already found stay matchable: a second match
   is a false positive. A detection matched to a face outside the setting's keep list is
   neither a true nor a false positive.
3. At 1,000 thresholds ``1 - t / 1000`` (t = 1..1000), true positives (faces of the keep
   list found) and proposals (detections not matched to an ignored face) with a score at
   or above the threshold are summed over images; images without faces or without
   detections add nothing but their faces. Precision = TP / proposals, recall = TP / the
   setting's face count; AP is the area under the VOC-style interpolated curve (precision
   made non-increasing, summed over the recall steps).

Ground truth: ``wider_face_val.mat`` (``event_list`` ``{E}``, ``file_list`` ``{E}{I}``,
``face_bbx_list`` ``{E}{I}`` of ``[F, 4]`` x y w h) and ``wider_{easy,medium,hard}_val.mat``
(``gt_list`` ``{E}{I}`` of 1-based keep indices), read with ``scipy.io.loadmat``.
Detections: a folder in WIDER's submission layout, ``<event>/<file>.txt`` holding the
image's name, a count line, then ``x y w h score`` lines; or COCO results (``bbox`` is the
same x y w h) whose images are named by a ``file_name`` key or through the COCO ground
truth our WIDER importer wrote (``file_name`` ``<event>/<file>.jpg``). Detections are
arrays ``[D, 5]`` (x, y, w, h, score) keyed by ``(event, file)``.

Dimension legend: E events, I images of an event, F faces of an image, D detections of an
image, T score thresholds (1,000).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from sodlab.errors import InputError

SUBSETS: tuple[str, ...] = ("easy", "medium", "hard")
GT_FILE = "wider_face_val.mat"
SUBSET_FILES = {s: f"wider_{s}_val.mat" for s in SUBSETS}
IOU_THRESH = 0.5
THRESH_NUM = 1000

Key = tuple[str, str]  # (event, file name without extension)
Dets = dict[Key, np.ndarray]


# --------------------------------------------------------------------------- ground truth
@dataclass
class WiderGT:
    """The validation ground truth: per event its image names, face boxes and keep lists."""

    events: list[str]
    files: list[list[str]]  # [E][I] image names without extension
    boxes: list[list[np.ndarray]]  # [E][I] -> [F, 4] x y w h, float64
    keep: dict[str, list[list[np.ndarray]]]  # subset -> [E][I] -> 0-based face indices
    source: str = ""
    index: dict[Key, tuple[int, int]] = field(default_factory=dict)  # key -> (e, i)
    index_events: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if not self.index:
            self.index = {(ev, f): (e, i) for e, ev in enumerate(self.events)
                          for i, f in enumerate(self.files[e])}
        self.index_events = set(self.events)

    @property
    def n_images(self) -> int:
        return len(self.index)


def _load_mat(path: Path, keys: Iterable[str]) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise InputError(f"{path}: WIDER FACE ground-truth file not found")
    try:
        mat = loadmat(str(path))
    except Exception as exc:  # scipy raises several types for a broken file
        raise InputError(f"{path}: not a readable MATLAB .mat file ({exc})") from None
    for k in keys:
        if k not in mat:
            raise InputError(f"{path}: no variable {k!r} (is this the official WIDER FACE "
                             "val ground truth?)")
    return mat


def _cells(x: Any, where: str, n: int | None = None) -> list:
    """The elements of a MATLAB cell array (an object ndarray), checked for count."""
    if not isinstance(x, np.ndarray) or x.dtype != object:
        raise InputError(f"{where}: expected a cell array, got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')}".rstrip())
    out = list(x.ravel(order="F"))
    if n is not None and len(out) != n:
        raise InputError(f"{where}: expected {n} cells, found {len(out)}")
    return out


def _string(x: Any, where: str) -> str:
    if isinstance(x, str):
        return x
    if isinstance(x, np.ndarray) and x.dtype.kind == "U" and x.size == 1:
        return str(x.ravel()[0])
    raise InputError(f"{where}: expected a string, got {type(x).__name__} "
                     f"{getattr(x, 'dtype', '')}".rstrip())


def _numeric(x: Any, where: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iufb":
        raise InputError(f"{where}: expected a numeric matrix, got {type(x).__name__} "
                         f"{getattr(x, 'dtype', '')}".rstrip())
    return np.asarray(x, dtype=np.float64)


def load_wider_gt(gt_dir: str | os.PathLike) -> WiderGT:
    """Read the official val ``.mat`` files from ``gt_dir``; bad structure raises InputError."""
    d = Path(gt_dir)
    if not d.is_dir():
        raise InputError(f"{d}: WIDER FACE ground-truth folder not found (it holds "
                         f"{GT_FILE} and {', '.join(SUBSET_FILES.values())})")
    p = d / GT_FILE
    mat = _load_mat(p, ("event_list", "file_list", "face_bbx_list"))
    ev_cells = _cells(mat["event_list"], f"{p}: event_list")
    E = len(ev_cells)
    events = [_string(c, f"{p}: event_list{{{e + 1}}}") for e, c in enumerate(ev_cells)]
    if len(set(events)) != E:
        raise InputError(f"{p}: event_list names an event twice")
    file_cells = _cells(mat["file_list"], f"{p}: file_list", E)
    box_cells = _cells(mat["face_bbx_list"], f"{p}: face_bbx_list", E)
    files, boxes = [], []
    for e in range(E):
        names = _cells(file_cells[e], f"{p}: file_list{{{e + 1}}}")
        files.append([_string(c, f"{p}: file_list{{{e + 1}}}{{{i + 1}}}")
                      for i, c in enumerate(names)])
        if len(set(files[-1])) != len(files[-1]):
            raise InputError(f"{p}: file_list{{{e + 1}}} names an image twice")
        ev_boxes = []
        for i, c in enumerate(_cells(box_cells[e], f"{p}: face_bbx_list{{{e + 1}}}",
                                     len(names))):
            where = f"{p}: face_bbx_list{{{e + 1}}}{{{i + 1}}}"
            b = _numeric(c, where)
            if b.size == 0:
                b = np.zeros((0, 4))
            elif b.ndim != 2 or b.shape[1] != 4:
                raise InputError(f"{where}: expected [faces, 4] boxes (x y w h), got shape "
                                 f"{list(b.shape)}")
            if not np.isfinite(b).all():
                raise InputError(f"{where}: a box coordinate is not a finite number")
            ev_boxes.append(b)
        boxes.append(ev_boxes)
    keep: dict[str, list[list[np.ndarray]]] = {}
    for s, name in SUBSET_FILES.items():
        ps = d / name
        sub = _load_mat(ps, ("gt_list",))
        lists = []
        for e, c in enumerate(_cells(sub["gt_list"], f"{ps}: gt_list", E)):
            per_img = []
            for i, k in enumerate(_cells(c, f"{ps}: gt_list{{{e + 1}}}", len(files[e]))):
                where = f"{ps}: gt_list{{{e + 1}}}{{{i + 1}}} ({events[e]}/{files[e][i]})"
                idx = _numeric(k, where).ravel()
                n_faces = len(boxes[e][i])
                if idx.size and (not np.all(idx == np.round(idx)) or idx.min() < 1
                                 or idx.max() > n_faces):
                    raise InputError(f"{where}: keep indices must be whole numbers in "
                                     f"1..{n_faces} (1-based), got {idx.tolist()}")
                per_img.append(idx.astype(np.int64) - 1)
            lists.append(per_img)
        keep[s] = lists
    return WiderGT(events=events, files=files, boxes=boxes, keep=keep, source=str(d))


# --------------------------------------------------------------------------- detections
def _parse_det_file(path: Path) -> np.ndarray:
    """One ``<file>.txt``: name line, count line, then ``count`` lines ``x y w h score``."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise InputError(f"{path}:{len(lines) + 1}: expected the image name line and the "
                         "detection count line")
    try:
        count = int(lines[1].strip())
    except ValueError:
        raise InputError(f"{path}:2: expected the number of detections, got "
                         f"{lines[1].strip()!r}") from None
    if count < 0:
        raise InputError(f"{path}:2: negative detection count {count}")
    body = lines[2:]
    while body and not body[-1].strip():
        body.pop()
    if len(body) != count:
        raise InputError(f"{path}:{len(lines)}: the count line (line 2) says {count} "
                         f"detections, the file has {len(body)} box lines")
    out = np.zeros((count, 5))
    for k, line in enumerate(body):
        try:
            vals = [float(v) for v in line.split()]
        except ValueError:
            vals = []
        if len(vals) < 5 or not all(math.isfinite(v) for v in vals[:5]):
            raise InputError(f"{path}:{k + 3}: expected 'x y w h score' (finite numbers), got "
                             f"{line.strip()!r}")
        out[k] = vals[:5]
    return out


def read_wider_dets(folder: str | os.PathLike, gt: WiderGT | None = None) -> Dets:
    """Detections from WIDER's submission layout ``folder/<event>/<file>.txt``.

    With ``gt``, an event folder or a file that the ground truth does not list raises
    InputError (naming it). Files and folders whose names start with ``.`` are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: detections folder not found (expected <event>/<file>.txt)")
    events = set(gt.events) if gt is not None else None
    out: Dets = {}
    for ev_dir in sorted(root.iterdir()):
        if ev_dir.name.startswith("."):
            continue
        if not ev_dir.is_dir():
            raise InputError(f"{ev_dir}: expected only event folders in {root} "
                             "(<event>/<file>.txt)")
        if events is not None and ev_dir.name not in events:
            raise InputError(f"{ev_dir}: unknown event {ev_dir.name!r}; the ground truth's "
                             f"events are e.g. {', '.join(sorted(events)[:3])}")
        for f in sorted(ev_dir.iterdir()):
            if f.name.startswith("."):
                continue
            if not f.is_file() or f.suffix != ".txt":
                raise InputError(f"{f}: expected <file>.txt detection files in {ev_dir}")
            key = (ev_dir.name, f.stem)
            if gt is not None and key not in gt.index:
                raise InputError(f"{f}: image {f.stem!r} is not in event {ev_dir.name!r} of "
                                 "the ground truth")
            out[key] = _parse_det_file(f)
    return out


def write_wider_image(out_dir: str | os.PathLike, image_name: str, xywh: Any,
                      scores: Any) -> Path:
    """Write one image's detections as ``out_dir/<event>/<file>.txt``; returns the path.

    ``image_name`` is ``<event>/<file>.<ext>`` (as under ``WIDER_val/images``); ``xywh
    [D, 4]`` boxes in continuous pixels as x y w h (x2 = x + w, ``boxes.xyxy_to_xywh``);
    ``scores [D]``. Lines go in descending score order (the Python port of the tool needs
    that); numbers are written in their shortest exact form, so reading gives them back.
    """
    name = PurePosixPath(str(image_name).replace("\\", "/"))
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)  # [D, 4]
    s = np.asarray(scores, dtype=np.float64).reshape(-1)  # [D]
    if len(b) != len(s):
        raise InputError(f"{image_name}: {len(b)} boxes but {len(s)} scores")
    order = np.argsort(-s, kind="stable")
    lines = [name.name, str(len(s))]
    for row, sc in zip(b[order].tolist(), s[order].tolist()):
        lines.append(" ".join(repr(float(v)) for v in (*row, sc)))
    dest = Path(out_dir) / name.parent / f"{name.stem}.txt"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines) + "\n")
    return dest


def write_wider_dets(out_dir: str | os.PathLike, dets: Mapping[Key, np.ndarray]) -> int:
    """Write ``{(event, file): [D, 5] x y w h score}`` in WIDER's layout; returns files written."""
    for (ev, f), a in dets.items():
        a = np.asarray(a, dtype=np.float64).reshape(-1, 5)  # [D, 5]
        write_wider_image(out_dir, f"{ev}/{f}.jpg", a[:, :4], a[:, 4])
    return len(dets)


def _key_of_name(file_name: str, gt: WiderGT, by_stem: dict[str, list[Key]],
                 where: str) -> Key:
    p = PurePosixPath(str(file_name).replace("\\", "/"))
    ev = p.parent.name
    if (ev, p.stem) in gt.index:
        return ev, p.stem
    cands = by_stem.get(p.stem, [])
    if len(cands) == 1 and ev not in gt.index_events:  # a flat or renamed folder
        return cands[0]
    raise InputError(f"{where}: image {file_name!r} is not in {GT_FILE} (expected "
                     "<event>/<file>.jpg as in WIDER_val/images)")


def _image_names(coco_gt: dict | str | os.PathLike | None) -> tuple[dict[int, str] | None, str]:
    """``({image id: file_name}, the ground truth's name)`` of a COCO ground truth; ``(None,
    "")`` without one."""
    from sodlab.data.coco import load_coco

    if coco_gt is None:
        return None, ""
    cg = coco_gt if isinstance(coco_gt, dict) else load_coco(coco_gt)
    gname = "ground truth" if isinstance(coco_gt, dict) else str(coco_gt)
    if not isinstance(cg.get("images"), list):
        raise InputError(f"{gname}: not a COCO dict (needs a list 'images')")
    id_to_name = {}
    for k, im in enumerate(cg["images"]):
        try:
            id_to_name[int(im["id"])] = str(im["file_name"])  # resolved on first use
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{gname}: images[{k}] needs 'id' and 'file_name'") from None
    return id_to_name, gname


def coco_to_wider(dets: list | str | os.PathLike, gt: WiderGT,
                  coco_gt: dict | str | os.PathLike | None = None) -> Dets:
    """COCO results (``image_id, bbox [x,y,w,h], score``) as WIDER detections.

    Each result names its image by ``file_name`` or by ``image_id`` through ``coco_gt``
    (an ``annotations.json``, its split folder or the dict, e.g. what ``sodlab data import
    --format wider`` wrote). Every category counts as a face. Images are matched by their
    ``<event>/<file>`` name (the extension is ignored).
    """
    from sodlab.metrics.coco import _read_json

    src = dets if isinstance(dets, list) else _read_json(dets, "detections")
    name = "detections" if isinstance(dets, list) else str(dets)
    if not isinstance(src, list):
        raise InputError(f"{name}: detections must be a JSON list of result dicts")
    by_stem: dict[str, list[Key]] = {}
    for key in gt.index:
        by_stem.setdefault(key[1], []).append(key)
    id_to_name, gname = _image_names(coco_gt)
    rows: dict[Key, list[list[float]]] = {}
    resolved: dict[int, Key] = {}
    for k, d in enumerate(src):
        try:
            x, y, w, h = (float(v) for v in d["bbox"])
            score = float(d["score"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{name}: detection {k} needs bbox [x,y,w,h] and score") from None
        if not all(math.isfinite(v) for v in (x, y, w, h, score)):
            raise InputError(f"{name}: detection {k} has a non-finite bbox or score")
        if "file_name" in d:
            key = _key_of_name(d["file_name"], gt, by_stem, f"{name}: detection {k}")
        else:
            if id_to_name is None:
                raise InputError(f"{name}: detection {k} has no 'file_name'; give the COCO "
                                 "ground truth (--gt) that maps its image_id to a file")
            try:
                iid = int(d["image_id"])
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{name}: detection {k} needs image_id or file_name") from None
            if iid not in resolved:
                if iid not in id_to_name:
                    raise InputError(f"{name}: detection {k} has image {iid}, which is not in "
                                     f"{gname}")
                resolved[iid] = _key_of_name(id_to_name[iid], gt, by_stem,
                                             f"{gname}: image {iid}")
            key = resolved[iid]
        rows.setdefault(key, []).append([x, y, w, h, score])
    return {key: np.asarray(r, dtype=np.float64).reshape(-1, 5) for key, r in rows.items()}


# --------------------------------------------------------------------------- evaluation
def normalise_scores(dets: Mapping[Key, np.ndarray]) -> Dets:
    """Copies with scores min-max normalised over all detections, the tool's way (see above)."""
    lo, hi = 1.0, 0.0
    for a in dets.values():
        if len(a):
            lo, hi = min(lo, float(a[:, 4].min())), max(hi, float(a[:, 4].max()))
    out: Dets = {}
    for key, a in dets.items():
        b = np.array(a, dtype=np.float64).reshape(-1, 5)
        if len(b):
            b[:, 4] = (b[:, 4] - lo) / (hi - lo) if hi > lo else 1.0
        out[key] = b
    return out


def overlaps_plus1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[A, B]`` of x1 y1 x2 y2 boxes whose corners are both inside (+1 pixel)."""
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)  # [A]
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # [B]
    inter = iw * ih  # [A, B]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a[:, None] + area_b[None] - inter)
    return np.where((iw > 0) & (ih > 0), iou, 0.0)


def match_image(dets: np.ndarray, faces: np.ndarray,
                iou_thresh: float = IOU_THRESH) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's best face (first on ties) ``[D]`` and whether it reaches the IoU ``[D]``.

    ``dets [D, >=4]`` and ``faces [F, 4]`` are x y w h; F must be > 0.
    """
    p = dets[:, :4].copy()
    p[:, 2:] += p[:, :2]
    g = faces[:, :4].copy()
    g[:, 2:] += g[:, :2]
    ov = overlaps_plus1(p, g)  # [D, F]
    best = ov.argmax(1)  # [D]
    return best, ov[np.arange(len(p)), best] >= iou_thresh


def image_pr(dets: np.ndarray, faces: np.ndarray, keep: np.ndarray, thresholds: np.ndarray,
             iou_thresh: float = IOU_THRESH,
             match: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``[T, 2]`` (proposals, true positives) of one image at each score threshold.

    ``dets [D, 5]`` x y w h normalised-score in descending score order, ``faces [F, 4]``
    x y w h (F > 0), ``keep`` 0-based indices of the setting's faces, ``thresholds [T]``;
    ``match`` is ``match_image``'s answer if already computed (it does not depend on keep).
    """
    best, hit = match if match is not None else match_image(dets, faces, iou_thresh)
    D = len(dets)
    kept = np.zeros(len(faces), dtype=bool)
    kept[keep] = True
    proposal = ~(hit & ~kept[best])  # [D] matched to an ignored face: not a proposal
    tp_hit = hit & kept[best]  # [D]
    first = np.full(len(faces), D)  # [F] the first detection that finds each kept face
    np.minimum.at(first, best[tp_hit], np.flatnonzero(tp_hit))
    recall = np.cumsum(np.bincount(first[first < D], minlength=D)[:D])  # [D]
    n_prop = np.cumsum(proposal)  # [D]
    # the detections at or above a threshold form a prefix (scores sorted descending)
    n = np.searchsorted(-dets[:, 4], -thresholds, side="right")  # [T]
    out = np.zeros((len(thresholds), 2))
    some = n > 0
    out[some, 0] = n_prop[n[some] - 1]
    out[some, 1] = recall[n[some] - 1]
    return out


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the interpolated PR curve (precision made non-increasing in recall)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def evaluate_wider(gt_dir: str | os.PathLike | WiderGT,
                   dets: str | os.PathLike | list | Mapping[Key, np.ndarray], *,
                   coco_gt: dict | str | os.PathLike | None = None,
                   iou_thresh: float = IOU_THRESH, thresh_num: int = THRESH_NUM,
                   curves: bool = False, progress: bool = False) -> dict:
    """WIDER FACE val AP per setting: ``{"easy": ap, "medium": ap, "hard": ap, ...}``.

    ``gt_dir``: the folder with the four official ``.mat`` files (or a loaded ``WiderGT``).
    ``dets``: a folder in WIDER's layout, a COCO results JSON file or list (``coco_gt``
    maps image ids to files where results carry no ``file_name``), or ``{(event, file):
    [D, 5]}``. Images without detections count as such (their faces are missed). Also
    returns ``n_faces_<setting>``, ``recall_<setting>`` (at the lowest threshold),
    ``n_images``, ``n_images_with_dets``, ``n_dets`` and, with ``curves``, ``curves`` =
    ``{setting: {"precision": [T], "recall": [T]}}``. A setting without faces gives -1.
    """
    gt = gt_dir if isinstance(gt_dir, WiderGT) else load_wider_gt(gt_dir)
    raw = _wider_dets(dets, gt, coco_gt)
    # descending raw score, stable, as the MATLAB tool sorts before it normalises
    ordered: Dets = {}
    for key, a in raw.items():
        a = np.asarray(a, dtype=np.float64).reshape(-1, 5)  # [D, 5]
        ordered[key] = a[np.argsort(-a[:, 4], kind="stable")]
    thresholds = 1.0 - np.arange(1, thresh_num + 1) / thresh_num  # [T]
    pr, n_faces = _pr_counts(gt, normalise_scores(ordered), thresholds, iou_thresh, progress)
    out: dict[str, Any] = {}
    curve_out = {}
    for s in SUBSETS:
        nf = n_faces[s]
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(pr[s][:, 0] > 0, pr[s][:, 1] / pr[s][:, 0], 0.0)  # [T]
        recall = pr[s][:, 1] / nf if nf else np.zeros(thresh_num)  # [T]
        out[s] = voc_ap(recall, precision) if nf else -1.0
        out[f"n_faces_{s}"] = nf
        out[f"recall_{s}"] = float(recall[-1]) if nf else -1.0
        if curves:
            curve_out[s] = {"precision": precision.tolist(), "recall": recall.tolist()}
    out["n_images"] = gt.n_images
    out["n_images_with_dets"] = sum(1 for a in raw.values() if len(a))
    out["n_dets"] = int(sum(len(a) for a in raw.values()))
    out["iou_thresh"] = iou_thresh
    if curves:
        out["curves"] = curve_out
    return out


def _wider_dets(dets: str | os.PathLike | list | Mapping[Key, np.ndarray], gt: WiderGT,
                coco_gt: dict | str | os.PathLike | None) -> dict:
    """``evaluate_wider``'s detections as ``{(event, file): [D, 5]}``, whatever their form."""
    if isinstance(dets, Mapping):
        for key in dets:
            if key not in gt.index:
                raise InputError(f"detections for {key}, an image not in the ground truth")
        return dict(dets)
    if isinstance(dets, list) or Path(dets).is_file():
        return coco_to_wider(dets, gt, coco_gt)
    return read_wider_dets(dets, gt)


def _pr_counts(gt: WiderGT, normed: Dets, thresholds: np.ndarray, iou_thresh: float,
               progress: bool) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Summed ``[T, 2]`` (proposals, true positives) per setting over every image, and the
    number of faces per setting."""
    from tqdm.auto import tqdm

    pr = {s: np.zeros((len(thresholds), 2)) for s in SUBSETS}  # [T, 2]
    n_faces = dict.fromkeys(SUBSETS, 0)
    for e, ev in enumerate(tqdm(gt.events, desc="wider eval", disable=not progress)):
        for i, f in enumerate(gt.files[e]):
            for s in SUBSETS:
                n_faces[s] += len(gt.keep[s][e][i])
            faces = gt.boxes[e][i]
            d = normed.get((ev, f))
            if d is None or not len(d) or not len(faces):
                continue
            match = match_image(d, faces, iou_thresh)
            for s in SUBSETS:
                pr[s] += image_pr(d, faces, gt.keep[s][e][i], thresholds, iou_thresh, match)
    return pr, n_faces
