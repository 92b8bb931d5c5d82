"""The dense prediction head: class and box towers shared across levels, outputs per level.

RetinaNet-style: the towers (3x3 conv + ReLU, ``depth`` of them) are shared by every level;
the last convs are per level, since levels may carry different numbers of anchors (SSH has
two sizes per level, a dense level more). The class bias starts at the prior probability
0.01 (RetinaNet), so the focal loss does not drown in easy negatives at step 0; with a
softmax the background score starts at probability 0.99 for the same reason (and so an
untrained model is not timed on thousands of 50 % boxes).
With ``maxout`` (S3FD's max-out background label, softmax only), a level predicts
``1 + extra`` background scores per anchor and keeps their maximum, so the many small,
easy negatives of the finest level are fought by several filters. ``maxin`` does the same
for every foreground class (PyramidBox's max-in-out, Tang et al. 2018: its finest level
predicts 1 face and 3 background scores, every other level 3 face and 1 background score);
the per-anchor channels are ``[background x (1 + maxout), class 1 x (1 + maxin), class 2 x
(1 + maxin), ...]`` and each group is reduced by its maximum, background at index 0 as a
softmax expects. With no extra scores (counts 1/1) a level is the plain head.
``ContextClassifier`` adds PyramidAnchors' head and body scores (two-way softmax per branch),
used in training only. Taught in notebooks 03 and 06.

Shapes: ``{stride: [B, C, H, W]}`` -> per level ``cls [B, H*W*A, K']`` and ``box [B, H*W*A, 4]``,
ordered (row, column, anchor) like ``sodlab.anchors.anchors_for_level``.
Dimension legend: B batch, C width, A anchors per cell, K' class outputs (K, or K + 1 for
softmax with background), R context branches (head, body).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self, width: int, anchors_per_level: dict[int, int], num_outputs: int, *,
                 depth: int = 1, prior: float | None = 0.01,
                 maxout: dict[int, int] | None = None,
                 background_prior: float | None = None,
                 maxin: dict[int, int] | None = None) -> None:
        super().__init__()
        self.k = num_outputs
        self.maxout = {int(s): int(n) for s, n in (maxout or {}).items() if n > 0}
        self.maxin = {int(s): int(n) for s, n in (maxin or {}).items() if n > 0}
        if self.maxin and num_outputs < 2:
            raise ValueError("maxin needs a background output and at least one class")

        def tower() -> nn.Sequential:
            layers = []
            for _ in range(depth):
                layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls = nn.ModuleDict({str(s): nn.Conv2d(width, a * self._channels(s), 3, padding=1)
                                  for s, a in anchors_per_level.items()})
        self.box = nn.ModuleDict({str(s): nn.Conv2d(width, a * 4, 3, padding=1)
                                  for s, a in anchors_per_level.items()})
        for conv in [*self.cls.values(), *self.box.values()]:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        if prior is not None:
            for conv in self.cls.values():
                nn.init.constant_(conv.bias, -math.log((1 - prior) / prior))
        if background_prior is not None:  # softmax: background starts at this probability
            for s, conv in self.cls.items():
                k = self._channels(int(s))
                bias = conv.bias.detach().view(-1, k)  # [A, K'+extra]
                bias[:, :1 + self.maxout.get(int(s), 0)] = math.log(
                    background_prior / (1 - background_prior) * (num_outputs - 1))

    def _channels(self, stride: int) -> int:
        """Class channels per anchor at a level: K' plus the extra max-out / max-in scores."""
        return self.k + self.maxout.get(stride, 0) + (self.k - 1) * self.maxin.get(stride, 0)

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        out = {}
        for s, f in feats.items():
            B = f.shape[0]
            c = self.cls[str(s)](self.cls_tower(f))  # [B, A*K', H, W]
            b = self.box[str(s)](self.box_tower(f))  # [B, A*4, H, W]
            extra = self.maxout.get(s, 0)
            c = c.permute(0, 2, 3, 1).reshape(B, -1, self._channels(s))  # [B, H*W*A, K'+extra]
            if extra:
                bg = c[..., :1 + extra].max(-1, keepdim=True).values  # [B, H*W*A, 1]
                c = torch.cat([bg, c[..., 1 + extra:]], -1)  # [B, H*W*A, K' + fg extra]
            fg_extra = self.maxin.get(s, 0)
            if fg_extra:
                fg = c[..., 1:].unflatten(-1, (self.k - 1, 1 + fg_extra))  # [B, H*W*A, K'-1, n]
                c = torch.cat([c[..., :1], fg.max(-1).values], -1)  # [B, H*W*A, K']
            out[s] = (c, b.permute(0, 2, 3, 1).reshape(B, -1, 4))
        return out


class ContextClassifier(nn.Module):
    """PyramidAnchors' extra scores: per level one 3x3 conv giving, per anchor and branch
    (head, body), a background and a context logit (two-way softmax, background at 0).

    Shapes: ``{stride: [B, C, H, W]}`` -> ``{stride: [B, H*W*A, R, 2]}``, anchors ordered as
    the head's. The background bias starts at ``background_prior`` like the softmax head.
    """

    def __init__(self, width: int, anchors_per_level: dict[int, int], *, branches: int = 2,
                 background_prior: float = 0.99) -> None:
        super().__init__()
        self.branches = int(branches)
        self.cls = nn.ModuleDict({str(s): nn.Conv2d(width, a * self.branches * 2, 3, padding=1)
                                  for s, a in anchors_per_level.items()})
        for conv in self.cls.values():
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
            bias = conv.bias.detach().view(-1, 2)  # [A*R, 2]
            bias[:, 0] = math.log(background_prior / (1 - background_prior))

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        out = {}
        for s, f in feats.items():
            c = self.cls[str(s)](f)  # [B, A*R*2, H, W]
            out[s] = c.permute(0, 2, 3, 1).reshape(f.shape[0], -1, self.branches, 2)
        return out
