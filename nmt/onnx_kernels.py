"""The encoder's recurrent stack as ONNX recurrent nodes, one LSTM or GRU node per layer.

torch's exporter turns torch.nn.LSTM and GRU into ONNX LSTM / GRU nodes; `export_kernel` gives it
one that computes what the stack computes, and `complete_recurrent_nodes` then hands the nodes
what torch's kernels take another way: each sentence's length (ONNX's `sequence_lens`, as a
packed sequence gives it to torch) and a peephole cell's peepholes (ONNX's `P`).
"""

from __future__ import annotations

import torch
from torch import nn

from nmt.model.rnn import RecurrentStack

RECURRENT_OPS = ("LSTM", "GRU")
# Cells without a torch kernel of their own that export as one (export_kernel); torch's exporter
# unrolls its tanh RNN over the example's length, which would fix the source length.
CELLS_BY_IDENTITY = {"peephole": nn.LSTM, "cifg": nn.LSTM, "rnn": nn.GRU}
SATURATED = 1e4  # a gate bias that puts sigmoid at 0 or 1


class ExportError(ValueError):
    """A model that cannot be exported as ONNX graphs, said in one line."""


def export_kernel(stack: RecurrentStack) -> tuple[nn.Module, list[torch.Tensor] | None]:
    """A torch.nn.LSTM or GRU that computes what `stack` computes, for the exporter to turn into
    ONNX LSTM / GRU nodes, and for peephole cells each layer's ONNX peephole input P (directions,
    3 * hidden: i, o, f), which torch's LSTM lacks and `_complete_recurrent_nodes` adds.

    lstm and gru are torch's own kernels. The others are exact identities of them: cifg's input
    gate 1 - sigma(z_f) is sigma(-z_f), an LSTM whose input-gate weights are the forget gate's
    negated; a tanh RNN is a GRU whose update gate is shut and reset gate open (biases of
    -+SATURATED: sigma is then 0 and 1 to float32's precision), so h_t = tanh(W x + U h + b)."""
    if stack.kind in ("lstm", "gru"):
        return stack.fused_module(), None
    if stack.kind not in CELLS_BY_IDENTITY:
        raise ExportError(f"an encoder of {stack.kind} cells has no ONNX recurrent node")
    kernel = stack.fused_module(CELLS_BY_IDENTITY[stack.kind], _standin_products)
    peepholes = None
    if stack.kind == "peephole":
        peepholes = [
            torch.stack(
                [
                    torch.cat([cell.peephole_i, cell.peephole_o, cell.peephole_f]).detach()
                    for cell in stack.cells[layer * stack.num_directions : (layer + 1) * stack.num_directions]
                ]
            )
            for layer in range(stack.num_layers)
        ]
    return kernel, peepholes


def _standin_products(cell) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A cell's (W_ih, b_ih, W_hh, b_hh) in the layout of the torch kernel that stands in for it."""
    w_ih, b_ih = cell.input_proj.weight, cell.input_proj.bias
    w_hh, b_hh = cell.hidden_proj.weight, cell.hidden_proj.bias
    if cell.kind == "peephole":  # the lstm's layout and gate order already
        return w_ih, b_ih, w_hh, b_hh
    if cell.kind == "cifg":  # (f, candidate, o) -> torch's (i, f, g, o) with i's weights -f's

        def lstm(tensor: torch.Tensor) -> torch.Tensor:
            forget, candidate, output = tensor.chunk(3)
            return torch.cat([-forget, forget, candidate, output])

        return lstm(w_ih), lstm(b_ih), lstm(w_hh), lstm(b_hh)
    # rnn -> torch's GRU (r, z, n): r open, z shut, n the rnn's own products
    hidden = cell.hidden_size
    zeros_ih, zeros_hh = w_ih.new_zeros(2 * hidden, w_ih.size(1)), w_hh.new_zeros(2 * hidden, hidden)
    gates = torch.cat([b_ih.new_full((hidden,), SATURATED), b_ih.new_full((hidden,), -SATURATED)])
    return (
        torch.cat([zeros_ih, w_ih]),
        torch.cat([gates, b_ih]),
        torch.cat([zeros_hh, w_hh]),
        torch.cat([b_hh.new_zeros(2 * hidden), b_hh]),
    )


def complete_recurrent_nodes(proto, peepholes: list[torch.Tensor] | None) -> None:
    """Hand every recurrent node of the encoder graph (one per layer, in order) the sources'
    lengths (`sequence_lens`, int32), so each sentence ends at its own last token as in a packed
    sequence, and with `peepholes` its layer's P."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    lengths = "src_lengths_int32"
    graph = proto.graph
    recurrent = [node for node in graph.node if node.op_type in RECURRENT_OPS]
    if not recurrent or (peepholes is not None and len(peepholes) != len(recurrent)):
        raise ExportError(f"the exported encoder has {len(recurrent)} recurrent nodes, not one per layer")
    for layer, node in enumerate(recurrent):
        inputs = list(node.input) + [""] * max(0, 8 - len(node.input))  # X W R B lens h0 c0 P
        if inputs[4] or inputs[7]:
            raise ExportError(f"the exported {node.op_type} node already takes sequence lengths or peepholes")
        inputs[4] = lengths
        if peepholes is not None:
            inputs[7] = f"peepholes_l{layer}"
            graph.initializer.append(numpy_helper.from_array(peepholes[layer].numpy(), inputs[7]))
        while inputs and not inputs[-1]:  # optional inputs left out at the end
            inputs.pop()
        del node.input[:]
        node.input.extend(inputs)
    cast = helper.make_node("Cast", ["src_lengths"], [lengths], to=TensorProto.INT32, name="src_lengths_to_int32")
    graph.node.insert(0, cast)
    # The exporter annotates output shapes from its example (e.g. a fixed source length): drop
    # what it says of the inner values and keep the declared inputs and outputs.
    del graph.value_info[:]
    axes = {
        "memory": ("batch", "src_len"),
        "keys": ("batch", "src_len"),
        "src_mask": ("batch", "src_len"),
        "attentional": ("batch",),
    }
    for output in graph.output:
        dims = output.type.tensor_type.shape.dim
        for index, name in enumerate(axes.get(output.name, (None, "batch"))):
            if name is not None:
                dims[index].dim_param = name  # clears a fixed dim_value
    onnx.checker.check_model(proto)
