"""Numeric precision of training: bf16 autocast + channels-last where the CPU is fast at it, else fp32.

Layer L4. ``precision`` is ``"auto"``, ``"bf16"`` or ``"fp32"``:

- ``"fp32"``: float32 everywhere, NCHW tensors (the reference path; every CPU has it).
- ``"bf16"``: the model's weights and activations in channels-last memory format and its
  forward pass under ``torch.autocast(device, torch.bfloat16)``: convolutions and matrix
  products run in bfloat16, the optimizer keeps float32 weights, and the detector casts its
  head outputs back to float32 before matching, the loss and decoding.
- ``"auto"``: ``"bf16"`` only where bf16 is fast — an x86 CPU with AVX-512-BF16 or AMX (read
  from ``/proc/cpuinfo``) or a CUDA GPU that supports it — else ``"fp32"``. On a laptop
  without those instructions bf16 would be emulated and slower than fp32, so it stays fp32.

The resolved value (never ``"auto"``) is part of a run's cache key and its config.json, so
a model trained in bf16 and one trained in fp32 are different runs. ``sodlab bench --only
train_speed`` measures both paths side by side. Taught in notebook 03_fpn.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from sodlab.errors import InputError

PRECISIONS = ("auto", "bf16", "fp32")
_FAST_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when this CPU advertises AVX-512-BF16 or AMX-BF16 (Linux ``/proc/cpuinfo``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(f in flags for f in _FAST_FLAGS)


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """``"bf16"`` or ``"fp32"`` for ``precision`` on ``device``; InputError for other values."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dev = torch.device(device)
    if precision != "auto":
        return precision
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if dev.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def autocast(precision: str, device: torch.device | str = "cpu"):
    """The forward-pass context of a resolved precision (a no-op context for fp32)."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(precision: str) -> torch.memory_format:
    """channels-last for bf16 (oneDNN's fast layout), contiguous NCHW for fp32."""
    return torch.channels_last if precision == "bf16" else torch.contiguous_format


def prepare_model(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """Put the model's 4-D weights in the precision's memory format (in place; returned)."""
    return model.to(memory_format=memory_format(precision))


def prepare_images(images: torch.Tensor, precision: str) -> torch.Tensor:
    """A batch ``[B, 3, H, W]`` in the precision's memory format."""
    return images.contiguous(memory_format=memory_format(precision))


__all__ = ["PRECISIONS", "cpu_has_fast_bf16", "resolve_precision", "autocast", "memory_format",
           "prepare_model", "prepare_images"]
