"""Detection losses: sigmoid focal loss, softmax cross-entropy with 3:1 hard-negative mining, box loss.

RetinaNet (Lin et al. 2017) uses the focal loss over all non-ignored anchors; SSD, S3FD and
FaceBoxes use softmax with hard-negative mining (at most 3 negatives per positive, the
highest-loss ones). Both are normalised by the number of positive anchors (at least 1).
Taught in notebooks 03 and 06.

Shapes: logits ``[M, K]`` (focal) or ``[M, K + 1]`` with background at index 0 (softmax),
targets ``[M]`` int64 with -1 for background, deltas ``[P, 4]``.
Dimension legend: M anchors that count, K classes, P positive anchors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, num_pos: float, *,
               alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss; ``labels`` -1 = background, else the class index. Sum / num_pos."""
    target = torch.zeros_like(logits)  # [M, K]
    pos = labels >= 0
    target[pos, labels[pos]] = 1.0
    loss = torchvision.ops.sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma,
                                              reduction="sum")
    return loss / max(num_pos, 1.0)


def softmax_ohem_loss(logits: torch.Tensor, labels: torch.Tensor, num_pos: float, *,
                      neg_ratio: float = 3.0) -> torch.Tensor:
    """Cross-entropy over positives and the hardest ``neg_ratio`` x positives negatives."""
    target = labels + 1  # background -> 0
    ce = F.cross_entropy(logits, target, reduction="none")  # [M]
    pos = target > 0
    n_neg = int(min(max(neg_ratio * int(pos.sum()), neg_ratio), int((~pos).sum())))
    neg_loss = ce.masked_fill(pos, -1.0)
    hard = torch.topk(neg_loss, n_neg).indices if n_neg > 0 else neg_loss.new_zeros(0).long()
    return (ce[pos].sum() + ce[hard].sum()) / max(num_pos, 1.0)


def box_loss(pred: torch.Tensor, target: torch.Tensor, num_pos: float, *,
             beta: float = 1.0 / 9) -> torch.Tensor:
    """Smooth-L1 on regression deltas of positive anchors, summed / num_pos."""
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum") / max(num_pos, 1.0)
