"""The cells against torch's kernels and against their equations, evaluated loop by loop."""

import pytest
import torch
from torch import nn

from nmt.config import CELL_KINDS
from nmt.model.cells import make_cell, set_forget_bias
from nmt.model.rnn import RecurrentStack

TORCH_TWINS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
LENGTHS = torch.tensor([7, 3, 5, 1])
# torch's names of a recurrent layer's weights -> a cell's
TORCH_NAMES = {
    "weight_ih": "input_proj.weight",
    "weight_hh": "hidden_proj.weight",
    "bias_ih": "input_proj.bias",
    "bias_hh": "hidden_proj.bias",
}


def padded_input(input_size: int = 5, seed: int = 0) -> torch.Tensor:
    x = torch.randn(len(LENGTHS), int(LENGTHS.max()), input_size, generator=torch.Generator().manual_seed(seed))
    mask = torch.arange(x.size(1)).unsqueeze(0) < LENGTHS.unsqueeze(1)
    return (x * mask.unsqueeze(-1)).requires_grad_()


def copy_from_twin(stack: RecurrentStack, twin: nn.Module) -> None:
    with torch.no_grad():
        for index, cell in enumerate(stack.cells):
            layer, direction = divmod(index, stack.num_directions)
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            for name, ours in TORCH_NAMES.items():
                cell.get_parameter(ours).copy_(getattr(twin, name + suffix))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("record", [False, True])  # fused path, explicit cells
def test_matches_torch_on_padded_multilayer_bidirectional_batches(kind, record):
    torch.manual_seed(0)
    twin = TORCH_TWINS[kind](5, 6, num_layers=2, batch_first=True, bidirectional=True)
    stack = RecurrentStack(kind, 5, 6, num_layers=2, bidirectional=True)
    copy_from_twin(stack, twin)
    x = padded_input()
    packed = nn.utils.rnn.pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False)
    twin_packed, twin_final = twin(packed)
    twin_out, _ = nn.utils.rnn.pad_packed_sequence(twin_packed, batch_first=True)
    twin_h = twin_final[0] if kind == "lstm" else twin_final
    ours = stack(x, LENGTHS, record=record)
    torch.testing.assert_close(ours.outputs, twin_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.h, twin_h, atol=1e-5, rtol=1e-5)
    if kind == "lstm":
        torch.testing.assert_close(ours.c, twin_final[1], atol=1e-5, rtol=1e-5)
    # Gradients, through outputs and final states, for the input and every weight.
    weights = torch.randn_like(twin_out)
    (twin_out * weights).sum().add(twin_h.sum()).backward()
    twin_x_grad, x.grad = x.grad.clone(), None
    (ours.outputs * weights).sum().add(ours.h.sum()).backward()
    torch.testing.assert_close(x.grad, twin_x_grad, atol=1e-5, rtol=1e-5)
    for index, cell in enumerate(stack.cells):
        layer, direction = divmod(index, 2)
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        for name, ours in TORCH_NAMES.items():
            torch.testing.assert_close(
                cell.get_parameter(ours).grad, getattr(twin, name + suffix).grad, atol=1e-5, rtol=1e-5
            )


def sigma(v: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-v))


def reference_step(kind: str, cell, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None):
    """The issue's equations, written out: W[h, x] with the weights split by gate."""
    H = cell.hidden_size
    hx = torch.cat([h, x])
    W = torch.cat([cell.hidden_proj.weight, cell.input_proj.weight], dim=1)  # acts on [h, x]
    b = cell.input_proj.bias + cell.hidden_proj.bias
    gate = lambda k: W[k * H : (k + 1) * H] @ hx + b[k * H : (k + 1) * H]  # noqa: E731
    if kind in ("lstm", "peephole"):
        peep = kind == "peephole"
        i = sigma(gate(0) + (cell.peephole_i * c if peep else 0))
        f = sigma(gate(1) + (cell.peephole_f * c if peep else 0))
        candidate = torch.tanh(gate(2))
        c_t = f * c + i * candidate
        o = sigma(gate(3) + (cell.peephole_o * c_t if peep else 0))
        return o * torch.tanh(c_t), c_t
    if kind == "cifg":
        f, candidate, o = sigma(gate(0)), torch.tanh(gate(1)), sigma(gate(2))
        c_t = f * c + (1 - f) * candidate
        return o * torch.tanh(c_t), c_t
    if kind == "gru":
        r = sigma(
            cell.input_proj.weight[:H] @ x
            + cell.input_proj.bias[:H]
            + cell.hidden_proj.weight[:H] @ h
            + cell.hidden_proj.bias[:H]
        )
        u = sigma(
            cell.input_proj.weight[H : 2 * H] @ x
            + cell.input_proj.bias[H : 2 * H]
            + cell.hidden_proj.weight[H : 2 * H] @ h
            + cell.hidden_proj.bias[H : 2 * H]
        )
        candidate = torch.tanh(
            cell.input_proj.weight[2 * H :] @ x
            + cell.input_proj.bias[2 * H :]
            + r * (cell.hidden_proj.weight[2 * H :] @ h + cell.hidden_proj.bias[2 * H :])
        )
        return u * h + (1 - u) * candidate, None
    return torch.tanh(gate(0)), None


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_every_kind_follows_its_equations(kind):
    torch.manual_seed(1)
    stack = RecurrentStack(kind, 4, 3)
    cell = stack.cells[0]
    if kind == "peephole":
        with torch.no_grad():
            for name in ("peephole_i", "peephole_f", "peephole_o"):
                getattr(cell, name).uniform_(-1, 1)  # not the zeros they start at
    x = torch.randn(2, 6, 4)
    ours = stack(x, record=True)
    with torch.no_grad():
        for row in range(2):
            h = torch.zeros(3)
            c = torch.zeros(3) if cell.has_cell_state else None
            for t in range(6):
                h, c = reference_step(kind, cell, x[row, t], h, c)
                torch.testing.assert_close(ours.outputs[row, t], h, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(ours.h[0, row], h, atol=1e-6, rtol=1e-5)
            if c is not None:
                torch.testing.assert_close(ours.c[0, row], c, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_a_translation_step_computes_what_a_training_step_does(kind):
    """Without autograd an lstm step works in place and through tanh(x) = 2 sigmoid(2x) - 1
    (nmt.model.cells.tanh_); it must give the training step's h and c, saturated units included."""
    torch.manual_seed(4)
    cell = make_cell(kind, 6, 5)
    x, h = torch.randn(7, 6) * 3, torch.randn(7, 5)
    c = torch.randn(7, 5) * 4 if cell.has_cell_state else None
    projected = cell.input_proj(x)
    trained_h, trained_c, _ = cell.step(projected, h, c)
    assert trained_h.requires_grad
    with torch.inference_mode():
        translated_h, translated_c, _ = cell.step(projected.detach(), h, c)
    torch.testing.assert_close(translated_h, trained_h.detach(), atol=1e-6, rtol=1e-5)
    if c is not None:
        torch.testing.assert_close(translated_c, trained_c.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", CELL_KINDS)
def test_padding_never_updates_the_state(kind):
    torch.manual_seed(2)
    stack = RecurrentStack(kind, 5, 4, num_layers=2, bidirectional=True).eval()
    x = padded_input(seed=3)
    batched = stack(x, LENGTHS, record=True)
    for row, n in enumerate(LENGTHS.tolist()):
        alone = stack(x[row : row + 1, :n], record=True)
        torch.testing.assert_close(batched.outputs[row, :n], alone.outputs[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(batched.h[:, row], alone.h[:, 0], atol=1e-6, rtol=1e-5)
        assert batched.outputs[row, n:].abs().sum() == 0


def test_recorded_gates_have_a_value_per_step_and_unit():
    stack = RecurrentStack("lstm", 5, 4, num_layers=2, bidirectional=True)
    out = stack(padded_input(), LENGTHS, record=True)
    assert len(out.gates) == 4
    assert set(out.gates[0]) == {"forget", "input", "output", "cell", "hidden"}
    assert out.gates[0]["forget"].shape == (4, 7, 4)
    forget = out.gates[0]["forget"].detach()
    assert float(forget.min()) > 0 and float(forget.max()) < 1
    gru = RecurrentStack("gru", 5, 4)(padded_input(), LENGTHS, record=True)
    assert set(gru.gates[0]) == {"update", "reset", "hidden"}


@pytest.mark.parametrize("kind", ["lstm", "peephole", "cifg", "gru"])
def test_forget_bias_opens_the_forget_gate(kind):
    cell = make_cell(kind, 3, 4)
    set_forget_bias(cell, 1.0)
    with torch.no_grad():
        cell.input_proj.weight.zero_()
        cell.hidden_proj.weight.zero_()
        _, _, gates = cell.step(
            cell.input_proj(torch.zeros(1, 1, 3))[:, 0],
            torch.zeros(1, 4),
            torch.zeros(1, 4) if cell.has_cell_state else None,
            record=True,
        )
    name = "update" if kind == "gru" else "forget"
    torch.testing.assert_close(gates[name], torch.full((1, 4), float(torch.sigmoid(torch.tensor(1.0)))))
