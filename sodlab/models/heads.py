"""The dense prediction head: class and box towers shared across levels, outputs per level.

RetinaNet-style: the towers (3x3 conv + ReLU, ``depth`` of them) are shared by every level;
the last convs are per level, since levels may carry different numbers of anchors (SSH has
two sizes per level, a dense level more). The class bias starts at the prior probability
0.01 (RetinaNet), so the focal loss does not drown in easy negatives at step 0; with a
softmax the background score starts at probability 0.99 for the same reason (and so an
untrained model is not timed on thousands of 50 % boxes).
With ``maxout`` (S3FD's max-out background label, softmax only), a level predicts
``1 + extra`` background scores per anchor and keeps their maximum, so the many small,
easy negatives of the finest level are fought by several filters. Taught in notebooks 03
and 06.

Shapes: ``{stride: [B, C, H, W]}`` -> per level ``cls [B, H*W*A, K']`` and ``box [B, H*W*A, 4]``,
ordered (row, column, anchor) like ``sodlab.anchors.anchors_for_level``.
Dimension legend: B batch, C width, A anchors per cell, K' class outputs (K, or K + 1 for
softmax with background).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Head(nn.Module):
    def __init__(self, width: int, anchors_per_level: dict[int, int], num_outputs: int, *,
                 depth: int = 1, prior: float | None = 0.01,
                 maxout: dict[int, int] | None = None,
                 background_prior: float | None = None) -> None:
        super().__init__()
        self.k = num_outputs
        self.maxout = {int(s): int(n) for s, n in (maxout or {}).items() if n > 0}

        def tower() -> nn.Sequential:
            layers = []
            for _ in range(depth):
                layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls = nn.ModuleDict({str(s): nn.Conv2d(width, a * (num_outputs
                                                                 + self.maxout.get(s, 0)),
                                                    3, padding=1)
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
                k = num_outputs + self.maxout.get(int(s), 0)
                bias = conv.bias.detach().view(-1, k)  # [A, K'+extra]
                bias[:, :1 + self.maxout.get(int(s), 0)] = math.log(
                    background_prior / (1 - background_prior) * (num_outputs - 1))

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        out = {}
        for s, f in feats.items():
            B = f.shape[0]
            c = self.cls[str(s)](self.cls_tower(f))  # [B, A*K', H, W]
            b = self.box[str(s)](self.box_tower(f))  # [B, A*4, H, W]
            extra = self.maxout.get(s, 0)
            c = c.permute(0, 2, 3, 1).reshape(B, -1, self.k + extra)  # [B, H*W*A, K'+extra]
            if extra:
                bg = c[..., :1 + extra].max(-1, keepdim=True).values  # [B, H*W*A, 1]
                c = torch.cat([bg, c[..., 1 + extra:]], -1)  # [B, H*W*A, K']
            out[s] = (c, b.permute(0, 2, 3, 1).reshape(B, -1, 4))
        return out
