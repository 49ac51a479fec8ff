"""int8 translation: dynamic quantization, by swapping modules for torch's int8 ones.

Weights are stored as int8 (one scale per weight matrix); activations are quantized on the fly,
batch by batch, so no calibration data is needed. Every `nn.Linear` of the decoder and the bridge
(the cells' input and hidden products, attention, combination, output projection) becomes torch's
dynamic int8 Linear, except Bahdanau's one-output v. The encoder's stack, when torch has an int8
kernel for its kind (lstm, gru), is swapped for `Int8RecurrentStack`, which runs torch's dynamic
int8 LSTM / GRU; other kinds keep their float stack (the encoder runs once per sentence, not once
per beam and step). For CPU translation only: training and gradients need the float weights.
"""

from __future__ import annotations

import importlib
import warnings

import torch
from torch import nn

from nmt.model.rnn import RecurrentStack, StackOutput, run_kernel


class Int8RecurrentStack(nn.Module):
    """A RecurrentStack's place in the encoder, run by torch's dynamic int8 LSTM / GRU. Recording
    gates (the inspector) runs the stack's own cells, their products quantized too."""

    def __init__(self, stack: RecurrentStack) -> None:
        super().__init__()
        float_kernel = stack.fused_module()
        # quantize_dynamic swaps a module's children, never the module it is given: wrap it.
        wrapped = nn.Sequential(float_kernel)
        self.kernel = torch.ao.quantization.quantize_dynamic(wrapped, {type(float_kernel)}, dtype=torch.qint8)[0]
        torch.ao.quantization.quantize_dynamic(stack, {nn.Linear}, dtype=torch.qint8, inplace=True)
        self.cells_stack = stack
        self.num_layers, self.num_directions = stack.num_layers, stack.num_directions
        self.has_cell_state = stack.has_cell_state

    def forward(self, x, lengths=None, initial=None, record: bool = False, explicit: bool = False) -> StackOutput:
        if record or explicit:
            return self.cells_stack(x, lengths, initial, record=record, explicit=True)
        if initial is None:
            zeros = x.new_zeros(self.num_layers * self.num_directions, x.size(0), self.cells_stack.hidden_size)
            initial = (zeros, zeros if self.has_cell_state else None)
        hx = initial if self.has_cell_state else initial[0]
        return run_kernel(lambda inputs: self.kernel(inputs, hx), x, lengths, self.has_cell_state)


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantize a Seq2Seq in place for CPU translation and return it (in eval mode)."""
    with warnings.catch_warnings():
        # torch warns that its quantized tensor types are deprecated: nothing the user can act on.
        warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated", category=DeprecationWarning)
        return _quantize_int8(model)


def _quantize_int8(model: nn.Module) -> nn.Module:
    # torch.ao.quantization is deprecated upstream: a torch without it fails here, with a message,
    # and only when int8 is asked for.
    try:
        for module in ("torch.ao.nn.quantized.dynamic", "torch.ao.quantization"):
            importlib.import_module(module)
    except ImportError as error:
        raise RuntimeError(
            f"this torch ({torch.__version__}) has no dynamic int8 quantization ({error}); translate without --quantize"
        ) from None
    if not torch.backends.quantized.supported_engines or torch.backends.quantized.engine == "none":
        raise RuntimeError("this torch build has no quantized CPU engine; translate without --quantize")
    model.eval()
    if model.encoder.rnn.kind in ("lstm", "gru"):
        model.encoder.rnn = Int8RecurrentStack(model.encoder.rnn)
    for module in (model.decoder, model.bridge):
        # A linear layer with one output (Bahdanau's v) stays float: quantizing its input, the
        # largest tensor of a step, would cost more than the product itself.
        names = {
            name for name, child in module.named_modules() if isinstance(child, nn.Linear) and child.out_features > 1
        }
        torch.ao.quantization.quantize_dynamic(module, names, dtype=torch.qint8, inplace=True)
    return model
