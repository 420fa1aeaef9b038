"""Multiplication-free layers compute in float32, whatever the training precision.

``--precision bf16|fp16`` runs the forward passes under ``torch.autocast``: multiplicative convs and
linears compute in half precision (that is what makes them fast on tensor cores). The MF layers
(shift and add, and the MF part of a hybrid layer) leave autocast and compute in float32, on
float32 inputs, because half precision breaks what they compute:

* shift: the layer stands for integer shift-and-add hardware, each product ``x * (+-2^p)`` exact.
  In bf16 (8 significant bits) or fp16 (11) the activations and the running sums are rounded, so
  the layer no longer computes what the deployed network computes, and the rounding of the
  remapped weight to a power of two (a log2 of the weight) flips weights near a rounding boundary.
* add: the output is ``-sum |x - w|`` over K = C_in * k * k terms (hundreds to thousands): the sums
  are large, fp16 overflows past 65504 and bf16 keeps 2-3 significant digits, so the small
  differences between output channels, which carry the signal, are lost. AdderNet's adaptive
  gradient scale also renormalises gradients in a way half precision does not survive.

On CUDA the MF forward also runs without TF32 (TF32 rounds the convolution inputs to 10 bits).
Backward passes run after the context is left and follow torch's global settings.
"""

from __future__ import annotations

import contextlib

import torch

_HALF = (torch.float16, torch.bfloat16)


def full_precision(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """The context an MF layer computes ``x`` in: autocast off, and no TF32 convolutions on CUDA.
    Nothing to do (a null context) on a CPU without autocast: the default path stays as it was."""
    kind = x.device.type
    if kind == "cuda":
        return _cuda_full_precision()
    if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _cuda_full_precision():
    c = torch.backends.cudnn
    with torch.autocast("cuda", enabled=False):
        with c.flags(enabled=c.enabled, benchmark=c.benchmark, deterministic=c.deterministic, allow_tf32=False):
            yield


def to_float32(x: torch.Tensor) -> torch.Tensor:
    """A half-precision activation (from an autocast layer) as float32, anything else unchanged."""
    return x.float() if x.dtype in _HALF else x
