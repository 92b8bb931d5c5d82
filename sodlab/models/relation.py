"""Object relation module and the learned duplicate removal of Relation Networks.

Hu et al., CVPR 2018, *Relation Networks for Object Detection*. A relation module lets
every object's feature attend to every other object's, weighted by appearance *and*
geometry: for receiver n and other object m, in each of ``heads`` heads,

    w_mn = softmax_m( log(max(w_g(m, n), eps)) + w_a(m, n) ),

i.e. the geometry weight times exp(appearance), normalised over m. ``w_a`` is the scaled
dot product ``<W_Q x_n, W_K x_m> / sqrt(d_k)``; ``w_g = ReLU(W_G E(g_mn))`` where ``g_mn`` is
the pair's relative geometry ``(log(|dx| / w_n), log(|dy| / h_n), log(w_m / w_n),
log(h_m / h_n))`` (centre offsets clamped at 1e-3 before the log) and ``E`` its sinusoidal
embedding to ``d_g`` dims. As in the authors' released code, each coordinate is multiplied by
100 and divided by ``1000^(i / (d_g / 8))`` for ``i < d_g / 8``, giving ``d_g / 8`` sines and as
many cosines per coordinate. (That code writes the two size terms as ``log(w_n / w_m)``;
the sign flip only negates the sines, which the learned ``W_G`` absorbs.) Each head sums the
others' features with its weights and projects them to ``dim / heads`` channels (a linear
map per head, the code's grouped 1x1 convolution); the heads are concatenated and **added**
to the input, so the module is a residual ``[N, C] -> [N, C]``. Its last layer starts small
(std 0.01, as the authors initialise it), so a new module is close to the identity.

``DuplicateRemoval`` replaces NMS (the paper's section 4.3): for one class, the top-N boxes
by score get a rank embedding (sinusoidal, then an FC to ``rank_dim``) added to their RoI
feature (FC to ``rank_dim``); one relation module over them, then one linear + sigmoid per
IoU threshold gives ``s1_t`` (the box is the correct one, not a duplicate, at threshold t).
The final score at test time is ``s0 * mean_t(s1_t)``, ``s0`` being the classifier's score.
``duplicate_targets`` gives the training labels: at each threshold, among the boxes whose
best ground truth is g with IoU >= t, the highest-scoring one is 1, every other box 0. The
loss is binary cross-entropy on ``s0 * s1_t`` (as the released code).

Taught in the notebook on Relation Networks (the second stage of ``sodlab.models.roi_head``).
Shapes: features ``[N, C]``, boxes ``[N, 4]`` xyxy in input pixels, attention weights
``[H, N, M]``, duplicate-removal scores ``[N, T]``.
Dimension legend: N receiving objects, M attended objects (keys; M = N unless masked),
C feature channels, H heads, T IoU thresholds, G ground-truth boxes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

WAVE_LENGTH = 1000.0
GEOMETRY_SCALE = 100.0


def relative_geometry(boxes: torch.Tensor, others: torch.Tensor | None = None,
                      *, min_size: float = 1e-3) -> torch.Tensor:
    """Pairwise ``(log(|dx|/w_n), log(|dy|/h_n), log(w_m/w_n), log(h_m/h_n))``. ``[N, M, 4]``.

    Row n is the receiver (``boxes``), column m the other object (``others``, default
    ``boxes``). Centre offsets are clamped at 1e-3 of the receiver's size before the log
    (the released code's choice); sizes below ``min_size`` px are clamped.
    """
    others = boxes if others is None else others
    wh_n = (boxes[:, 2:] - boxes[:, :2]).clamp(min=min_size)  # [N, 2]
    wh_m = (others[:, 2:] - others[:, :2]).clamp(min=min_size)  # [M, 2]
    c_n = (boxes[:, :2] + boxes[:, 2:]) / 2  # [N, 2]
    c_m = (others[:, :2] + others[:, 2:]) / 2  # [M, 2]
    offset = ((c_m[None] - c_n[:, None]).abs() / wh_n[:, None]).clamp(min=1e-3)  # [N, M, 2]
    size = wh_m[None] / wh_n[:, None]  # [N, M, 2]
    return torch.cat([offset.log(), size.log()], -1)  # [N, M, 4]


def sinusoid(values: torch.Tensor, dim: int, *, scale: float = 1.0,
             wave_length: float = WAVE_LENGTH) -> torch.Tensor:
    """Sines then cosines of ``scale * v / wave_length^(i / (dim / 2))``, ``i < dim / 2``.

    ``values [...]`` -> ``[..., dim]`` (``dim`` even). With ``scale=100`` and ``dim=16`` per
    coordinate this is the released code's geometry embedding; with ``scale=1`` on ranks,
    its rank embedding.
    """
    if dim % 2:
        raise ValueError(f"a sinusoidal embedding needs an even size, got {dim}")
    freq = wave_length ** (torch.arange(dim // 2, dtype=torch.float32,
                                        device=values.device) / (dim // 2))  # [dim/2]
    angle = scale * values.float()[..., None] / freq  # [..., dim/2]
    return torch.cat([angle.sin(), angle.cos()], -1)  # [..., dim]


def geometry_embedding(geometry: torch.Tensor, dim: int) -> torch.Tensor:
    """``[N, M, 4]`` relative geometry -> ``[N, M, dim]``: each coordinate to ``dim / 4`` sinusoids."""
    if dim % 8:
        raise ValueError(f"the geometry embedding size must be a multiple of 8, got {dim}")
    emb = sinusoid(geometry, dim // 4, scale=GEOMETRY_SCALE)  # [N, M, 4, dim/4]
    return emb.flatten(-2)  # [N, M, dim]


class RelationModule(nn.Module):
    """One object relation module: ``x [N, C]``, ``boxes [N, 4]`` -> ``x + relation [N, C]``.

    ``heads`` heads with ``d_k``-dim queries/keys and a ``d_g``-dim geometry embedding;
    ``dim`` must be divisible by ``heads``. ``key_mask [N]`` (bool) restricts the attended
    objects (training leaves the ground-truth boxes added as proposals out, so they cannot
    leak into the others' features); ``embedding`` passes a precomputed
    ``embed_geometry(boxes, key_mask)``; ``return_weights=True`` also returns the weights
    ``[H, N, M]`` over the attended objects (rows sum to 1) for drawing relations.
    """

    def __init__(self, dim: int, *, heads: int = 16, d_k: int = 64, d_g: int = 64,
                 eps: float = 1e-6) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"relation module: dim {dim} is not divisible by {heads} heads")
        if d_g % 8:
            raise ValueError(f"relation module: d_g must be a multiple of 8, got {d_g}")
        self.dim, self.heads, self.d_k, self.d_g, self.eps = dim, heads, d_k, d_g, eps
        self.query = nn.Linear(dim, heads * d_k)
        self.key = nn.Linear(dim, heads * d_k)
        self.geometry = nn.Linear(d_g, heads)
        self.value = nn.Linear(dim, dim)  # head h owns output channels h*C/H ... (h+1)*C/H - 1
        for layer in (self.query, self.key, self.geometry, self.value):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def embed_geometry(self, boxes: torch.Tensor,
                       key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``E(g_mn)`` for receivers ``boxes`` and the attended ones. ``[N, M, d_g]``.

        Modules with the same ``d_g`` over the same boxes can share it (``embedding=``).
        """
        boxes = boxes.float()
        others = boxes if key_mask is None else boxes[key_mask]
        return geometry_embedding(relative_geometry(boxes, others), self.d_g)

    def attention(self, x: torch.Tensor, boxes: torch.Tensor,
                  key_mask: torch.Tensor | None = None, *,
                  embedding: torch.Tensor | None = None) -> torch.Tensor:
        """The relation weights ``[H, N, M]`` over the attended objects (softmax over M)."""
        keys = x if key_mask is None else x[key_mask]
        N, M, H = len(x), len(keys), self.heads
        q = self.query(x).view(N, H, self.d_k).transpose(0, 1)  # [H, N, d_k]
        k = self.key(keys).view(M, H, self.d_k).transpose(0, 1)  # [H, M, d_k]
        w_a = q @ k.transpose(1, 2) / math.sqrt(self.d_k)  # [H, N, M]
        if embedding is None:
            embedding = self.embed_geometry(boxes, key_mask)  # [N, M, d_g]
        w_g = F.relu(self.geometry(embedding)).permute(2, 0, 1)  # [H, N, M]
        return torch.softmax(w_g.clamp(min=self.eps).log() + w_a, dim=-1)  # [H, N, M]

    def forward(self, x: torch.Tensor, boxes: torch.Tensor, *,
                key_mask: torch.Tensor | None = None, embedding: torch.Tensor | None = None,
                return_weights: bool = False):
        N, C, H = len(x), self.dim, self.heads
        keys = x if key_mask is None else x[key_mask]
        if N == 0 or len(keys) == 0:  # nobody to relate to: the residual adds nothing
            w = x.new_zeros(H, N, len(keys))
            return (x, w) if return_weights else x
        w = self.attention(x, boxes, key_mask, embedding=embedding)  # [H, N, M]
        v = self.value(keys).view(len(keys), H, C // H).transpose(0, 1)  # [H, M, C/H]
        rel = (w @ v).transpose(0, 1).reshape(N, C)  # [N, C] heads concatenated
        out = x + rel
        return (out, w) if return_weights else out


def duplicate_targets(boxes: torch.Tensor, scores: torch.Tensor, gt_boxes: torch.Tensor,
                      thresholds=(0.5, 0.6, 0.7, 0.8, 0.9)) -> torch.Tensor:
    """Learned-NMS labels ``[N, T]``: 1 for the best-scoring box of each ground truth, per t.

    Each box belongs to its best-IoU ground truth (``gt_boxes [G, 4]``, one class, crowd
    boxes left out by the caller); at threshold t, among the boxes of ground truth g with
    IoU >= t, the highest-scoring one (ties: lowest index) is 1; every other box is 0.
    """
    N, T = len(boxes), len(thresholds)
    out = torch.zeros(N, T, device=boxes.device)
    if N == 0 or len(gt_boxes) == 0:
        return out
    iou = torchvision.ops.box_iou(boxes.float(), gt_boxes.float())  # [N, G]
    best, owner = iou.max(1)  # [N]
    mine = owner[:, None] == torch.arange(len(gt_boxes), device=boxes.device)[None]  # [N, G]
    for t, thr in enumerate(thresholds):
        cand = mine & (best >= thr)[:, None]  # [N, G]
        s = torch.where(cand, scores.float()[:, None], torch.full_like(iou, -1.0))  # [N, G]
        top, arg = s.max(0)  # [G] first maximum on ties
        out[arg[top >= 0], t] = 1.0
    return out


class DuplicateRemoval(nn.Module):
    """Learned NMS for one class's detections: ``feats [N, D], boxes, scores [N]`` -> ``s1 [N, T]``.

    The top ``first_n`` boxes by score (ties: lowest index) are ranked 0, 1, ...; the rest
    get ``s1 = 0`` (removed). ``final_scores`` gives the test-time score, ``loss`` the BCE.
    """

    def __init__(self, dim: int, *, thresholds=(0.5, 0.6, 0.7, 0.8, 0.9), rank_dim: int = 128,
                 heads: int = 16, d_k: int = 64, d_g: int = 64, first_n: int = 100) -> None:
        super().__init__()
        self.thresholds = tuple(float(t) for t in thresholds)
        self.rank_dim, self.first_n = rank_dim, first_n
        self.rank_fc = nn.Linear(rank_dim, rank_dim)
        self.feat_fc = nn.Linear(dim, rank_dim)
        self.relation = RelationModule(rank_dim, heads=heads, d_k=d_k, d_g=d_g)
        self.logit = nn.Linear(rank_dim, len(self.thresholds))
        for layer in (self.rank_fc, self.feat_fc, self.logit):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, feats: torch.Tensor, boxes: torch.Tensor,
                scores: torch.Tensor) -> torch.Tensor:
        N, T = len(feats), len(self.thresholds)
        out = feats.new_zeros(N, T)
        if N == 0:
            return out
        order = torch.sort(scores.detach(), descending=True, stable=True).indices
        top = order[:self.first_n]  # [N'] rank r sits at top[r]
        ranks = torch.arange(len(top), device=feats.device)
        x = self.feat_fc(feats[top]) + self.rank_fc(sinusoid(ranks, self.rank_dim))  # [N', R]
        x = F.relu(self.relation(x, boxes[top].detach()))  # [N', R]
        out[top] = torch.sigmoid(self.logit(x))  # [N', T]
        return out

    @staticmethod
    def final_scores(s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        """Test-time score ``s0 * mean_t(s1_t)``. ``[N]``."""
        return s0 * s1.mean(1)

    @staticmethod
    def loss(s0: torch.Tensor, s1: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean binary cross-entropy of ``s0 * s1_t`` against ``target [N, T]``."""
        if s1.numel() == 0:
            return s1.sum()
        p = (s0[:, None] * s1).clamp(1e-6, 1 - 1e-6)  # [N, T]
        return F.binary_cross_entropy(p, target)
