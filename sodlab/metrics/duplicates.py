"""Duplicates and missed neighbours on crowded groups, post-processing side by side, relation weights.

Relation Networks (Hu et al., CVPR 2018) claim that objects attending to each other, and a
learned duplicate removal in place of NMS, help where objects stand close together. AP
alone hides *how* a detector fails there, so this module counts the two failures that a
duplicate-removal step decides between, on the faces that stand in a ``group``:

- a **duplicate**: a detection beyond the first whose best-matching face (IoU >= ``iou``,
  0.5 by default) is the same face. Every detection belongs to the face it overlaps most
  (not COCO's greedy matching, which would hand a duplicate to a free neighbour);
- a **missed neighbour**: a face of a group that no detection finds (none reaches ``iou``
  with it) while a detection that belongs to another face of the same group overlaps it
  (IoU > ``overlap``, 0 by default: any overlap). This is the face that NMS deletes because
  its box overlapped the neighbour's kept box too much.

The embedded dataset (``sodlab.data.synth``) marks each annotation's ``group`` (an index
within the image, ``null`` for a face on its own): 2 to 5 faces side by side at about one
size, their centres 2.3-3.0 face widths apart. Its near-duplicates are the same ``identity``
drawn twice in one image, anywhere: same appearance, different place, so they are two
faces, not duplicates. Crowd faces (``iscrowd: 1``) are left out: no detection belongs to
them and none is counted on them. An image is *crowded* when at least one of its faces is in
a group; per-image rates divide by the number of crowded images (or -1 when there is none,
the metrics' mark of an empty set).

Also here: ``remove_duplicates`` (greedy NMS, Gaussian or linear soft-NMS on one image's
candidates, ``sodlab.nms``), ``candidates_only`` (a RoI head that keeps every candidate,
so the same outputs go through each removal), ``time_side_by_side`` (seconds per call of
several functions measured in turns in one process) and the relation-weight summaries
``match_faces`` / ``face_attention`` / ``group_attention`` (do faces of one group attend
to each other?). Taught in notebook 09_relation_networks.

Layer L1. Shapes: boxes ``[N, 4]`` xyxy pixels; relation weights ``[H, N, M]`` (or
``[N, M]``); ``face_of [N]`` face index or -1; ``groups [F]`` group index or -1.
Dimension legend: D detections of an image, F faces (non-crowd ground truth) of an image,
N receiving RoIs, M attended RoIs, H heads.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torchvision

from sodlab.boxes import xywh_to_xyxy
from sodlab.errors import InputError

EMPTY = -1.0  # a rate over an empty set (no crowded image), as evaluate marks empty buckets
METHODS = ("none", "nms", "soft-nms-gaussian", "soft-nms-linear")


# --------------------------------------------------------------------------- the metric
def _group_id(ann: dict) -> int:
    g = ann.get("group")
    if g is None:
        return -1
    try:
        return int(g)
    except (TypeError, ValueError):
        raise InputError(f"annotation {ann.get('id')}: 'group' must be an integer or null, "
                         f"got {g!r}") from None


def _xyxy(records: list[dict], what: str) -> torch.Tensor:
    if not records:
        return torch.zeros(0, 4)
    try:
        xywh = torch.tensor([[float(v) for v in r["bbox"]] for r in records],
                            dtype=torch.float32)  # [n, 4]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{what}: every record needs a 'bbox' [x, y, w, h]") from None
    if xywh.shape[1] != 4:
        raise InputError(f"{what}: a 'bbox' has 4 numbers [x, y, w, h]")
    return xywh_to_xyxy(xywh)


def image_duplicates(faces: torch.Tensor, groups: torch.Tensor, det_boxes: torch.Tensor, *,
                     face_labels: torch.Tensor | None = None,
                     det_labels: torch.Tensor | None = None, iou: float = 0.5,
                     overlap: float = 0.0) -> dict[str, int]:
    """The counts of one image: ``faces [F, 4]`` (non-crowd), ``groups [F]`` (-1: none),
    ``det_boxes [D, 4]`` (already filtered by score); optional labels must match.

    Returns ``faces``, ``group_faces``, ``duplicates`` (over all faces),
    ``group_duplicates`` (over group faces), ``group_missed`` (group faces nobody found),
    ``missed_in_groups`` (... while another face of their group was found),
    ``missed_neighbours`` (... while a detection of another face of their group overlaps
    them) and ``neighbour_overlaps`` (pairs of faces of one group whose boxes overlap).
    """
    F, D = len(faces), len(det_boxes)
    groups = groups.long().reshape(F)
    iou_fd = torchvision.ops.box_iou(det_boxes.float(), faces.float())  # [D, F]
    if face_labels is not None and det_labels is not None:
        iou_fd = iou_fd * (det_labels.reshape(D, 1) == face_labels.reshape(1, F))
    if D and F:
        best, owner = iou_fd.max(1)  # [D] first maximum on ties
        owner = torch.where(best >= iou, owner, torch.full_like(owner, -1))  # [D]
    else:
        owner = torch.full((D,), -1, dtype=torch.long)
    owned = torch.bincount(owner[owner >= 0], minlength=F)  # [F] detections per face
    dups = (owned - 1).clamp(min=0)  # [F]
    found = (iou_fd >= iou).any(0) if D else torch.zeros(F, dtype=torch.bool)  # [F]
    in_group = groups >= 0  # [F]
    same = (groups[:, None] == groups[None, :]) & in_group[:, None] & \
        ~torch.eye(F, dtype=torch.bool)  # [F, F] distinct faces of one group
    neighbour_found = (same & found[None, :]).any(1)  # [F]
    missed = in_group & ~found  # [F]
    # detection d belongs to face g; it suppresses face f when g is f's neighbour and d overlaps f
    if D and F:
        d_owner = owner.clamp(min=0)
        neighbour_det = same[:, d_owner] & (owner >= 0)[None, :]  # [F, D]
        suppressing = neighbour_det & (iou_fd.T > overlap)  # [F, D]
        by_neighbour = suppressing.any(1)  # [F]
    else:
        by_neighbour = torch.zeros(F, dtype=torch.bool)
    face_iou = torchvision.ops.box_iou(faces.float(), faces.float())  # [F, F]
    return {"faces": F, "group_faces": int(in_group.sum()),
            "duplicates": int(dups.sum()), "group_duplicates": int(dups[in_group].sum()),
            "group_missed": int(missed.sum()),
            "missed_in_groups": int((missed & neighbour_found).sum()),
            "missed_neighbours": int((missed & by_neighbour).sum()),
            "neighbour_overlaps": int((same & (face_iou > overlap)).sum()) // 2}


_IMAGE_KEYS = ("faces", "group_faces", "duplicates", "group_duplicates", "group_missed",
               "missed_in_groups", "missed_neighbours", "neighbour_overlaps")


def _check_duplicate_arguments(gt: dict, iou: float, per_face: float | None) -> None:
    if not isinstance(gt, dict) or not isinstance(gt.get("images"), list):
        raise InputError("duplicate_stats: gt must be a COCO dict with 'images' and "
                         "'annotations' (sodlab.data.coco.load_coco)")
    if not 0.0 < iou <= 1.0:
        raise InputError(f"duplicate_stats: iou must be in (0, 1], got {iou}")
    if per_face is not None and not per_face >= 0:
        raise InputError(f"duplicate_stats: per_face must be >= 0, got {per_face}")


def _image_counts(image_id: int, anns: list[dict], dets: list[dict], *, iou: float,
                  score_thresh: float, per_face: float | None, overlap: float) -> dict:
    """``image_duplicates`` of one image's non-crowd faces and its kept detections."""
    anns = [a for a in anns if not a.get("iscrowd", 0)]
    kept = [d for d in dets if float(d["score"]) >= score_thresh]
    if per_face is not None:
        kept = sorted(kept, key=lambda d: -float(d["score"]))  # stable: ties keep order
        kept = kept[:math.ceil(per_face * len(anns) - 1e-9)]
    groups = torch.tensor([_group_id(a) for a in anns], dtype=torch.long)  # [F]
    return image_duplicates(
        _xyxy(anns, f"image {image_id} annotations"), groups,
        _xyxy(kept, f"image {image_id} detections"),
        face_labels=torch.tensor([int(a["category_id"]) for a in anns]),
        det_labels=torch.tensor([int(d["category_id"]) for d in kept]),
        iou=iou, overlap=overlap)


def _duplicate_rates(total: dict, crowded: int, images: int) -> dict:
    """The per-image rates of ``duplicate_stats`` (-1 over nothing)."""
    def rate(x: int, n: int) -> float:
        return x / n if n else EMPTY

    return {"duplicates_per_image": rate(total["group_duplicates"], crowded),
            "missed_neighbours_per_image": rate(total["missed_neighbours"], crowded),
            "duplicates_all_per_image": rate(total["duplicates"], images),
            "recall_groups": rate(total["group_faces"] - total["group_missed"],
                                  total["group_faces"])}


def duplicate_stats(gt: dict, dets: Sequence[dict], *, iou: float = 0.5,
                    score_thresh: float = 0.0, per_face: float | None = None,
                    overlap: float = 0.0) -> dict:
    """Duplicates per crowded image and missed neighbours of COCO results on a COCO dict.

    ``gt``: a COCO dict (``load_coco``) whose annotations may carry ``group``; ``dets``:
    COCO results records (``to_coco_results``), those below ``score_thresh`` left out.
    ``per_face``: keep only each image's ``ceil(per_face * F)`` best-scoring detections (F
    its non-crowd faces), an operating point that depends on the ranking alone, not on
    the scale of the scores (``1.0``: as many boxes as faces). A detection counts only on
    faces of its own category. Returns the summed counts of
    ``image_duplicates`` plus ``images``, ``crowded_images`` (at least one group face),
    ``duplicates_per_image`` (group duplicates per crowded image),
    ``missed_neighbours_per_image`` (per crowded image), ``duplicates_all_per_image`` (all
    faces' duplicates per image) and ``recall_groups`` (group faces found / group faces);
    a rate over nothing is -1.
    """
    from sodlab.data.coco import annotations_by_image

    _check_duplicate_arguments(gt, iou, per_face)
    image_ids = [int(im["id"]) for im in gt["images"]]
    anns_by = annotations_by_image(gt)
    dets_by = annotations_by_image(list(dets))
    unknown = sorted(set(dets_by) - set(image_ids))
    if unknown:
        raise InputError(f"duplicate_stats: detections name image ids that the ground truth "
                         f"does not have: {unknown[:5]}")
    total = dict.fromkeys(_IMAGE_KEYS, 0)
    crowded = 0
    for image_id in image_ids:
        counts = _image_counts(image_id, anns_by.get(image_id, []), dets_by.get(image_id, []),
                               iou=iou, score_thresh=score_thresh, per_face=per_face,
                               overlap=overlap)
        crowded += counts["group_faces"] > 0
        for k in _IMAGE_KEYS:
            total[k] += counts[k]
    return {**total, "images": len(image_ids), "crowded_images": int(crowded),
            **_duplicate_rates(total, crowded, len(image_ids)),
            "iou": float(iou), "score_thresh": float(score_thresh),
            "per_face": None if per_face is None else float(per_face),
            "overlap": float(overlap)}


# --------------------------------------------------------------------------- post-processing
def remove_duplicates(det: Mapping[str, torch.Tensor], *, method: str, iou: float = 0.5,
                      sigma: float = 0.5, linear_iou: float = 0.3, score_thresh: float = 1e-3,
                      max_dets: int | None = 100) -> dict[str, torch.Tensor]:
    """One image's candidates ``{"boxes" [D, 4], "scores" [D], "labels" [D]}`` after a removal.

    ``method``: ``"nms"`` (greedy, class-wise, IoU > ``iou`` deleted), ``"soft-nms-gaussian"``
    (scores times ``exp(-IoU^2 / sigma)``), ``"soft-nms-linear"`` (times ``1 - IoU`` above
    ``linear_iou``) or ``"none"``; soft-NMS drops what falls below ``score_thresh``. Returns
    the same keys, highest score first, at most ``max_dets``.
    """
    from sodlab.nms import nms, soft_nms

    if method not in METHODS:
        raise InputError(f"remove_duplicates: method must be one of {', '.join(METHODS)}, "
                         f"got {method!r}")
    boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
    if method == "none":
        keep = torch.sort(scores, descending=True, stable=True).indices[:max_dets]
        new = scores[keep]
    elif method == "nms":
        keep = nms(boxes, scores, labels, iou, max_dets=max_dets)  # [K]
        new = scores[keep]
    else:
        keep, new = soft_nms(boxes, scores, labels, method=method.rsplit("-", 1)[1],
                             sigma=sigma, iou=linear_iou, score_thresh=score_thresh,
                             max_dets=max_dets)
    return {"boxes": boxes[keep], "scores": new.to(scores.dtype), "labels": labels[keep]}


@contextlib.contextmanager
def candidates_only(head: Any):
    """Inside the block ``head`` (a ``sodlab.models.roi_head.RoIHead``) returns every candidate.

    Its ``detect`` then keeps every (RoI, class) above its score threshold: NMS at IoU 1.0
    deletes nothing, no cap on the count, no learned removal. The attributes are restored
    on exit, so ``remove_duplicates`` can put the same outputs through each removal.
    """
    saved = head.nms_iou, head.max_dets, head.duplicate
    head.nms_iou, head.max_dets, head.duplicate = 1.0, None, None
    try:
        yield head
    finally:
        head.nms_iou, head.max_dets, head.duplicate = saved


def time_side_by_side(fns: Mapping[str, Callable[[], Any]], *, repeats: int = 5,
                      warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each function, called in turns (round robin) in one process.

    Taking turns spreads a shared machine's changing load over every function alike, so
    the *ratios* are what to read; absolute times move with the load. ``warmup`` rounds
    are run first and not counted.
    """
    if repeats < 1 or warmup < 0:
        raise InputError(f"time_side_by_side: repeats >= 1 and warmup >= 0, got "
                         f"{repeats}, {warmup}")
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
    out = {}
    for name, ts in times.items():
        ts = sorted(ts)
        n = len(ts)
        out[name] = ts[n // 2] if n % 2 else 0.5 * (ts[n // 2 - 1] + ts[n // 2])
    return out


# --------------------------------------------------------------------------- relation weights
def match_faces(boxes: torch.Tensor, faces: torch.Tensor, *, iou: float = 0.5) -> torch.Tensor:
    """Each box's best face (IoU >= ``iou``, ties: first face) or -1. ``[N]`` int64."""
    N = len(boxes)
    if N == 0 or len(faces) == 0:
        return torch.full((N,), -1, dtype=torch.long)
    best, idx = torchvision.ops.box_iou(boxes.float(), faces.float()).max(1)  # [N]
    return torch.where(best >= iou, idx, torch.full_like(idx, -1))


def _mean_heads(weights: torch.Tensor) -> torch.Tensor:
    w = weights.detach().float()
    if w.ndim == 3:
        w = w.mean(0)  # [N, M]
    if w.ndim != 2:
        raise InputError(f"relation weights must be [H, N, M] or [N, M], got {list(w.shape)}")
    return w


def face_attention(weights: torch.Tensor, face_of: torch.Tensor,
                   num_faces: int, *, key_face_of: torch.Tensor | None = None) -> torch.Tensor:
    """How much each face's RoIs attend to each face's RoIs. ``[F, F]``.

    Entry ``[f, g]``: the head-averaged weight that a RoI on face f gives to all RoIs on
    face g together, averaged over f's RoIs (a row sums to at most 1; the rest goes to
    background RoIs). ``face_of [N]`` for the receivers, ``key_face_of [M]`` for the keys
    (default: the same RoIs). Rows of faces without a RoI are 0.
    """
    w = _mean_heads(weights)  # [N, M]
    face_of = face_of.long()
    keys = face_of if key_face_of is None else key_face_of.long()
    F = int(num_faces)
    to_face = torch.zeros(len(w), F + 1).index_add_(
        1, torch.where(keys >= 0, keys, torch.full_like(keys, F)), w)[:, :F]  # [N, F]
    out = torch.zeros(F + 1, F).index_add_(
        0, torch.where(face_of >= 0, face_of, torch.full_like(face_of, F)), to_face)[:F]
    count = torch.bincount(face_of[face_of >= 0], minlength=F).clamp(min=1)  # [F]
    return out / count[:, None]


def group_attention(weights: torch.Tensor, face_of: torch.Tensor, groups: torch.Tensor, *,
                    identities: torch.Tensor | None = None,
                    key_face_of: torch.Tensor | None = None) -> dict:
    """Do RoIs on faces of one group attend to each other more than to the rest?

    Receivers: the RoIs on a face of a group. For each (receiver n, key m != n) pair the
    head-averaged weight times M (1 = the uniform share) is put in one class: ``same face``
    (another RoI on n's face: a duplicate), ``same group`` (a RoI on another face of n's
    group), ``same identity`` (another face showing the same person, outside the group;
    only with ``identities [F]``, -1 unknown), ``other face`` or ``background`` (on no face); ``self``
    is m = n (keys = receivers). Returns ``{class: mean relative weight}`` (-1 when a class
    has no pair), ``{class + " pairs": count}`` and ``"within / across"``: the ``same group``
    mean over the mean of ``other face`` and ``same identity`` pairs together (-1 if either
    is empty; ``inf`` when the across pairs all have weight 0 and the within pairs do not).
    """
    w = _mean_heads(weights)  # [N, M]
    N, M = w.shape
    rel = w * M  # [N, M] 1 = uniform
    classes, recv = _pair_classes(N, M, face_of, groups, identities, key_face_of)
    out: dict = {}
    for name, mask in classes.items():
        m = mask & recv[:, None]
        n = int(m.sum())
        out[name] = float(rel[m].mean()) if n else EMPTY
        out[f"{name} pairs"] = n
    across = (classes["other face"] | classes["same identity"]) & recv[:, None]
    within = out["same group"]
    base = float(rel[across].mean()) if across.any() else 0.0
    if within == EMPTY or not across.any():
        out["within / across"] = EMPTY
    elif base == 0.0:  # every across pair got weight 0 (a geometry weight ReLU'd to zero)
        out["within / across"] = math.inf if within > 0 else EMPTY
    else:
        out["within / across"] = within / base
    return out


def _pair_classes(N: int, M: int, face_of: torch.Tensor, groups: torch.Tensor,
                  identities: torch.Tensor | None, key_face_of: torch.Tensor | None):
    """The (receiver, key) pair classes of ``group_attention``: ``{class: [N, M] bool}``, and
    which RoIs receive (those on a face of a group, ``[N]``)."""
    face_of = face_of.long()
    keys = face_of if key_face_of is None else key_face_of.long()
    groups = groups.long()
    if len(groups) == 0:  # no faces: nobody receives, every key is background
        face_of = torch.full_like(face_of, -1)
        keys = torch.full_like(keys, -1)
        groups = torch.full((1,), -1, dtype=torch.long)
    g_n = torch.where(face_of >= 0, groups[face_of.clamp(min=0)], torch.full_like(face_of, -1))
    g_m = torch.where(keys >= 0, groups[keys.clamp(min=0)], torch.full_like(keys, -1))
    on_face = keys >= 0  # [M]
    same_face = (face_of[:, None] == keys[None, :]) & on_face[None, :]  # [N, M]
    same_group = ~same_face & on_face[None, :] & (g_n[:, None] == g_m[None, :])  # [N, M]
    if identities is not None:
        ids = identities.long() if len(identities) else torch.full((1,), -1)
        i_n = ids[face_of.clamp(min=0)]
        i_m = ids[keys.clamp(min=0)]
        same_id = (~same_face & ~same_group & on_face[None, :] & (i_n[:, None] == i_m[None, :])
                   & (i_n >= 0)[:, None])
    else:
        same_id = torch.zeros(N, M, dtype=torch.bool)
    is_self = torch.zeros(N, M, dtype=torch.bool)
    if key_face_of is None:
        is_self = torch.eye(N, M, dtype=torch.bool)
    classes = {"self": is_self,
               "same face": same_face & ~is_self,
               "same group": same_group,
               "same identity": same_id,
               "other face": on_face[None, :] & ~same_face & ~same_group & ~same_id,
               "background": ~on_face[None, :].expand(N, M) & ~is_self}
    return classes, g_n >= 0


def crowded_image_ids(gt: dict, *, min_faces: int = 2) -> list[int]:
    """Ids of images with a group of at least ``min_faces`` non-crowd faces, most faces first."""
    from sodlab.data.coco import annotations_by_image

    by = annotations_by_image(gt)
    scored = []
    for im in gt["images"]:
        anns = [a for a in by.get(int(im["id"]), []) if not a.get("iscrowd", 0)]
        sizes: dict[int, int] = {}
        for a in anns:
            g = _group_id(a)
            if g >= 0:
                sizes[g] = sizes.get(g, 0) + 1
        best = max(sizes.values(), default=0)
        if best >= min_faces:
            scored.append((-best, -len(anns), int(im["id"])))
    return [i for *_, i in sorted(scored)]


__all__ = ["duplicate_stats", "image_duplicates", "remove_duplicates", "candidates_only",
           "time_side_by_side", "match_faces", "face_attention", "group_attention",
           "crowded_image_ids", "METHODS", "EMPTY"]
