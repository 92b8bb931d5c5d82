"""A second stage on top of a trained single-shot detector: RoI pooling, two FC layers, class and box.

Fast R-CNN's head (Girshick 2015) over an FPN (Lin et al. 2017): each proposal is pooled
with ``torchvision.ops.roi_align`` (``aligned=True``, boxes in input pixels,
``spatial_scale = 1 / stride``) from one pyramid level chosen by its size (the FPN rule,
below), flattened, passed through two FC layers with ReLU, and mapped to ``K + 1`` class
logits (index 0 background) and one class-agnostic box delta (``sodlab.boxes.BoxCoder``
with Faster R-CNN's second-stage weights ``(10, 10, 5, 5)``). Two techniques plug in here:

- **Relation Networks** (Hu et al. 2018, ``sodlab.models.relation``): ``relation = r > 0``
  puts r relation modules after *each* FC layer (before its ReLU, as the authors' code),
  applied per image over that image's RoIs; ``learned_nms=True`` replaces NMS by the
  learned duplicate removal, trained with its own BCE loss (key ``"nms"``).
- **Perceptual GAN** (Li et al. 2017): ``RoIHead.enhancer`` is an optional callable
  ``enhancer(pooled [N, C, P, P], rois [N, 5], feats {stride: [B, C, H, W]}) ->
  [N, C, P, P]`` applied to the pooled features before the FC layers. ``rois`` rows are
  ``(image index, x1, y1, x2, y2)`` in input pixels, roi_align's own format, so a generator
  can pool finer levels itself and add a residual to the small objects' features. Assign an
  ``nn.Module`` and its parameters train with the head.

FPN level rule: a box of size ``s = sqrt(w h)`` goes to stride ``canonical_stride *
2^floor(log2(s / canonical))``, then to the available stride nearest in log2 (ties to the
finer one). FPN's canonical 224 px at stride 16 times the detector's anchor factor 1/4
gives ``canonical = 56``: 56-111 px at stride 16, 28-55 at 8, smaller at 4 (the finest).

Training: proposals match ground truth by IoU (>= ``fg_iou`` foreground, below background,
crowd regions ignored as in ``sodlab.matching``); the ground-truth boxes join the proposals
(and are left out of the relation modules' keys and of the learned NMS, since they do not
exist at test time). Every proposal counts (no sampling: a trained base gives a few
hundred at most). Loss: cross-entropy over the counted RoIs plus the smooth-L1 box loss of
``sodlab.losses`` on the foreground ones, both divided by the number of counted RoIs.

``TwoStageDetector`` wraps a single-shot detector (duck-typed: ``backbone``, ``neck``,
``head``, ``anchors``, ``postprocess``, and ``loss`` when it trains too): its top-k
post-processed boxes per image, computed without gradient, are the proposals. Training
returns ``{"loss": scalar, ...}`` and eval per image ``{"boxes", "scores", "labels"}``,
exactly as ``sodlab.detector.Detector``. Taught in the notebooks on two-stage refinement
(Perceptual GAN, Relation Networks).

Shapes: ``feats {stride: [B, C, H, W]}``, proposals per image ``[N_b, 4]`` xyxy in input
pixels; pooled ``[N, C, P, P]``; embedded ``[N, D]``; logits ``[N, K + 1]``; deltas ``[N, 4]``.
Dimension legend: B images, N RoIs of the batch, N_b RoIs of image b, C width, P pool side,
D FC width, K classes, T learned-NMS thresholds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sodlab.boxes import BoxCoder
from sodlab.losses import box_loss
from sodlab.matching import NEGATIVE, match_anchors
from sodlab.models.relation import DuplicateRemoval, RelationModule, duplicate_targets
from sodlab.nms import nms

Enhancer = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]


def box_predictor(width: int, num_classes: int) -> tuple[nn.Linear, nn.Linear]:
    """Fast R-CNN's last layers: ``K + 1`` class logits and 4 class-agnostic box deltas.

    Initialised as in Fast R-CNN's reference code: small normal weights (std 0.01, 0.001),
    zero biases, so the first steps start from uniform classes and no box refinement.
    """
    cls, box = nn.Linear(width, num_classes + 1), nn.Linear(width, 4)
    nn.init.normal_(cls.weight, std=0.01)
    nn.init.normal_(box.weight, std=0.001)
    nn.init.zeros_(cls.bias)
    nn.init.zeros_(box.bias)
    return cls, box


def assign_levels(boxes: torch.Tensor, strides: Sequence[int], *, canonical: float = 56.0,
                  canonical_stride: int = 16) -> torch.Tensor:
    """Index into ``sorted(strides)`` of each box's pyramid level (the FPN rule). ``[N]`` int64."""
    strides = sorted(int(s) for s in strides)
    size = ((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
            ).sqrt().clamp(min=1e-6)  # [N]
    k = torch.floor(math.log2(canonical_stride) + torch.log2(size / canonical) + 1e-6)  # [N]
    levels = torch.tensor([math.log2(s) for s in strides], device=boxes.device)  # [L]
    return (k[:, None] - levels[None]).abs().argmin(1)  # [N] first minimum: the finer level


def rois_of(boxes_per_image: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(image index, x1, y1, x2, y2)`` rows of all images' boxes, image by image. ``[N, 5]``."""
    rows = [torch.cat([torch.full((len(b), 1), float(i), device=b.device), b.float()], 1)
            for i, b in enumerate(boxes_per_image)]
    return torch.cat(rows) if rows else torch.zeros(0, 5)


class RoIHead(nn.Module):
    """Pool, embed (2 FC, optional relation modules), predict; matching, loss and detection.

    ``forward(feats, proposals, targets)`` in training (``targets`` given) returns the loss
    dict; otherwise per image ``{"boxes", "scores", "labels"}``.
    """

    def __init__(self, width: int, num_classes: int, *, pool: int = 7, fc: int = 256,
                 relation: int = 0, relation_heads: int = 16, relation_dk: int | None = None,
                 learned_nms: bool = False,
                 nms_thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9),
                 first_n: int = 100, canonical: float = 56.0, canonical_stride: int = 16,
                 sampling_ratio: int = 2, fg_iou: float = 0.5, score_thresh: float = 0.05,
                 nms_iou: float = 0.5, max_dets: int = 100,
                 box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
                 ) -> None:
        super().__init__()
        self.width, self.num_classes, self.pool_size = width, num_classes, pool
        self.canonical, self.canonical_stride = canonical, canonical_stride
        self.sampling_ratio, self.fg_iou = sampling_ratio, fg_iou
        self.score_thresh, self.nms_iou, self.max_dets = score_thresh, nms_iou, max_dets
        self.fc1 = nn.Linear(width * pool * pool, fc)
        self.fc2 = nn.Linear(fc, fc)
        d_k = relation_dk or max(1, fc // relation_heads)  # the paper: 1024 / 16 heads = 64
        self.relations = nn.ModuleList(
            nn.ModuleList(RelationModule(fc, heads=relation_heads, d_k=d_k)
                          for _ in range(relation)) for _ in range(2))
        self.cls, self.box = box_predictor(fc, num_classes)
        self.duplicate = (DuplicateRemoval(fc, thresholds=tuple(nms_thresholds), first_n=first_n)
                          if learned_nms else None)
        self.coder = BoxCoder(weights=box_weights)
        self.enhancer: Enhancer | None = None

    # ------------------------------------------------------------------ the network
    def pool(self, feats: dict[int, torch.Tensor], boxes_per_image: Sequence[torch.Tensor],
             strides: Sequence[int] | None = None) -> torch.Tensor:
        """roi_align of every box on its level. ``[N, C, P, P]``, boxes in image order."""
        strides = sorted(int(s) for s in (strides if strides is not None else feats))
        rois = rois_of(boxes_per_image).to(next(iter(feats.values())).device)  # [N, 5]
        C = feats[strides[0]].shape[1]
        out = rois.new_zeros(len(rois), C, self.pool_size, self.pool_size)
        if len(rois) == 0:
            return out
        level = assign_levels(rois[:, 1:], strides, canonical=self.canonical,
                              canonical_stride=self.canonical_stride)  # [N]
        for i, s in enumerate(strides):
            idx = torch.nonzero(level == i).flatten()
            if len(idx):
                pooled = torchvision.ops.roi_align(
                    feats[s], rois[idx], self.pool_size, spatial_scale=1.0 / s,
                    sampling_ratio=self.sampling_ratio, aligned=True)  # [n_i, C, P, P]
                out = out.index_copy(0, idx, pooled.to(out.dtype))
        return out

    def _groups(self, boxes: torch.Tensor, batch_index: torch.Tensor,
                key_mask: torch.Tensor | None) -> list[tuple]:
        """Per image: its RoIs, key mask and geometry embedding, shared by every module."""
        first = self.relations[0][0] if len(self.relations[0]) else None
        if first is None or len(boxes) == 0:
            return []
        out = []
        for b in torch.unique(batch_index).tolist():
            idx = torch.nonzero(batch_index == b).flatten()
            mask = None if key_mask is None else key_mask[idx]
            out.append((b, idx, mask, first.embed_geometry(boxes[idx], mask)))
        return out

    @staticmethod
    def _relate(x: torch.Tensor, modules: nn.ModuleList, boxes: torch.Tensor, groups: list,
                weights: list | None) -> torch.Tensor:
        if len(modules) == 0 or not groups:
            return x
        parts, where = [], []
        for b, idx, mask, emb in groups:
            xb = x[idx]
            for m in modules:
                if weights is None:
                    xb = m(xb, boxes[idx], key_mask=mask, embedding=emb)
                else:
                    xb, w = m(xb, boxes[idx], key_mask=mask, embedding=emb,
                              return_weights=True)
                    weights.append({"image": b, "index": idx, "weights": w.detach()})
            parts.append(xb)
            where.append(idx)
        return torch.zeros_like(x).index_copy(0, torch.cat(where), torch.cat(parts))

    def embed(self, pooled: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor, *,
              key_mask: torch.Tensor | None = None, return_weights: bool = False):
        """Two FC layers (+ReLU), relation modules after each (per image). ``[N, D]``.

        With ``return_weights`` also a list of ``{"image", "index" [N_b], "weights"
        [H, N_b, M_b]}``, one per relation module and image (FC 1's modules first).
        """
        weights: list | None = [] if return_weights else None
        groups = self._groups(boxes, batch_index, key_mask)
        x = self.fc1(pooled.flatten(1))  # [N, D]
        x = F.relu(self._relate(x, self.relations[0], boxes, groups, weights))
        x = self.fc2(x)  # [N, D]
        x = F.relu(self._relate(x, self.relations[1], boxes, groups, weights))
        return (x, weights) if return_weights else x

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[N, K + 1]`` (0 = background) and class-agnostic deltas ``[N, 4]``."""
        return self.cls(x), self.box(x)

    def run(self, feats: dict[int, torch.Tensor], boxes_per_image: Sequence[torch.Tensor], *,
            key_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Pool -> enhancer (if set) -> embed -> predict, for all images' boxes at once."""
        rois = rois_of(boxes_per_image).to(next(iter(feats.values())).device)  # [N, 5]
        pooled = self.pool(feats, boxes_per_image)  # [N, C, P, P]
        if self.enhancer is not None:
            pooled = self.enhancer(pooled, rois, feats)
        batch_index = rois[:, 0].long()
        x = self.embed(pooled, rois[:, 1:], batch_index, key_mask=key_mask)  # [N, D]
        logits, deltas = self.predict(x)
        return {"rois": rois, "pooled": pooled, "feats": x, "logits": logits, "deltas": deltas}

    # ------------------------------------------------------------------ training
    def match(self, boxes: torch.Tensor, target: dict) -> torch.Tensor:
        """Each RoI's ground-truth index, ``NEGATIVE`` (-1) or ``IGNORE`` (-2). ``[N]`` int64."""
        gt = target["boxes"].to(boxes.device, torch.float32).reshape(-1, 4)
        crowd = target.get("iscrowd", torch.zeros(len(gt), dtype=torch.bool)).to(boxes.device)
        return match_anchors(boxes.float(), gt, crowd.bool(), pos_iou=self.fg_iou,
                             neg_iou=self.fg_iou, allow_low_quality=False)

    @staticmethod
    def with_gt(proposals: Sequence[torch.Tensor], targets: Sequence[dict]
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Proposals with each image's non-crowd ground truth appended; ``[N]`` bool: is gt."""
        out, is_gt = [], []
        for p, t in zip(proposals, targets):
            gt = t["boxes"].to(p.device, torch.float32).reshape(-1, 4)
            crowd = t.get("iscrowd", torch.zeros(len(gt), dtype=torch.bool)).to(p.device).bool()
            out.append(torch.cat([p.float(), gt[~crowd]]))
            is_gt += [torch.zeros(len(p), dtype=torch.bool), torch.ones(int((~crowd).sum()),
                                                                       dtype=torch.bool)]
        if not is_gt:
            return out, torch.zeros(0, dtype=torch.bool)
        return out, torch.cat(is_gt).to(proposals[0].device)

    def loss(self, logits: torch.Tensor, deltas: torch.Tensor,
             boxes_per_image: Sequence[torch.Tensor], targets: Sequence[dict]
             ) -> dict[str, torch.Tensor]:
        """Cross-entropy + box loss, both over the counted (non-ignored) RoIs."""
        labels_all, tgt_all, pos_all, counted_all = [], [], [], []
        for boxes, t in zip(boxes_per_image, targets):
            m = self.match(boxes, t)  # [N_b]
            gt = t["boxes"].to(boxes.device, torch.float32).reshape(-1, 4)
            lab = torch.zeros_like(m)  # background 0
            pos = m >= 0
            lab[pos] = t["labels"].to(m.device).long()[m[pos]] + 1
            labels_all.append(lab)
            counted_all.append(m >= NEGATIVE)
            pos_all.append(pos)
            tgt_all.append(self.coder.encode(gt[m[pos]], boxes[pos].float()))
        labels, counted = torch.cat(labels_all), torch.cat(counted_all)
        pos = torch.cat(pos_all)
        n = float(counted.sum())
        if n:
            l_cls = F.cross_entropy(logits[counted], labels[counted], reduction="sum") / n
        else:
            l_cls = logits.sum() * 0.0
        l_box = box_loss(deltas[pos], torch.cat(tgt_all), max(n, 1.0))
        return {"loss": l_cls + l_box, "cls": l_cls.detach(), "box": l_box.detach(),
                "num_pos": torch.tensor(float(pos.sum()))}

    def duplicate_loss(self, out: dict, boxes_per_image: Sequence[torch.Tensor],
                       targets: Sequence[dict], is_gt: torch.Tensor) -> torch.Tensor:
        """BCE of the learned NMS, per image and class, on the candidates the test sees.

        Candidates: the proposals (not the appended ground truth) whose class probability
        exceeds ``score_thresh``, refined boxes clipped to the image, the top ``first_n``
        ranked; ``s0`` and the boxes carry no gradient, the RoI features do.
        """
        dup = self.duplicate
        refined = self.coder.decode(out["deltas"].detach(), out["rois"][:, 1:])  # [N, 4]
        probs = out["logits"].detach().softmax(-1)[:, 1:]  # [N, K]
        s0s, s1s, tgts = [], [], []
        start = 0
        for boxes, t in zip(boxes_per_image, targets):
            sl = slice(start, start + len(boxes))
            start += len(boxes)
            h, w = t.get("size", (math.inf, math.inf))
            bx = refined[sl].clone()
            bx[:, 0::2] = bx[:, 0::2].clamp(0, w)
            bx[:, 1::2] = bx[:, 1::2].clamp(0, h)
            gt = t["boxes"].to(refined.device, torch.float32).reshape(-1, 4)
            crowd = t.get("iscrowd", torch.zeros(len(gt), dtype=torch.bool)).to(gt.device)
            gt_labels = t["labels"].to(gt.device).long()
            for k in range(self.num_classes):
                cand = torch.nonzero(~is_gt[sl] & (probs[sl, k] > self.score_thresh)
                                     ).flatten()  # [n] this image's candidates
                if len(cand) == 0:
                    continue
                s0 = probs[sl][cand, k]
                top = cand[torch.sort(s0, descending=True, stable=True).indices[:dup.first_n]]
                s0 = probs[sl][top, k]  # [n'] best first
                s1 = dup(out["feats"][sl][top], bx[top], s0)  # [n', T]
                mine = (gt_labels == k) & ~crowd.bool()
                tgts.append(duplicate_targets(bx[top], s0, gt[mine], dup.thresholds))
                s0s.append(s0)
                s1s.append(s1)
        if not s1s:
            return out["feats"].sum() * 0.0
        return dup.loss(torch.cat(s0s), torch.cat(s1s), torch.cat(tgts))

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def detect(self, out: dict, boxes_per_image: Sequence[torch.Tensor],
               image_sizes: Sequence[tuple[int, int]]) -> list[dict]:
        """Per image: class probabilities, refined boxes, then NMS or the learned removal."""
        results, start = [], 0
        probs_all = out["logits"].softmax(-1)[:, 1:]  # [N, K]
        refined_all = self.coder.decode(out["deltas"], out["rois"][:, 1:])  # [N, 4]
        for boxes, (h, w) in zip(boxes_per_image, image_sizes):
            sl = slice(start, start + len(boxes))
            start += len(boxes)
            probs, bx, x = probs_all[sl], refined_all[sl].clone(), out["feats"][sl]
            bx[:, 0::2] = bx[:, 0::2].clamp(0, w)
            bx[:, 1::2] = bx[:, 1::2].clamp(0, h)
            roi_idx, k_idx = torch.nonzero(probs > self.score_thresh, as_tuple=True)  # [M]
            ok = (bx[roi_idx, 2] > bx[roi_idx, 0]) & (bx[roi_idx, 3] > bx[roi_idx, 1])
            roi_idx, k_idx = roi_idx[ok], k_idx[ok]
            scores = probs[roi_idx, k_idx]  # [M]
            if self.duplicate is None:
                keep = nms(bx[roi_idx], scores, k_idx, self.nms_iou, max_dets=self.max_dets)
            else:
                final = torch.zeros_like(scores)
                for k in torch.unique(k_idx).tolist():
                    sel = torch.nonzero(k_idx == k).flatten()
                    s1 = self.duplicate(x[roi_idx[sel]], bx[roi_idx[sel]], scores[sel])
                    final[sel] = self.duplicate.final_scores(scores[sel], s1)
                scores = final
                keep = torch.nonzero(final > 0).flatten()
                keep = keep[torch.sort(final[keep], descending=True, stable=True).indices]
                keep = keep[:self.max_dets]
            results.append({"boxes": bx[roi_idx[keep]], "scores": scores[keep],
                            "labels": k_idx[keep].long()})
        return results

    def forward(self, feats: dict[int, torch.Tensor], proposals: Sequence[torch.Tensor],
                targets: Sequence[dict] | None = None, *,
                image_sizes: Sequence[tuple[int, int]] | None = None):
        """Loss dict in training (``targets`` given), else detections per image.

        ``image_sizes`` ``(h, w)`` per image clip the refined boxes at test time (none: no
        clipping); in training each target's ``size`` clips the learned NMS's candidates.
        """
        if self.training and targets is not None:
            boxes, is_gt = self.with_gt(proposals, targets)
            out = self.run(feats, boxes, key_mask=~is_gt)
            losses = self.loss(out["logits"], out["deltas"], boxes, targets)
            if self.duplicate is not None:
                l_nms = self.duplicate_loss(out, boxes, targets, is_gt)
                losses["loss"] = losses["loss"] + l_nms
                losses["nms"] = l_nms.detach()
            return losses
        if image_sizes is None:  # nothing to clip to
            image_sizes = [(math.inf, math.inf)] * len(proposals)
        out = self.run(feats, proposals)
        return self.detect(out, proposals, image_sizes)


class TwoStageDetector(nn.Module):
    """A single-shot detector's top-k boxes, refined by a ``RoIHead``.

    With ``freeze_base`` (default) the base always runs in eval mode under ``no_grad``: its
    parameters have ``requires_grad=False`` and its BatchNorm layers use their running
    statistics and never update them (``train()`` keeps the base in eval mode). Without it
    the base trains too: its features get the second stage's gradient and its own dense
    loss is added (keys ``base_*``); proposals are still computed without gradient.
    """

    def __init__(self, base: nn.Module, roi_head: RoIHead, *, proposals: int = 100,
                 freeze_base: bool = True) -> None:
        super().__init__()
        self.base, self.roi_head = base, roi_head
        self.num_proposals, self.freeze_base = proposals, freeze_base
        if freeze_base:
            for p in base.parameters():
                p.requires_grad_(False)
            base.eval()

    def train(self, mode: bool = True) -> TwoStageDetector:
        super().train(mode)
        if self.freeze_base:
            self.base.eval()
        return self

    def _base(self, images: torch.Tensor):
        feats = self.base.neck(self.base.backbone(images))  # {stride: [B, C, H, W]}
        return feats, self.base.head(feats)

    def propose(self, outs: dict, feats: dict, images: torch.Tensor,
                targets: Sequence[dict] | None = None) -> tuple[list[torch.Tensor], dict]:
        """The base's top-``proposals`` post-processed boxes per image (no gradient)."""
        anchors = self.base.anchors({s: tuple(f.shape[-2:]) for s, f in feats.items()},
                                    images.device)
        with torch.no_grad():
            dets = self.base.postprocess(outs, anchors, images.shape[-2:], targets)
        props = [d["boxes"][torch.sort(d["scores"], descending=True, stable=True).indices]
                 [:self.num_proposals].detach() for d in dets]
        return props, anchors

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        if self.freeze_base:
            with torch.no_grad():
                feats, outs = self._base(images)
        else:
            feats, outs = self._base(images)
        proposals, anchors = self.propose(outs, feats, images, targets)
        if self.training and targets is not None:
            losses = self.roi_head(feats, proposals, targets)
            if not self.freeze_base:
                strides = sorted(outs)
                base = self.base.loss(torch.cat([outs[s][0] for s in strides], 1),
                                      torch.cat([outs[s][1] for s in strides], 1),
                                      torch.cat([anchors[s] for s in strides]), targets)
                losses.update({f"base_{k}": v.detach() for k, v in base.items()})
                losses["loss"] = losses["loss"] + base["loss"]
            return losses
        sizes = [tuple(t["size"]) if targets and "size" in t else tuple(images.shape[-2:])
                 for t in (targets or [{}] * len(images))]
        return self.roi_head(feats, proposals, image_sizes=sizes)
