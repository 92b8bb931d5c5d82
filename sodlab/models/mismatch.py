"""CNN-B and CNN-S: the two crop classifiers of SNIP's train/test resolution-mismatch experiment.

Singh & Davis 2018 (SNIP), section 3: a network trained on high-resolution images (CNN-B)
loses accuracy on down-sampled-then-up-sampled test images; one trained at the low
resolution with a smaller first stride (CNN-S) does better there; CNN-B fine-tuned on
up-sampled low-resolution images (CNN-B-FT) does best. Our crops are 32 x 32 faces vs
background instead of 224 x 224 ImageNet images, so the first layers shrink with them.
Taught in notebook 05_snip_sniper.

Shapes: ``x [B, 3, S, S]`` -> logits ``[B, num_classes]``.
Dimension legend: B batch, S crop side, C channels.
"""

from __future__ import annotations

from torch import nn


def _block(cin: int, cout: int, *, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def build_cnn_b(*, num_classes: int = 2, width: int = 32) -> nn.Module:
    """CNN-B: made for 32 px crops; a 5x5 stride-2 first layer (the paper: 7x7, stride 2)."""
    return nn.Sequential(
        _block(3, width, k=5, stride=2),  # [B, C, S/2, S/2]
        _block(width, width),
        _block(width, 2 * width, stride=2),  # [B, 2C, S/4, S/4]
        _block(2 * width, 2 * width),
        _block(2 * width, 4 * width, stride=2),  # [B, 4C, S/8, S/8]
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


def build_cnn_s(*, num_classes: int = 2, width: int = 32) -> nn.Module:
    """CNN-S: made for low-resolution crops (8-16 px); a 3x3 stride-1 first layer, fewer strides."""
    return nn.Sequential(
        _block(3, width, k=3, stride=1),  # [B, C, s, s]
        _block(width, 2 * width),
        _block(2 * width, 2 * width, stride=2),  # [B, 2C, s/2, s/2]
        _block(2 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))
