"""Receptive fields: the theoretical one from a model's own graph, and the effective one.

The theoretical receptive field (RF) of a unit is the set of input pixels that can change
it. Along each axis it is described by three numbers, propagated layer by layer:

    r_out     = r_in + (k - 1) * d * j_in          (size, input pixels)
    j_out     = j_in * s                           (jump: input pixels between units)
    start_out = start_in + ((k - 1) / 2 * d - p) * j_in   (centre of unit 0's RF)

for a convolution or pooling with kernel k, stride s, padding p, dilation d. Where branches
merge (``+``, ``*``, ``torch.cat``) the RF of a unit is the union of its inputs' RFs (the
max when the branches are centred alike). Upsampling by a factor f (``F.interpolate``,
``nn.Upsample``) divides the jump by f and moves unit 0's centre to
``start_in + (0.5 / f - 0.5) * j_in`` (the ``align_corners=False`` mapping); nearest keeps
the size (an output unit copies one input unit; its true centre alternates within
``j_in / 4`` of that line for f = 2), bilinear adds one input step, bicubic three.
``receptive_fields`` runs the model once on zeros under a ``TorchFunctionMode`` that sees
every tensor operation (modules, ``torch.nn.functional`` calls, Python control flow and
dict outputs alike) and names each module's output.

The effective receptive field (ERF; Luo et al. 2016, "Understanding the Effective
Receptive Field in Deep Convolutional Neural Networks") is |d unit / d input| averaged over
inputs: roughly Gaussian and much smaller than the theoretical RF; it grows with training.
Taught in notebook 04_ssh_receptive_fields.

Coordinates are continuous pixels (``docs/design.md``): input pixel u covers [u, u + 1) and its
centre is u + 0.5, so the input itself has ``RF(size=1, jump=1, start=0.5)``. Per-axis
values are ``(y, x)`` pairs. Shapes: input ``[B, C, H, W]``; a feature ``[B, C', h, w]``;
an ERF heatmap ``[H, W]``.

Dimension legend: B batch, C channels, H W input height/width, h w feature height/width,
A anchors at one cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from sodlab.errors import InputError

Pair = tuple[float, float]


@dataclass(frozen=True)
class RF:
    """Theoretical receptive field of one feature map, per axis ``(y, x)`` in input pixels."""

    size: Pair   # side of a unit's RF
    jump: Pair   # distance between neighbouring units' RF centres
    start: Pair  # centre of unit (0, 0)'s RF
    shape: tuple[int, int] = (0, 0)  # (h, w) of the feature map it was measured on

    def __post_init__(self) -> None:
        for name in ("size", "jump", "start"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))

    def centre(self, row: int, col: int) -> Pair:
        """Centre (y, x) of unit (row, col)'s RF in input pixels."""
        return (self.start[0] + row * self.jump[0], self.start[1] + col * self.jump[1])

    def box(self, row: int, col: int) -> tuple[float, float, float, float]:
        """Unit (row, col)'s RF as an xyxy box in input pixels (may extend past the image)."""
        cy, cx = self.centre(row, col)
        return (cx - self.size[1] / 2, cy - self.size[0] / 2,
                cx + self.size[1] / 2, cy + self.size[0] / 2)

    def unit_at(self, x: float, y: float) -> tuple[int, int]:
        """(row, col) of the unit whose RF centre is nearest input point (x, y), clamped."""
        row = round((y - self.start[0]) / self.jump[0])
        col = round((x - self.start[1]) / self.jump[1])
        h, w = self.shape
        return (min(max(row, 0), max(h - 1, 0)), min(max(col, 0), max(w - 1, 0)))


def _pair(v) -> Pair:
    return (v, v) if isinstance(v, (int, float)) else (v[0], v[-1])


def _arg(args, kwargs, i: int, name: str, default):
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def _kernel_rf(rf: RF, k: Pair, s: Pair, p: Pair, d: Pair, shape) -> RF:
    """The rule for a sliding window (convolution or pooling)."""
    return RF(size=tuple(rf.size[a] + (k[a] - 1) * d[a] * rf.jump[a] for a in (0, 1)),
              jump=tuple(rf.jump[a] * s[a] for a in (0, 1)),
              start=tuple(rf.start[a] + ((k[a] - 1) / 2 * d[a] - p[a]) * rf.jump[a]
                          for a in (0, 1)),
              shape=shape)


def _union(rfs: list[RF], shape) -> RF:
    """Union of the RFs of unit (0, 0) of same-sized branches; jump of the finest branch."""
    size, start, jump = [], [], []
    for a in (0, 1):
        lo = min(r.start[a] - r.size[a] / 2 for r in rfs)
        hi = max(r.start[a] + r.size[a] / 2 for r in rfs)
        size.append(hi - lo)
        start.append((lo + hi) / 2)
        spread = [r for r in rfs if r.shape[a] > 1] or rfs  # a broadcast 1-wide map has no step
        jump.append(min(r.jump[a] for r in spread))
    return RF(size=tuple(size), jump=tuple(jump), start=tuple(start), shape=shape)


_UPSAMPLE_EXTRA = {"nearest": 0, "nearest-exact": 0, "area": 0, "bilinear": 1, "bicubic": 3}


def _op_rf(name: str, args, kwargs, rf: RF, in_hw, out_hw) -> RF | None:
    """RF after op ``name`` on an input with RF ``rf``; None when the op is not a window op."""
    if name == "conv2d":
        weight = _arg(args, kwargs, 1, "weight", None)
        k = tuple(weight.shape[-2:])
        pad = _arg(args, kwargs, 4, "padding", 0)
        d = _pair(_arg(args, kwargs, 5, "dilation", 1))
        if pad == "valid":
            pad = 0
        elif pad == "same":
            pad = tuple((k[a] - 1) * d[a] / 2 for a in (0, 1))
        return _kernel_rf(rf, k, _pair(_arg(args, kwargs, 3, "stride", 1)), _pair(pad), d, out_hw)
    if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
        k = _pair(_arg(args, kwargs, 1, "kernel_size", 1))
        s = _arg(args, kwargs, 2, "stride", None)
        s = k if s is None or s == [] or s == () else _pair(s)
        d = _pair(_arg(args, kwargs, 4, "dilation", 1)) if name != "avg_pool2d" else (1, 1)
        return _kernel_rf(rf, k, s, _pair(_arg(args, kwargs, 3, "padding", 0)), d, out_hw)
    if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
        # each output unit pools a window of at most ceil(n / m) units; windows step n / m
        k = tuple(-(-in_hw[a] // out_hw[a]) for a in (0, 1))
        s = tuple(in_hw[a] / out_hw[a] for a in (0, 1))
        return _kernel_rf(rf, k, s, (0, 0), (1, 1), out_hw)
    if name == "conv_transpose2d":
        weight = _arg(args, kwargs, 1, "weight", None)
        k = tuple(weight.shape[-2:])
        s = _pair(_arg(args, kwargs, 3, "stride", 1))
        p = _pair(_arg(args, kwargs, 4, "padding", 0))
        d = _pair(_arg(args, kwargs, 7, "dilation", 1))
        return RF(size=tuple(rf.size[a] + (-(-k[a] // s[a]) - 1) * rf.jump[a] for a in (0, 1)),
                  jump=tuple(rf.jump[a] / s[a] for a in (0, 1)),
                  start=tuple(rf.start[a] + (p[a] - (k[a] - 1) / 2 * d[a]) / s[a] * rf.jump[a]
                              for a in (0, 1)),
                  shape=out_hw)
    if name == "interpolate":
        mode = _arg(args, kwargs, 3, "mode", "nearest")
        if mode not in _UPSAMPLE_EXTRA:
            return None
        sf = _arg(args, kwargs, 2, "scale_factor", None)
        f = _pair(sf) if sf is not None else tuple(out_hw[a] / in_hw[a] for a in (0, 1))
        extra = _UPSAMPLE_EXTRA[mode]
        if mode == "area":  # adaptive average pooling in disguise
            return _op_rf("adaptive_avg_pool2d", (), {}, rf, in_hw, out_hw)
        return RF(size=tuple(rf.size[a] + extra * rf.jump[a] for a in (0, 1)),
                  jump=tuple(rf.jump[a] / f[a] for a in (0, 1)),
                  start=tuple(rf.start[a] + (0.5 / f[a] - 0.5) * rf.jump[a] for a in (0, 1)),
                  shape=out_hw)
    if name in ("pad", "_pad"):
        pad = list(_arg(args, kwargs, 1, "pad", ())) + [0, 0, 0, 0]
        left, top = pad[0], pad[2]
        return RF(size=rf.size, jump=rf.jump, shape=out_hw,
                  start=(rf.start[0] - top * rf.jump[0], rf.start[1] - left * rf.jump[1]))
    return None


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _named(prefix: str, obj) -> list[tuple[str, torch.Tensor]]:
    """Name the tensors of a module output: ``name``, ``name.0``, ``name.key``."""
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    items = (obj.items() if isinstance(obj, dict)
             else enumerate(obj) if isinstance(obj, (list, tuple)) else ())
    return [nt for k, o in items for nt in _named(f"{prefix}.{k}", o)]


class _RFTracer(TorchFunctionMode):
    """Records an RF for every spatial tensor computed from the traced input."""

    def __init__(self) -> None:
        super().__init__()
        self.rf: dict[int, RF] = {}
        self.keep: list[torch.Tensor] = []  # keeps ids unique while tracing

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        ins = [t for t in _tensors((args, kwargs)) if id(t) in self.rf and t.dim() >= 3]
        outs = [t for t in _tensors(out) if t.dim() >= 3]
        if not ins or not outs:
            return out
        in_hw = tuple(ins[0].shape[-2:])
        for t in outs[:1] if name == "max_pool2d_with_indices" else outs:
            hw = tuple(t.shape[-2:])
            rf = _op_rf(name, args, kwargs, self.rf[id(ins[0])], in_hw, hw)
            if rf is None:  # element-wise, normalisation, concatenation: union of the inputs
                same = [self.rf[id(i)] for i in ins
                        if all(i.shape[-2 + a] in (hw[a], 1) for a in (0, 1))]
                if not same or all(i.shape[-2:] != t.shape[-2:] for i in ins):
                    continue  # spatial layout changed by an op we do not model: untracked
                rf = _union(same, hw)
            self.rf[id(t)] = rf
            self.keep.append(t)
        return out


def receptive_fields(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 256, 256)
                     ) -> dict[str, RF]:
    """Theoretical RF (size, jump, start per axis) of every module output of ``model``.

    Keys are module names as in ``model.named_modules()``, ``name.0`` / ``name.key`` for
    tuple / dict outputs, ``name@2`` for a module's second call, ``"input"`` and ``"output"``
    (the model's own return value). Outputs without a spatial layout tied to the input (a
    flattened head, a box list) are left out. The model runs once on zeros in ``eval()``
    mode under ``torch.no_grad()``; its training mode is restored afterwards.
    """
    if len(input_shape) != 4:
        raise InputError(f"input_shape must be (B, C, H, W), got {tuple(input_shape)}")
    param = next(iter(model.parameters()), None)
    x = torch.zeros(input_shape, dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else "cpu")  # [B, C, H, W]
    tracer = _RFTracer()
    tracer.rf[id(x)] = RF(size=(1, 1), jump=(1, 1), start=(0.5, 0.5),
                          shape=tuple(input_shape[-2:]))
    result: dict[str, RF] = {"input": tracer.rf[id(x)]}
    calls: dict[str, int] = {}

    def hook(name: str):
        def record(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}@{calls[name]}"
            for n, t in _named(key, output):
                if id(t) in tracer.rf:
                    result[n] = tracer.rf[id(t)]
        return record

    handles = [m.register_forward_hook(hook(n or "output")) for n, m in model.named_modules()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tracer:
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return result


def _select(out, layer: str | None) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if layer not in out:
            raise InputError(f"layer {layer!r} is not among the feature function's outputs "
                             f"{sorted(out)}")
        return out[layer]
    raise InputError(f"the feature function returned {type(out).__name__}, "
                     "expected a tensor or a dict of tensors")


def effective_rf(feature_fn: Callable[[torch.Tensor], torch.Tensor | dict],
                 image_or_shape: torch.Tensor | tuple[int, ...], *, layer: str | None = None,
                 position: tuple[int, int] | None = None, n_samples: int = 8,
                 seed: int = 0, batch_size: int = 4) -> torch.Tensor:
    """Effective RF of one unit: mean |d unit / d input| over inputs, normalised to sum 1.

    ``feature_fn`` maps ``[B, C, H, W]`` to a feature ``[B, C', h, w]`` or a dict of them
    (``layer`` picks one); put the model in ``eval()`` so samples do not mix through
    batch statistics. The unit is the sum over channels at ``position = (row, col)``
    (default the centre unit ``(h // 2, w // 2)``). ``image_or_shape``: an image ``[C, H, W]``
    or ``[1, C, H, W]`` (its gradient alone), or a shape ``(C, H, W)`` / ``(B, C, H, W)``
    for ``n_samples`` uniform random images from ``seed``. Returns ``[H, W]``, summed over
    input channels.
    """
    if isinstance(image_or_shape, torch.Tensor):
        images = image_or_shape if image_or_shape.dim() == 4 else image_or_shape[None]
        images = images.detach().float()  # [1, C, H, W]
        if images.dim() != 4:
            raise InputError(f"image must be [C, H, W] or [B, C, H, W], got {tuple(images.shape)}")
    else:
        shape = tuple(image_or_shape)[-3:]
        if len(shape) != 3:
            raise InputError(f"shape must be (C, H, W) or (B, C, H, W), got {image_or_shape}")
        g = torch.Generator().manual_seed(seed)
        images = torch.rand((n_samples, *shape), generator=g)  # [N, C, H, W]
    param = next(iter(getattr(feature_fn, "parameters", lambda: iter(()))()), None)
    device = param.device if param is not None else images.device
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)  # [H, W]
    for chunk in images.split(batch_size):
        x = chunk.to(device).requires_grad_(True)  # [b, C, H, W]
        feat = _select(feature_fn(x), layer)  # [b, C', h, w]
        if feat.dim() != 4:
            raise InputError(f"layer {layer!r} is not a feature map [B, C, h, w]: "
                             f"{tuple(feat.shape)}")
        row, col = position if position is not None else (feat.shape[-2] // 2,
                                                          feat.shape[-1] // 2)
        if not (0 <= row < feat.shape[-2] and 0 <= col < feat.shape[-1]):
            raise InputError(f"position {(row, col)} is outside the {tuple(feat.shape[-2:])} "
                             f"feature map of {layer!r}")
        (grad,) = torch.autograd.grad(feat[:, :, row, col].sum(), x)  # [b, C, H, W]
        total += grad.abs().sum(dim=(0, 1)).double().cpu()
    mass = total.sum()
    return (total / mass if mass > 0 else total).float()


def erf_centre(heatmap: torch.Tensor) -> Pair:
    """Centre of mass (y, x) of a heatmap ``[H, W]`` in input pixels (pixel centres u + 0.5)."""
    h = heatmap.double()
    total = h.sum().clamp_min(1e-300)
    ys = torch.arange(h.shape[0], dtype=torch.float64) + 0.5
    xs = torch.arange(h.shape[1], dtype=torch.float64) + 0.5
    return (float((h.sum(1) * ys).sum() / total), float((h.sum(0) * xs).sum() / total))


def erf_radius(heatmap: torch.Tensor, mass: float = 0.95,
               centre: Pair | None = None) -> float:
    """Half-side of the smallest square centred at ``centre`` holding ``mass`` of the heatmap.

    The square of radius r spans ``[c - r, c + r]`` per axis and holds whole pixels (r = 0.5
    around a pixel centre is that pixel alone; its side is 2r). ``centre`` (y, x) in input
    pixels defaults to the centre of mass. Returns r in pixels.
    """
    if not 0 < mass <= 1:
        raise InputError(f"mass must be in (0, 1], got {mass}")
    h = heatmap.double().clamp_min(0)  # [H, W]
    cy, cx = centre if centre is not None else erf_centre(h)
    dy = (torch.arange(h.shape[0], dtype=torch.float64) + 0.5 - cy).abs()
    dx = (torch.arange(h.shape[1], dtype=torch.float64) + 0.5 - cx).abs()
    cheb = torch.maximum(dy[:, None], dx[None, :]).flatten()  # [H*W] distance to the centre
    order = cheb.argsort()
    cum = h.flatten()[order].cumsum(0)
    need = mass * cum[-1] - 1e-12 * cum[-1]
    i = int(torch.searchsorted(cum, need.reshape(1)).clamp_max(len(cum) - 1))
    return float(cheb[order[i]]) + 0.5


def plot_rf(heatmap: torch.Tensor, rf: RF, anchor_sizes: list[int], position: tuple[int, int],
            ax=None, *, image: torch.Tensor | None = None, mass: float = 0.95,
            anchor_centre: Pair | None = None, title: str | None = None):
    """Draw an ERF heatmap ``[H, W]`` with unit ``position``'s theoretical RF and anchors.

    Solid white: the theoretical RF square; dashed cyan: the smallest centred square holding
    ``mass`` of the ERF; orange: square anchors of ``anchor_sizes`` centred at
    ``anchor_centre`` (y, x; default the RF centre). ``image`` ``[3, H, W]`` in [0, 1] is
    shown underneath. Returns the matplotlib Axes.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if ax is None:
        ax = Figure(figsize=(4.5, 4.5)).add_subplot()
    hm = heatmap.detach().float().cpu()
    if image is not None:
        ax.imshow(image.detach().permute(1, 2, 0).clamp(0, 1).cpu().numpy(),
                  extent=(0, hm.shape[1], hm.shape[0], 0))
        ax.imshow(hm.numpy(), cmap="magma", alpha=0.6, extent=(0, hm.shape[1], hm.shape[0], 0))
    else:
        ax.imshow(hm.numpy(), cmap="magma", extent=(0, hm.shape[1], hm.shape[0], 0))
    x1, y1, x2, y2 = rf.box(*position)
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="white", lw=1.5,
                           label=f"theoretical RF {rf.size[1]:g} px"))
    cy, cx = rf.centre(*position)
    if float(hm.sum()) > 0:
        r = erf_radius(hm, mass, centre=(cy, cx))
        ax.add_patch(Rectangle((cx - r, cy - r), 2 * r, 2 * r, fill=False, color="cyan",
                               ls="--", lw=1.2, label=f"ERF {mass:.0%} mass: {2 * r:g} px"))
    ay, ax_ = anchor_centre if anchor_centre is not None else (cy, cx)
    for i, s in enumerate(anchor_sizes):
        ax.add_patch(Rectangle((ax_ - s / 2, ay - s / 2), s, s, fill=False, color="orange",
                               lw=1.0, label="anchors " + ", ".join(map(str, anchor_sizes))
                               if i == 0 else None))
    ax.plot([cx], [cy], "+", color="white")
    ax.set_xlim(0, hm.shape[1])
    ax.set_ylim(hm.shape[0], 0)
    ax.legend(loc="lower left", fontsize=7, framealpha=0.6)
    if title:
        ax.set_title(title, fontsize=9)
    return ax
