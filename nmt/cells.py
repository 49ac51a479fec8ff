"""Gated recurrent cells written from their equations (batch-first, sigma the logistic sigmoid).

- `lstm`:     f, i, o = sigma(W[h, x] + b); candidate = tanh(W_c[h, x] + b_c);
              c_t = f * c_{t-1} + i * candidate; h_t = o * tanh(c_t)
- `peephole`: as lstm, but f and i also see c_{t-1}, and o sees c_t, through per-unit weights
- `cifg`:     as lstm with the input gate coupled to the forget gate: i = 1 - f
- `gru`:      u, r = sigma(W[h, x] + b); candidate = tanh(W x + b_x + r * (U h + b_h));
              h_t = u * h_{t-1} + (1 - u) * candidate   (torch.nn.GRU's convention; no cell state)
- `rnn`:      h_t = tanh(W[h, x] + b), the plain recurrent network the gated cells are compared with

Every cell computes all its gates with one matrix product per step: the input half `W_x x + b`
is projected for the whole sequence at once (`project_input`), the recurrent half `W_h h` per
step. Weights use torch.nn.LSTM / GRU / RNN's layout and gate order (`weight_ih`, `weight_hh`,
`bias_ih`, `bias_hh`; lstm i, f, candidate, o; gru r, u, candidate), so weights copy across.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nmt.config import CELL_KINDS  # one list of kinds for the config and the code
_GATE_BLOCKS = {"lstm": 4, "peephole": 4, "cifg": 3, "gru": 3, "rnn": 1}

Gates = dict[str, torch.Tensor]  # gate name -> (batch, hidden) activations of one step


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
    has_cell_state = True

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        blocks = _GATE_BLOCKS[self.kind]
        self.weight_ih = nn.Parameter(torch.empty(blocks * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(blocks * hidden_size, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(blocks * hidden_size))
        self.bias_hh = nn.Parameter(torch.empty(blocks * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch's default for its recurrent layers: U(-1/sqrt(hidden), 1/sqrt(hidden))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for param in self.parameters():
            nn.init.uniform_(param, -bound, bound)

    # Set by nmt.quantize: int8 twins of (W_x, b_x) and (W_h, b_h) for translation.
    int8: tuple[nn.Module, nn.Module] | None = None

    def project_input(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, time, input) -> W_x x + b_x for every step: (batch, time, blocks * hidden)."""
        if self.int8 is not None:
            return self.int8[0](x)
        return torch.nn.functional.linear(x, self.weight_ih, self.bias_ih)

    def project_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """h (batch, hidden) -> W_h h + b_h: (batch, blocks * hidden)."""
        if self.int8 is not None:
            return self.int8[1](h)
        return torch.nn.functional.linear(h, self.weight_hh, self.bias_hh)

    def _hidden(self, h: torch.Tensor, projected_h: torch.Tensor | None) -> torch.Tensor:
        return self.project_hidden(h) if projected_h is None else projected_h

    def step(
        self, projected_x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, record: bool = False,
        projected_h: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, Gates]:  # fmt: skip
        """projected_x (batch, blocks * hidden), h and c (batch, hidden) -> h_t, c_t, gates.

        `gates` holds the activations by name when `record` is set (the gate inspector), else {}.
        `projected_h`: W_h h + b_h when the caller has made that product itself (training's
        decoder, which defers the weight gradients: nmt/deferred.py).
        """
        hidden = self._hidden(h, projected_h)
        if projected_h is None and not record and no_grad_float32(hidden):
            return (*self._step_in_place(projected_x, hidden, c), {})
        gates = projected_x + hidden
        i, f, candidate, o = gates.chunk(4, dim=-1)
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

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        # Diagonal peepholes: each unit's gates see that unit's own cell state.
        self.peephole_i = nn.Parameter(torch.zeros(hidden_size))
        self.peephole_f = nn.Parameter(torch.zeros(hidden_size))
        self.peephole_o = nn.Parameter(torch.zeros(hidden_size))

    def step(self, projected_x, h, c, record=False, projected_h=None):
        gates = projected_x + self._hidden(h, projected_h)
        i, f, candidate, o = gates.chunk(4, dim=-1)
        i = torch.sigmoid(i + self.peephole_i * c)
        f = torch.sigmoid(f + self.peephole_f * c)
        c_t = f * c + i * torch.tanh(candidate)
        o = torch.sigmoid(o + self.peephole_o * c_t)
        h_t = o * torch.tanh(c_t)
        return h_t, c_t, ({"forget": f, "input": i, "output": o} if record else {})


class CIFGCell(Cell):
    kind = "cifg"

    def step(self, projected_x, h, c, record=False, projected_h=None):
        gates = projected_x + self._hidden(h, projected_h)
        f, candidate, o = gates.chunk(3, dim=-1)
        f, o = torch.sigmoid(f), torch.sigmoid(o)
        c_t = f * c + (1.0 - f) * torch.tanh(candidate)
        h_t = o * torch.tanh(c_t)
        return h_t, c_t, ({"forget": f, "input": 1.0 - f, "output": o} if record else {})


class GRUCell(Cell):
    kind = "gru"
    has_cell_state = False

    def step(self, projected_x, h, c, record=False, projected_h=None):
        x_r, x_u, x_n = projected_x.chunk(3, dim=-1)
        h_r, h_u, h_n = self._hidden(h, projected_h).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        u = torch.sigmoid(x_u + h_u)
        candidate = torch.tanh(x_n + r * h_n)
        h_t = u * h + (1.0 - u) * candidate
        # The update gate keeps the old state, as the lstm's forget gate keeps the old cell.
        return h_t, None, ({"update": u, "reset": r} if record else {})


class RNNCell(Cell):
    kind = "rnn"
    has_cell_state = False

    def step(self, projected_x, h, c, record=False, projected_h=None):
        h_t = torch.tanh(projected_x + self._hidden(h, projected_h))
        return h_t, None, {}


_CELLS: dict[str, type[Cell]] = {
    "lstm": Cell, "peephole": PeepholeCell, "cifg": CIFGCell, "gru": GRUCell, "rnn": RNNCell,
}  # fmt: skip


def has_cell_state(kind: str) -> bool:
    return _CELLS[kind].has_cell_state


def make_cell(kind: str, input_size: int, hidden_size: int) -> Cell:
    if kind not in _CELLS:
        raise ValueError(f"unknown cell kind {kind!r}; choose one of: {', '.join(CELL_KINDS)}")
    return _CELLS[kind](input_size, hidden_size)


def set_forget_bias(cell: Cell, value: float) -> None:
    """Start the forget gate (gru: the update gate) open, so early training does not forget."""
    h = cell.hidden_size
    block = {"lstm": 1, "peephole": 1, "cifg": 0, "gru": 1}.get(cell.kind)
    if block is None:
        return
    with torch.no_grad():
        # The two biases add up: split the value so their sum is `value`.
        cell.bias_ih[block * h : (block + 1) * h] = value / 2
        cell.bias_hh[block * h : (block + 1) * h] = value / 2
