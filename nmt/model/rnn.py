"""A stack of recurrent cells run over time, uni- or bidirectional, with padding masked out.

The cells of `nmt.model.cells` own the weights. Two ways run them:
- the explicit loop: one `Cell.step` per time step, input projections precomputed for the whole
  sequence, masked updates so padding never touches the state; it can record every gate;
- the fused path, for the kinds torch has a kernel for (`lstm`, `gru`, `rnn`): the same weights
  handed to torch.nn.LSTM / GRU / RNN (`torch.func.functional_call`) over a packed sequence.
Both give the same outputs, final states and gradients (tests hold them together); the fused
path is used unless gates are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmt.model.cells import Gates, make_cell


@dataclass
class StackOutput:
    outputs: torch.Tensor  # (batch, time, directions * hidden): the top layer, zero at padding
    h: torch.Tensor  # (layers * directions, batch, hidden): torch.nn.LSTM's layout
    c: torch.Tensor | None  # the same, for cells with a cell state; None for gru and rnn
    # With record=True: per layer and direction (index layer * directions + direction), each
    # gate's activations, the hidden state ("hidden") and the cell state ("cell", for cells that
    # have one), (batch, time, hidden).
    gates: list[Gates] = field(default_factory=list)


class RecurrentStack(nn.Module):
    def __init__(
        self,
        kind: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.kind, self.hidden_size, self.num_layers = kind, hidden_size, num_layers
        self.num_directions = 2 if bidirectional else 1
        self.dropout = dropout if num_layers > 1 else 0.0
        self.cells = nn.ModuleList(
            make_cell(kind, input_size if layer == 0 else hidden_size * self.num_directions, hidden_size)
            for layer in range(num_layers)
            for _ in range(self.num_directions)
        )
        self.has_cell_state = self.cells[0].has_cell_state
        # A weightless torch module (on the meta device) that the fused path runs with our weights;
        # kept in a tuple so it is not registered as a submodule with parameters of its own.
        self._fused: tuple[nn.Module] | None = None
        kernel = self.cells[0].torch_kernel
        if kernel is not None:
            with torch.device("meta"):
                template = kernel(
                    input_size,
                    hidden_size,
                    num_layers,
                    batch_first=True,
                    dropout=self.dropout,
                    bidirectional=bidirectional,
                )
            self._fused = (template,)

    @property
    def output_size(self) -> int:
        return self.hidden_size * self.num_directions

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        initial: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        record: bool = False,
        explicit: bool = False,
    ) -> StackOutput:
        """x (batch, time, input); lengths (batch,) or None when nothing is padded;
        initial (h, c) in torch.nn.LSTM's layout (c None for gru/rnn), zeros when None.
        `record` returns every gate (and runs the explicit cells); `explicit` runs them without
        recording, where a fused kernel would otherwise be used (for comparisons)."""
        batch_size = x.size(0)
        if initial is None:
            zeros = x.new_zeros(self.num_layers * self.num_directions, batch_size, self.hidden_size)
            initial = (zeros, zeros if self.has_cell_state else None)
        if self._fused is not None and not (record or explicit):
            return self._forward_fused(x, lengths, initial)
        return self._forward_cells(x, lengths, initial, record)

    # --- fused: torch's kernels with our weights ---------------------------------------------
    def fused_module(self, kernel: type[nn.Module] | None = None, products=None) -> nn.Module:
        """A real torch.nn.LSTM / GRU / RNN holding a copy of these weights (for quantization).
        With `kernel` and `products` (cell -> its W_ih, b_ih, W_hh, b_hh in that kernel's layout),
        another kernel that computes what these cells compute (the ONNX export of cells torch
        has no kernel for)."""
        kernel = kernel or self.cells[0].torch_kernel
        assert kernel is not None
        module = kernel(
            self.cells[0].input_size,
            self.hidden_size,
            self.num_layers,
            batch_first=True,
            dropout=self.dropout,
            bidirectional=self.num_directions == 2,
            device="meta",  # no random init: it gets our weights
        )
        weights = {name: weight.detach().clone() for name, weight in self._fused_weights(products).items()}
        module.load_state_dict(weights, assign=True)
        return module.eval()

    def _fused_weights(self, products=None) -> dict[str, torch.Tensor]:
        weights = {}
        for index, cell in enumerate(self.cells):
            layer, direction = divmod(index, self.num_directions)
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            names = ("weight_ih" + suffix, "bias_ih" + suffix, "weight_hh" + suffix, "bias_hh" + suffix)
            if products is not None:
                weights.update(zip(names, products(cell)))
            else:  # the cell's own
                own = (cell.input_proj.weight, cell.input_proj.bias, cell.hidden_proj.weight, cell.hidden_proj.bias)
                weights.update(zip(names, own))
        return weights

    def _forward_fused(self, x, lengths, initial) -> StackOutput:
        assert self._fused is not None
        template = self._fused[0].train(self.training)
        h0, c0 = initial
        hx = (h0, c0) if self.has_cell_state else h0

        weights = self._fused_weights()
        return run_kernel(
            lambda inputs: functional_call(template, weights, (inputs, hx)), x, lengths, self.has_cell_state
        )

    # --- explicit: one cell step at a time ---------------------------------------------------
    def _forward_cells(self, x, lengths, initial, record: bool) -> StackOutput:
        h0, c0 = initial
        time_steps = x.size(1)
        mask = None
        if lengths is not None:
            mask = torch.arange(time_steps, device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)
        layer_input, final_h, final_c, gates = x, [], [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                out, h, c, cell_gates = self._run_direction(
                    self.cells[index],
                    layer_input,
                    mask,
                    h0[index],
                    None if c0 is None else c0[index],
                    reverse=direction == 1,
                    record=record,
                )
                outputs.append(out)
                final_h.append(h)
                final_c.append(c)
                gates.append(cell_gates)
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout and layer < self.num_layers - 1:
                layer_input = nn.functional.dropout(layer_input, self.dropout, self.training)
        c = torch.stack(final_c) if self.has_cell_state else None
        return StackOutput(layer_input, torch.stack(final_h), c, gates if record else [])

    @staticmethod
    def _run_direction(cell, x, mask, h, c, reverse: bool, record: bool):
        """One cell over the sequence. Masked steps leave the state as it was, so the backward
        direction starts at each sentence's last real token, and padding gives zero outputs."""
        projected = cell.input_proj(x)  # (batch, time, blocks * hidden): one product for all steps
        time_steps = x.size(1)
        outputs: list[torch.Tensor] = [x.new_empty(0)] * time_steps
        recorded: list[Gates] = [{}] * time_steps
        for t in reversed(range(time_steps)) if reverse else range(time_steps):
            h_new, c_new, step_gates = cell.step(projected[:, t], h, c, record)
            if mask is None:
                h, c = h_new, c_new
                outputs[t] = h_new
            else:
                real = mask[:, t].unsqueeze(1)  # (batch, 1)
                h = torch.where(real, h_new, h)
                c = None if c is None else torch.where(real, c_new, c)
                outputs[t] = h_new * real
            if record:
                # The states too: a cell without gates (rnn) still shows what it carries.
                step_gates = {**step_gates, "hidden": h_new} | ({"cell": c_new} if c_new is not None else {})
            recorded[t] = step_gates
        gates = {name: torch.stack([g[name] for g in recorded], dim=1) for name in recorded[0]} if record else {}
        return torch.stack(outputs, dim=1), h, c, gates


def run_kernel(kernel, x: torch.Tensor, lengths: torch.Tensor | None, has_cell_state: bool) -> StackOutput:
    """Run one of torch's sequence kernels (`kernel(input) -> (output, final)`, batch-first) over
    x (batch, time, input), packed when `lengths` are given, so padding never reaches the state."""
    if lengths is None:
        outputs, final = kernel(x)
    else:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        packed_out, final = kernel(packed)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.size(1))
    h, c = final if has_cell_state else (final, None)
    return StackOutput(outputs, h, c)
