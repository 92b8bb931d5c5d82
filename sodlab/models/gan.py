"""Perceptual GAN's second stage: a generator that lifts small objects' RoI features, and its discriminator.

Li et al., CVPR 2017, "Perceptual Generative Adversarial Networks for Small Object
Detection". Taught in notebook 07_perceptual_gan; built by ``sodlab.engine.stage_two``
(spec ``{"kind": "pgan"}``) on top of a trained, frozen single-shot detector.

The idea: a small object's pooled features are poor, a large one's are rich. The
**generator** reads the small object's *fine* features (its RoI pooled from the finest
pyramid level, stride 4 here, the paper's Conv1) and learns a *residual*: 3x3 conv, 1x1
conv to the coarse features' channels, ``blocks`` residual blocks (conv + BN + ReLU, twice,
plus the skip), and a last 1x1 conv that starts at zero (so the untrained head is the
plain RoI head). The residual is ADDED to the object's pooled features (the ones the RoI
head's level rule picked), only for RoIs whose box is **small** (area <= ``SMALL_AREA`` =
32² input pixels); the generator is the RoI head's ``enhancer``, so test time uses it too.
In our FPN the level rule pools small RoIs from strides 4 and 8, which already carry
top-down semantics; the paper pools them from its coarsest layer. So here the generator
refines features that are less poor than the paper's, and the experiment asks what its
*training signal* adds.

The **discriminator** has two branches over flattened pooled features:

- adversarial: 3 FC layers (ReLU between), a sigmoid on the last one's output is the
  probability that a feature is a *real large object's*. Real examples: the pooled
  features of foreground RoIs (matched to an object at IoU >= ``fg_iou``) whose box area is
  at least ``LARGE_AREA``; fake examples: the enhanced features of small foreground RoIs.
- perception: 2 FC layers, then class logits and class-agnostic box deltas, trained with
  the RoI head's own loss (``RoIHead.loss``) on the RoIs of area >= ``LARGE_AREA`` (the
  paper's perception branch learns detection from large objects); it then requires the
  enhanced small features to be good for detection.

"Large" threshold. COCO's large bucket starts at area 96². In the embedded quick data
(longer image side 320-640 px) the training faces' COCO ``area`` reaches 96² in input
pixels for 0 of 1098 faces at 256 px (quick) and 24 at 384 px (full); at 48² the counts
are 79 and 145 (by box area 95 and 167). A batch of 4-8 images would rarely hold one real
example at 96², so ``LARGE_AREA`` = 48² (input pixels, box area): a face twice the side of
the small limit, still far better resolved than the tiny ones. ``count_large`` counts them
in a COCO dict; ``sodlab.engine.stage_two`` refuses data with none before training.

Schedule and losses (one model, trained by the ordinary ``train_step``). The head counts
its training steps (buffer ``gan_step``, in the checkpoint, so resuming keeps the phase):

- even steps, the **discriminator** step: ``L_D = BCE(D(real), 1) + BCE(D(fake), 0)`` (each
  term the mean over its examples; only when the batch has both) ``+ L_perception(large)``;
  the generator runs under ``no_grad``, so its output is detached and no generator or RoI
  head parameter gets a gradient.
- odd steps, the **generator** step: ``L_G = L_det + PERCEPTION_WEIGHT * L_perception(small
  enhanced) + ADVERSARIAL_WEIGHT * BCE(D(fake), 1)`` (the non-saturating form), with
  ``L_det`` the RoI head's detection loss on all RoIs (enhanced where small). The
  discriminator runs as a functional call on *detached* copies of its parameters, so it
  passes gradients to the generator and gets none itself.

Both weights are 1, the paper's plain sum. A parameter with no gradient in a step is
skipped by the optimizer (AdamW and SGD skip ``grad is None``, weight decay included), so
each phase updates only its own networks. ``adversarial=False`` is the capacity control:
the same networks and schedule, without the adversarial terms (the generator learns from
the detection and perception losses only, the adversarial branch never trains).

Every training step appends a row to ``history`` (kept in the state dict as extra state:
a float tensor ``[T, len(HISTORY_COLUMNS)]``, NaN where a value does not apply), so a
run's checkpoint carries its loss curves and the discriminator's accuracy. Collapse: when
the discriminator's accuracy has been exactly 0 or exactly 1 on ``collapse_patience``
consecutive adversarial steps, training stops with ``GANCollapsed`` (the engine reports it
as ``TrainingDiverged``); a non-finite loss is caught by ``train_step`` as for any model.

Shapes: ``feats {stride: [B, C, H, W]}``; ``rois [N, 5]`` (image index, x1, y1, x2, y2) in
input pixels; pooled, fine and enhanced features ``[N, C, P, P]``; adversarial logits
``[N]``; class logits ``[N, K + 1]``; deltas ``[N, 4]``.
Dimension legend: B images, N RoIs, C width, P pool side, K classes, T training steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from sodlab.boxes import box_area
from sodlab.models.roi_head import RoIHead, box_predictor, rois_of

SMALL_AREA = 32.0 ** 2  # RoIs at most this big (input px²) get the generator's residual
LARGE_AREA = 48.0 ** 2  # foreground RoIs at least this big are the discriminator's real examples
PERCEPTION_WEIGHT = 1.0
ADVERSARIAL_WEIGHT = 1.0
HISTORY_COLUMNS = ("step", "phase", "d_adv", "d_perc", "d_acc", "d_real", "d_fake",
                   "g_det", "g_perc", "g_adv", "n_real", "n_fake")


class GANCollapsed(RuntimeError):
    """The discriminator's accuracy stayed at 0 or 1: the generator gets no useful signal."""


def count_large(coco: dict, *, input_size: int, large_area: float = LARGE_AREA) -> int:
    """Non-crowd boxes of a COCO dict whose area reaches ``large_area`` at ``input_size``.

    Each image is resized so its longer side is ``input_size`` (as in training); the box
    area (``bbox`` w x h) scales by the square of that ratio.
    """
    sizes = {im["id"]: max(im["width"], im["height"]) for im in coco["images"]}
    n = 0
    for a in coco["annotations"]:
        if a.get("iscrowd"):
            continue
        s = input_size / sizes[a["image_id"]]
        n += int(a["bbox"][2] * a["bbox"][3] * s * s >= large_area)
    return n


class GeneratorBlock(nn.Module):
    """``relu(x + BN(conv(relu(BN(conv(x))))))`` with 3x3 convolutions, channels kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class Generator(nn.Module):
    """Fine RoI features -> a residual for the pooled features; an ``RoIHead.enhancer``.

    ``forward(pooled [N, C, P, P], rois [N, 5], feats)`` pools every small RoI from the
    finest level of ``feats`` and returns ``pooled`` with ``residual(fine)`` added to the
    small RoIs' rows (the others unchanged).
    """

    def __init__(self, channels: int, *, fine_channels: int | None = None, blocks: int = 3,
                 small_area: float = SMALL_AREA, sampling_ratio: int = 2) -> None:
        super().__init__()
        self.small_area, self.sampling_ratio = float(small_area), int(sampling_ratio)
        self.stem = nn.Sequential(
            nn.Conv2d(fine_channels or channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 1))  # to the coarse features' channels
        self.blocks = nn.ModuleList(GeneratorBlock(channels) for _ in range(blocks))
        self.out = nn.Conv2d(channels, channels, 1)  # the last layer: starts at zero
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def residual(self, fine: torch.Tensor) -> torch.Tensor:
        """``[n, C_fine, P, P] -> [n, C, P, P]``."""
        x = F.relu(self.stem(fine))
        for block in self.blocks:
            x = block(x)
        return self.out(x)

    def small(self, rois: torch.Tensor) -> torch.Tensor:
        """Which RoIs get the residual: box area <= ``small_area``. ``[N]`` bool."""
        return box_area(rois[:, 1:]) <= self.small_area

    def pool_fine(self, rois: torch.Tensor, feats: dict[int, torch.Tensor],
                  pool: int) -> torch.Tensor:
        """The RoIs pooled from the finest level (``roi_align``, aligned). ``[n, C, P, P]``."""
        s = min(feats)  # float32 both: box corners in bf16 would move by up to a pixel
        return torchvision.ops.roi_align(feats[s].float(), rois.float(), pool,
                                         spatial_scale=1.0 / s,
                                         sampling_ratio=self.sampling_ratio, aligned=True)

    def forward(self, pooled: torch.Tensor, rois: torch.Tensor,
                feats: dict[int, torch.Tensor]) -> torch.Tensor:
        idx = torch.nonzero(self.small(rois)).flatten()  # [n]
        if len(idx) == 0:
            return pooled
        fine = self.pool_fine(rois[idx], feats, pooled.shape[-1])  # [n, C, P, P]
        res = self.residual(fine)  # [n, C, P, P]
        return pooled.index_add(0, idx, res.to(pooled.dtype))


class Discriminator(nn.Module):
    """Adversarial branch (3 FC, sigmoid: real large object?) and perception branch (2 FC -> class, box).

    ``forward(x [N, C, P, P], branch="adversarial")`` returns logits ``[N]`` (the sigmoid is
    in ``real_probability`` and in the BCE-with-logits losses); ``branch="perception"``
    returns ``(class logits [N, K + 1], deltas [N, 4])``.
    """

    def __init__(self, in_features: int, num_classes: int, *, hidden: int = 256) -> None:
        super().__init__()
        self.adversarial = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.perception = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU())
        self.cls, self.box = box_predictor(hidden, num_classes)

    def forward(self, x: torch.Tensor, branch: str = "adversarial"):
        if branch == "adversarial":
            return self.adversarial(x.float()).squeeze(1)  # [N]
        h = self.perception(x.float())  # [N, hidden]
        return self.cls(h), self.box(h)

    def real_probability(self, x: torch.Tensor) -> torch.Tensor:
        """The adversarial branch's sigmoid: probability of a real large object. ``[N]``."""
        return torch.sigmoid(self(x))


def _split(boxes_per_image: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """Each image's boxes where ``mask`` (over all images' boxes, in order) is True."""
    out, start = [], 0
    for b in boxes_per_image:
        out.append(b[mask[start:start + len(b)]])
        start += len(b)
    return out


class PerceptualGANHead(RoIHead):
    """A RoI head whose ``enhancer`` is a ``Generator``, trained against a ``Discriminator``.

    Eval and detection are ``RoIHead``'s (small RoIs enhanced). In training, ``forward``
    alternates the discriminator step (even ``gan_step``) and the generator step (odd), as
    the module docstring says, and returns the loss dict of that step: ``loss``, ``phase``
    (0 discriminator, 1 generator) and the terms of ``HISTORY_COLUMNS`` that apply.
    ``roi_kwargs`` go to ``RoIHead`` (no relation modules or learned NMS here).
    """

    def __init__(self, width: int, num_classes: int, *, blocks: int = 3,
                 adversarial: bool = True, small_area: float = SMALL_AREA,
                 large_area: float = LARGE_AREA, perception_weight: float = PERCEPTION_WEIGHT,
                 adversarial_weight: float = ADVERSARIAL_WEIGHT, collapse_patience: int = 100,
                 **roi_kwargs) -> None:
        if roi_kwargs.get("relation") or roi_kwargs.get("learned_nms"):
            raise ValueError("PerceptualGANHead takes no relation modules or learned NMS")
        super().__init__(width, num_classes, **roi_kwargs)
        self.enhancer = Generator(width, blocks=blocks, small_area=small_area,
                                  sampling_ratio=self.sampling_ratio)
        self.discriminator = Discriminator(width * self.pool_size ** 2, num_classes,
                                           hidden=self.fc1.out_features)
        self.adversarial, self.small_area, self.large_area = bool(adversarial), \
            float(small_area), float(large_area)
        self.perception_weight, self.adversarial_weight = perception_weight, adversarial_weight
        self.collapse_patience = int(collapse_patience)
        self.register_buffer("gan_step", torch.zeros((), dtype=torch.long))
        self._history: list[list[float]] = []

    @property
    def generator(self) -> Generator:
        return self.enhancer

    # ------------------------------------------------------------------ history
    @property
    def history(self) -> list[dict]:
        """One dict per training step, keys ``HISTORY_COLUMNS`` (NaN: does not apply)."""
        return [dict(zip(HISTORY_COLUMNS, row)) for row in self._history]

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self._history, dtype=torch.float64).reshape(
            -1, len(HISTORY_COLUMNS))

    def set_extra_state(self, state) -> None:
        self._history = torch.as_tensor(state, dtype=torch.float64).tolist()

    def _record(self, terms: dict[str, torch.Tensor]) -> None:
        if torch.is_grad_enabled():  # a training step, not an evaluation of the loss
            row = {k: float(v.detach()) for k, v in terms.items()}
            self._history.append([row.get(c, math.nan) for c in HISTORY_COLUMNS])
            self.gan_step.add_(1)

    def _check_collapse(self) -> None:
        if self.collapse_patience <= 0:
            return
        col = HISTORY_COLUMNS.index("d_acc")
        accs = [r[col] for r in self._history if r[1] == 0 and not math.isnan(r[col])]
        tail = accs[-self.collapse_patience:]
        if len(tail) == self.collapse_patience and (all(a == 1.0 for a in tail)
                                                    or all(a == 0.0 for a in tail)):
            raise GANCollapsed(
                f"the discriminator's accuracy was {tail[-1]:.0f} on the last "
                f"{self.collapse_patience} adversarial steps (up to step "
                f"{int(self.gan_step)}): the generator gets no useful signal. Try a lower "
                f"learning rate, fewer generator blocks, or 'collapse_patience': 0 to train "
                f"on regardless")

    # ------------------------------------------------------------------ the two steps
    def _roles(self, boxes: Sequence[torch.Tensor], targets: Sequence[dict]):
        rois = rois_of(boxes)  # [N, 5]
        fg = torch.cat([self.match(b, t) >= 0 for b, t in zip(boxes, targets)]) if len(rois) \
            else torch.zeros(0, dtype=torch.bool)
        area = box_area(rois[:, 1:])  # [N]
        return rois, fg.to(rois.device), area <= self.small_area, area >= self.large_area

    def _perception(self, x: torch.Tensor, boxes, mask, targets, params=None) -> torch.Tensor:
        """The perception branch's detection loss on the masked RoIs (``params``: frozen)."""
        if params is None:
            logits, deltas = self.discriminator(x[mask], branch="perception")
        else:
            logits, deltas = torch.func.functional_call(
                self.discriminator, params, (x[mask],), {"branch": "perception"})
        return self.loss(logits, deltas, _split(boxes, mask), targets)["loss"]

    def discriminator_step(self, feats: dict, boxes: list[torch.Tensor],
                           targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        """``L_D``: adversarial BCE (real large vs enhanced small, detached) + perception on large."""
        rois, fg, small, large = self._roles(boxes, targets)
        rois = rois.to(next(iter(feats.values())).device)
        pooled = self.pool(feats, boxes)  # [N, C, P, P]
        d = self.discriminator
        loss = d.cls.bias.sum() * 0.0  # a graph even when nothing below applies
        terms = {"phase": torch.tensor(0.0), "step": self.gan_step.float()}
        if large.any():
            l_perc = self._perception(pooled, boxes, large, targets)
            loss = loss + l_perc
            terms["d_perc"] = l_perc.detach()
        real, fake = large & fg, small & fg
        terms.update(n_real=torch.tensor(float(real.sum())),
                     n_fake=torch.tensor(float(fake.sum())))
        if self.adversarial and real.any() and fake.any():
            with torch.no_grad():
                enhanced = self.enhancer(pooled, rois, feats)  # detached: G gets no gradient
            lr_, lf = d(pooled[real]), d(enhanced[fake])  # [n_real], [n_fake] logits
            l_adv = F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_)) + \
                F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
            loss = loss + l_adv
            right = (lr_ > 0).sum() + (lf < 0).sum()
            terms.update(d_adv=l_adv.detach(), d_acc=right.float() / (len(lr_) + len(lf)),
                         d_real=torch.sigmoid(lr_).mean().detach(),
                         d_fake=torch.sigmoid(lf).mean().detach())
        terms["loss"] = loss
        self._record(terms)
        if "d_acc" in terms:
            self._check_collapse()
        return terms

    def generator_step(self, feats: dict, boxes: list[torch.Tensor], is_gt: torch.Tensor,
                       targets: Sequence[dict]) -> dict[str, torch.Tensor]:
        """``L_G``: detection + perception of the enhanced small RoIs (+ adversarial), D frozen."""
        rois, fg, small, _ = self._roles(boxes, targets)
        out = self.run(feats, boxes, key_mask=~is_gt)  # pooled -> enhanced -> FC -> predict
        det = self.loss(out["logits"], out["deltas"], boxes, targets)
        enhanced = out["pooled"]  # [N, C, P, P]
        frozen = {n: p.detach() for n, p in self.discriminator.named_parameters()}
        loss = det["loss"]
        terms = {"phase": torch.tensor(1.0), "step": self.gan_step.float(),
                 "g_det": det["loss"].detach(), "cls": det["cls"], "box": det["box"],
                 "num_pos": det["num_pos"], "n_fake": torch.tensor(float((small & fg).sum()))}
        if small.any():
            l_perc = self._perception(enhanced, boxes, small, targets, params=frozen)
            loss = loss + self.perception_weight * l_perc
            terms["g_perc"] = l_perc.detach()
        fake = small & fg
        if self.adversarial and fake.any():
            lf = torch.func.functional_call(self.discriminator, frozen, (enhanced[fake],))
            l_adv = F.binary_cross_entropy_with_logits(lf, torch.ones_like(lf))
            loss = loss + self.adversarial_weight * l_adv
            terms.update(g_adv=l_adv.detach(), d_fake=torch.sigmoid(lf).mean().detach())
        terms["loss"] = loss
        self._record(terms)
        return terms

    def forward(self, feats: dict[int, torch.Tensor], proposals: Sequence[torch.Tensor],
                targets: Sequence[dict] | None = None, *,
                image_sizes: Sequence[tuple[int, int]] | None = None):
        if not (self.training and targets is not None):
            return super().forward(feats, proposals, targets, image_sizes=image_sizes)
        boxes, is_gt = self.with_gt(proposals, targets)
        if int(self.gan_step) % 2 == 0:
            return self.discriminator_step(feats, boxes, targets)
        return self.generator_step(feats, boxes, is_gt, targets)


__all__ = ["SMALL_AREA", "LARGE_AREA", "PERCEPTION_WEIGHT", "ADVERSARIAL_WEIGHT",
           "HISTORY_COLUMNS", "GANCollapsed", "count_large", "GeneratorBlock", "Generator",
           "Discriminator", "PerceptualGANHead"]
