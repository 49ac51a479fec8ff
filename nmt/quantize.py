"""int8 translation: dynamic quantization of the decoder's recurrent cells and the linear layers.

Weights are stored as int8 (one scale per weight matrix); activations are quantized on the fly,
batch by batch, so no calibration data is needed. The decoder's cells run their two matrix
products (input and recurrent) through int8 twins of their weights (`Cell.int8`); every
`nn.Linear` (attention, combination, output projection, bridge) except Bahdanau's one-output v is
replaced by torch's dynamic int8 Linear. The encoder's stack, when torch has an int8 kernel for
its kind (lstm, gru), runs torch's dynamic int8 LSTM / GRU on a copy of its weights; other kinds
keep their float kernel (the encoder runs once per sentence, not once per beam and step). For CPU
translation only: training and gradients need the float weights.
"""

from __future__ import annotations

import importlib
import warnings

import torch
from torch import nn

QUANTIZE_KINDS = ("none", "int8")


def _int8_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """An int8 dynamic Linear computing x W^T + b with these float weights."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear  # checked by quantize_int8

    # Built on the meta device and handed the weights: a float Linear's random init is wasted work.
    float_linear = nn.Linear(weight.size(1), weight.size(0), bias=bias is not None, device="meta")
    float_linear.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
    if bias is not None:
        float_linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    float_linear.qconfig = torch.ao.quantization.default_dynamic_qconfig
    return DynamicInt8Linear.from_float(float_linear)


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
    encoder_stack = model.encoder.rnn
    if encoder_stack.kind in ("lstm", "gru"):
        float_kernel = encoder_stack.fused_module()
        # quantize_dynamic swaps a module's children, never the module it is given: wrap it.
        wrapped = torch.ao.quantization.quantize_dynamic(nn.Sequential(float_kernel), {type(float_kernel)}, dtype=torch.qint8)
        encoder_stack.int8_kernel = (wrapped[0],)
    decoder = model.decoder
    for cell in decoder.rnn.cells:
        cell.int8 = (_int8_linear(cell.weight_ih, cell.bias_ih), _int8_linear(cell.weight_hh, cell.bias_hh))
    if decoder.input_feeding:  # search looks the embedding half up in a float table (Decoder.step)
        feed_weight = decoder.rnn.cells[0].weight_ih[:, decoder.embed.embedding_dim :]
        decoder.int8_feed = (_int8_linear(feed_weight.detach(), None),)
    for module in (decoder, model.bridge):
        # A linear layer with one output (Bahdanau's v) stays float: quantizing its input, the
        # largest tensor of a step, would cost more than the product itself.
        names = {name for name, child in module.named_modules() if isinstance(child, nn.Linear) and child.out_features > 1}
        torch.ao.quantization.quantize_dynamic(module, names, dtype=torch.qint8, inplace=True)
    return model
