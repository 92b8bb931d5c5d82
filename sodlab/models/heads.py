"""The dense prediction head: class and box towers shared across levels, outputs per level.

RetinaNet-style: the towers (3x3 conv + ReLU, ``depth`` of them) are shared by every level;
the last convs are per level, since levels may carry different numbers of anchors (SSH has
two sizes per level, a dense level more). The class bias starts at the prior probability
0.01 (RetinaNet), so the focal loss does not drown in easy negatives at step 0.
Taught in notebook 03.

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
                 depth: int = 1, prior: float | None = 0.01) -> None:
        super().__init__()
        self.k = num_outputs

        def tower() -> nn.Sequential:
            layers = []
            for _ in range(depth):
                layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.cls_tower, self.box_tower = tower(), tower()
        self.cls = nn.ModuleDict({str(s): nn.Conv2d(width, a * num_outputs, 3, padding=1)
                                  for s, a in anchors_per_level.items()})
        self.box = nn.ModuleDict({str(s): nn.Conv2d(width, a * 4, 3, padding=1)
                                  for s, a in anchors_per_level.items()})
        for conv in [*self.cls.values(), *self.box.values()]:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        if prior is not None:
            for conv in self.cls.values():
                nn.init.constant_(conv.bias, -math.log((1 - prior) / prior))

    def forward(self, feats: dict[int, torch.Tensor]) -> dict[int, tuple[torch.Tensor,
                                                                          torch.Tensor]]:
        out = {}
        for s, f in feats.items():
            B = f.shape[0]
            c = self.cls[str(s)](self.cls_tower(f))  # [B, A*K', H, W]
            b = self.box[str(s)](self.box_tower(f))  # [B, A*4, H, W]
            out[s] = (c.permute(0, 2, 3, 1).reshape(B, -1, self.k),
                      b.permute(0, 2, 3, 1).reshape(B, -1, 4))
        return out
