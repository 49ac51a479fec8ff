"""A weight used at every step of a loop gets the same gradient when it is computed once."""

import torch
import torch.nn.functional as F

from nmt.deferred import DeferredLinear


def run_loop(weight, bias, inputs, deferred: bool):
    """A little recurrence: each step reads the last step's output, rows shrink as in training's
    decoder, and the last step's output is never used (its gradient never arrives)."""
    linear = DeferredLinear(weight, bias) if deferred else (lambda x: F.linear(x, weight, bias))
    state = torch.zeros(inputs[0].size(0), weight.size(0))
    loss = torch.zeros(())
    for step, x in enumerate(inputs):
        rows = x.size(0)
        state = torch.tanh(linear(torch.cat([x, state[:rows]], dim=-1)[:, : weight.size(1)]) + state[:rows])
        if step < len(inputs) - 1:
            loss = loss + (state * torch.linspace(-1, 1, state.size(1))).sum()
    return loss


def test_deferred_gradients_equal_autograds_per_step_ones():
    torch.manual_seed(0)
    weight = torch.randn(6, 5, requires_grad=True)
    bias = torch.randn(6, requires_grad=True)
    inputs = [torch.randn(rows, 5, requires_grad=True) for rows in (4, 4, 3, 1, 1)]
    grads = []
    for deferred in (False, True):
        loss = run_loop(weight, bias, inputs, deferred)
        grads.append(torch.autograd.grad(loss, [weight, bias, *inputs], allow_unused=True))
    for plain, deferred in zip(*grads):
        if plain is None:  # the last step's input: its output never reaches the loss
            assert deferred is None
        else:
            torch.testing.assert_close(deferred, plain)


def test_outside_autograd_it_is_a_plain_product():
    weight, x = torch.randn(3, 2, requires_grad=True), torch.randn(4, 2)
    with torch.no_grad():
        linear = DeferredLinear(weight)
        assert not linear.deferring
        torch.testing.assert_close(linear(x), x @ weight.t())
    assert not linear.inputs  # nothing kept for a backward that will not come
