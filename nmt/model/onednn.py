"""fp32 products through oneDNN for CPU translation, where they are faster than torch's BLAS.

torch multiplies float32 matrices on the CPU with its BLAS (MKL in the official wheels), which on
AMD processors takes a generic code path: on an AMD EPYC with AVX-512 it runs a search step's
products (a dozen rows by 512 by 2,048 to 4,000) at ~60 GFLOP/s on one core, where oneDNN, the
library torch ships for its fused CPU kernels, runs them at ~110 (docs/performance.md). For
translation only: oneDNN's linear kernel has no gradient, so training keeps torch's. The swap
keeps the weights (the same tensors), their names and the state dict; only `forward` changes.
"""

from __future__ import annotations

import torch
from torch import nn


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight.T + bias, as nn.functional.linear, in oneDNN's fp32 kernel (CPU, no gradient)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(nn.Linear):
    """An nn.Linear that multiplies through oneDNN (`onednn_linear`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return onednn_linear(x, self.weight, self.bias)


def use_onednn_linears(model: nn.Module) -> nn.Module:
    """Swap every nn.Linear of a float32 CPU model for translation in place for an OneDNNLinear
    with the same weights; returns the model."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                swapped = OneDNNLinear(child.in_features, child.out_features, bias=False, device="meta")
                swapped.weight, swapped.bias = child.weight, child.bias
                setattr(parent, name, swapped)
    return model
