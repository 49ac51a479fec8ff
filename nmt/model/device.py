"""Where the network runs and in what precision: the device, and fp32 or bf16 autocast.

bf16 runs the matrix products in bfloat16 while the weights, the optimizer and the loss stay
fp32: autocast casts each product's inputs; losses and cell states are computed in fp32. It pays
only where the hardware has bf16 products (CPUs with AVX-512 BF16 or AMX, recent GPUs). Without
them torch emulates bf16 on the CPU at a small fraction of the fp32 rate: on this project's
machine (AVX2 only), a bf16 product of 140 x 768 x 2048 runs at ~11 GFLOP/s against ~126 for
fp32, and a reference-model training step takes 40x longer. `auto` picks bf16 only where it is
native, and an explicit `bf16` on a CPU without it is warned about.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext

import torch

from nmt.options import PRECISIONS

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when torch sees a device, else the CPU; `cuda` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether this device multiplies bf16 matrices natively (else torch emulates them, slowly)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where native, else fp32; warns about an emulated bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not valid; choose one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        log.warning(
            "precision bf16: this %s has no native bf16 matrix products; torch emulates them, "
            "many times slower than fp32 (use fp32 or auto)",
            device.type,
        )
    return precision


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context the model's forward passes run in for this (resolved) precision."""
    if precision not in PRECISIONS or precision == "auto":
        raise ValueError(f"precision {precision!r} is not a resolved precision; use resolve_precision first")
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
