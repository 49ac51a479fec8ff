"""A linear layer applied at every step of a recurrent loop, its weight gradient computed once.

Autograd's default gives each step's product its own weight gradient: a small product (the
batch's rows against the whole weight) added into the gradient, so every step streams the whole
weight through memory twice at a fraction of the machine's matmul speed. Here each step's backward
computes only the gradient of its input and keeps the gradient of its output; once every step is
done, one product over all steps' rows gives the weight's gradient, and one sum the bias's (what
cuDNN does inside its LSTM kernels).

Training's input-feeding loop (`Decoder.forward_packed`) runs its per-step products this way:
`deferred_weight_gradients` gives the loop's `nn.Linear` modules a deferred forward for the
duration of one forward pass, so the cells and the attention need not know. Outside autograd
(eval, translation) nothing changes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


@contextmanager
def deferred_weight_gradients(linears: Sequence[nn.Linear]) -> Iterator[None]:
    """Within the block (one forward pass), each of these Linear modules computes its weight
    gradient once, over all of its calls, in the backward (DeferredLinear). Without autograd the
    modules are left as they are."""
    if not torch.is_grad_enabled():
        yield
        return
    for linear in linears:
        # An instance attribute shadows the class's forward for this block only.
        linear.forward = DeferredLinear(linear.weight, linear.bias)
    try:
        yield
    finally:
        for linear in linears:
            del linear.forward


class DeferredLinear:
    """`F.linear(x, weight, bias)` for the steps of one forward pass, weight gradient deferred.

    Make a new one per forward pass: it keeps every step's input until the backward has used it.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight, self.bias = weight, bias
        self.inputs: list[torch.Tensor] = []  # each step's x, (rows, in)
        self.output_grads: dict[int, torch.Tensor] = {}  # step -> dL/dy, (rows, out)
        self.deferring = torch.is_grad_enabled() and (weight.requires_grad or (bias is not None and bias.requires_grad))
        # Every step hands its backward a zero scalar through this anchor, so autograd runs the
        # anchor's backward (the weight gradient) only after the last step's.
        self._anchor = _Anchor.apply(self, weight, bias) if self.deferring else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.deferring:
            return F.linear(x, self.weight, self.bias)
        return _Step.apply(x, self._anchor, self)


class _Anchor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, linear: DeferredLinear, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.linear = linear
        ctx.has_bias = bias is not None
        return weight.new_zeros(())

    @staticmethod
    def backward(ctx, _unused: torch.Tensor):
        linear: DeferredLinear = ctx.linear
        steps = sorted(linear.output_grads)  # a step whose output the loss never used has none
        if not steps:
            return None, None, None
        grads = torch.cat([linear.output_grads[step] for step in steps])  # (rows of all steps, out)
        inputs = torch.cat([linear.inputs[step] for step in steps])  # (rows of all steps, in)
        linear.inputs, linear.output_grads = [], {}
        weight_grad = grads.t().mm(inputs.to(grads.dtype)).to(linear.weight.dtype)  # (out, in)
        bias_grad = grads.sum(0).to(linear.bias.dtype) if ctx.has_bias else None
        return None, weight_grad, bias_grad


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, anchor: torch.Tensor, linear: DeferredLinear) -> torch.Tensor:
        ctx.linear, ctx.step = linear, len(linear.inputs)
        linear.inputs.append(x.reshape(-1, x.size(-1)))  # (rows, in), whatever x's leading shape
        bias = None if linear.bias is None else linear.bias.detach()
        return F.linear(x, linear.weight.detach(), bias)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        linear: DeferredLinear = ctx.linear
        linear.output_grads[ctx.step] = grad_output.reshape(-1, grad_output.size(-1))
        grad_x = grad_output.matmul(linear.weight.detach().to(grad_output.dtype)) if ctx.needs_input_grad[0] else None
        return grad_x, grad_output.new_zeros(()), None
