"""Gated recurrent cells written from their equations (batch-first, sigma the logistic sigmoid).

- `lstm`:     f, i, o = sigma(W[h, x] + b); candidate = tanh(W_c[h, x] + b_c);
              c_t = f * c_{t-1} + i * candidate; h_t = o * tanh(c_t)
- `peephole`: as lstm, but f and i also see c_{t-1}, and o sees c_t, through per-unit weights
- `cifg`:     as lstm with the input gate coupled to the forget gate: i = 1 - f
- `gru`:      u, r = sigma(W[h, x] + b); candidate = tanh(W x + b_x + r * (U h + b_h));
              h_t = u * h_{t-1} + (1 - u) * candidate   (torch.nn.GRU's convention; no cell state)
- `rnn`:      h_t = tanh(W[h, x] + b), the plain recurrent network the gated cells are compared with

Every cell computes all its gates with two products per step, held as `nn.Linear` children: the
input half `input_proj(x) = W_x x + b_x`, projected for the whole sequence at once, and the
recurrent half `hidden_proj(h) = W_h h + b_h`. Their weights use torch.nn.LSTM / GRU / RNN's
layout and gate order (lstm i, f, candidate, o; gru r, u, candidate), so weights copy across and
torch's fused kernels can run them (nmt.model.rnn); int8 translation swaps the two children for
torch's dynamic int8 Linear (nmt.model.quantize).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nmt.config import CELL_KINDS

Gates = dict[str, torch.Tensor]  # gate name -> (batch, hidden) activations of one step

# Checkpoints written before the cells held their products as children named them as torch does.
_LEGACY_NAMES = {
    "weight_ih": "input_proj.weight",
    "bias_ih": "input_proj.bias",
    "weight_hh": "hidden_proj.weight",
    "bias_hh": "hidden_proj.bias",
}


def tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh of x, in place, as 2 sigmoid(2x) - 1: torch's CPU tanh runs ~3.5x slower than its
    sigmoid. For float32 without gradients only (the absolute error is ~1e-7)."""
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


def no_grad_float32(x: torch.Tensor) -> bool:
    """True when a step may work in place and through sigmoid: no autograd, float32."""
    return not torch.is_grad_enabled() and x.dtype == torch.float32


class Cell(nn.Module):
    """One step of a recurrent cell; `c` is None for cells without a cell state (gru, rnn)."""

    kind = "lstm"
    blocks = 4  # gate blocks of hidden_size in each product
    has_cell_state = True
    forget_block: int | None = 1  # the block whose bias keeps the old state (set_forget_bias)
    torch_kernel: type[nn.Module] | None = nn.LSTM  # torch's fused kernel with this layout

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.input_proj = nn.Linear(input_size, self.blocks * hidden_size)
        self.hidden_proj = nn.Linear(hidden_size, self.blocks * hidden_size)
        self.register_load_state_dict_pre_hook(_rename_legacy_weights)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default for its recurrent layers: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    def step(
        self, projected_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, record: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, Gates]:
        """projected_x = input_proj(x) (batch, blocks * hidden), h and c (batch, hidden) ->
        h_t, c_t, and the gates' activations by name when `record` is set (else {})."""
        hidden = self.hidden_proj(h)  # (batch, 4 * hidden)
        if not record and no_grad_float32(hidden):
            return (*self._step_in_place(projected_x, hidden, c), {})
        i, f, candidate, o = (projected_x + hidden).chunk(4, dim=-1)
        i, f, candidate, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(candidate), torch.sigmoid(o)
        c_t = f * c + i * candidate
        h_t = o * torch.tanh(c_t)
        return h_t, c_t, ({"forget": f, "input": i, "output": o} if record else {})

    @staticmethod
    def _step_in_place(
        projected_x: torch.Tensor, gates: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same equations for translation, in the fresh `gates` (W_h h + b_h) tensor, with
        tanh(x) = 2 sigmoid(2x) - 1: one sigmoid over all four blocks instead of three and a tanh."""
        gates += projected_x  # (batch, 4 * hidden)
        i, f, candidate, o = gates.chunk(4, dim=-1)
        candidate.mul_(2)
        gates.sigmoid_()
        c_t = torch.addcmul(f * c, i, candidate.mul_(2).sub_(1))  # f * c + i * tanh(candidate)
        return tanh_(c_t.clone()).mul_(o), c_t  # o * tanh(c_t)


class PeepholeCell(Cell):
    kind = "peephole"
    torch_kernel = None

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        # Diagonal peepholes: each unit's gates see that unit's own cell state.
        self.peephole_i = nn.Parameter(torch.zeros(hidden_size))
        self.peephole_f = nn.Parameter(torch.zeros(hidden_size))
        self.peephole_o = nn.Parameter(torch.zeros(hidden_size))

    def step(self, projected_x, h, c, record=False):
        i, f, candidate, o = (projected_x + self.hidden_proj(h)).chunk(4, dim=-1)
        i = torch.sigmoid(i + self.peephole_i * c)
        f = torch.sigmoid(f + self.peephole_f * c)
        c_t = f * c + i * torch.tanh(candidate)
        o = torch.sigmoid(o + self.peephole_o * c_t)
        h_t = o * torch.tanh(c_t)
        return h_t, c_t, ({"forget": f, "input": i, "output": o} if record else {})


class CIFGCell(Cell):
    kind = "cifg"
    blocks = 3
    forget_block = 0
    torch_kernel = None

    def step(self, projected_x, h, c, record=False):
        f, candidate, o = (projected_x + self.hidden_proj(h)).chunk(3, dim=-1)
        f, o = torch.sigmoid(f), torch.sigmoid(o)
        c_t = f * c + (1.0 - f) * torch.tanh(candidate)
        h_t = o * torch.tanh(c_t)
        return h_t, c_t, ({"forget": f, "input": 1.0 - f, "output": o} if record else {})


class GRUCell(Cell):
    kind = "gru"
    blocks = 3
    has_cell_state = False
    forget_block = 1  # the update gate
    torch_kernel = nn.GRU

    def step(self, projected_x, h, c, record=False):
        x_r, x_u, x_n = projected_x.chunk(3, dim=-1)
        h_r, h_u, h_n = self.hidden_proj(h).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        u = torch.sigmoid(x_u + h_u)
        candidate = torch.tanh(x_n + r * h_n)
        h_t = u * h + (1.0 - u) * candidate
        # The update gate keeps the old state, as the lstm's forget gate keeps the old cell.
        return h_t, None, ({"update": u, "reset": r} if record else {})


class RNNCell(Cell):
    kind = "rnn"
    blocks = 1
    has_cell_state = False
    forget_block = None
    torch_kernel = nn.RNN

    def step(self, projected_x, h, c, record=False):
        return torch.tanh(projected_x + self.hidden_proj(h)), None, {}


CELLS: dict[str, type[Cell]] = {cls.kind: cls for cls in (Cell, PeepholeCell, CIFGCell, GRUCell, RNNCell)}
assert tuple(CELLS) == CELL_KINDS, "nmt.config.CELL_KINDS names every cell class, in order"


def make_cell(kind: str, input_size: int, hidden_size: int) -> Cell:
    if kind not in CELLS:
        raise ValueError(f"unknown cell kind {kind!r}; choose one of: {', '.join(CELL_KINDS)}")
    return CELLS[kind](input_size, hidden_size)


def set_forget_bias(cell: Cell, value: float) -> None:
    """Start the forget gate (gru: the update gate) open, so early training does not forget."""
    if cell.forget_block is None:
        return
    gate = slice(cell.forget_block * cell.hidden_size, (cell.forget_block + 1) * cell.hidden_size)
    with torch.no_grad():
        # The two biases add up: split the value so their sum is `value`.
        cell.input_proj.bias[gate] = value / 2
        cell.hidden_proj.bias[gate] = value / 2


def _rename_legacy_weights(module, state_dict, prefix, *args) -> None:
    for old, new in _LEGACY_NAMES.items():
        if prefix + old in state_dict:
            state_dict[prefix + new] = state_dict.pop(prefix + old)
