"""The fast paths (input-feeding decoder loop, beams that share their memory, bf16, int8)
give what the plain paths give."""

import subprocess
import sys

import pytest
import torch

from nmt.batching import collate_src
from nmt.precision import autocast
from nmt.quantize import quantize_int8
from nmt.search import SearchOptions, search
from nmt.tokenizer import BOS_ID, EOS_ID
from nmt.translate import Translator, load_model

from conftest import PAIRS
from test_model import VOCAB, random_batch, small_model


@pytest.mark.parametrize("cell", ["lstm", "peephole", "cifg", "gru", "rnn"])
def test_input_feeding_loop_matches_the_stack_path_with_gradients(cell):
    """The decoder's own step loop (cells called directly, embeddings projected at once) against
    the generic per-step path through RecurrentStack: same logits, same gradients."""
    from nmt.config import DecoderConfig

    model = small_model(decoder=DecoderConfig(hidden_size=24, num_layers=2, cell=cell)).train()
    src, lengths = random_batch([5, 3, 8])
    tgt_in = torch.randint(4, VOCAB, (3, 6))

    def run(fast: bool):
        model.zero_grad()
        state = model.init_decoder(model.encode(src, lengths))
        embedded = model.decoder.embed(tgt_in)
        if fast:
            attentional, _ = model.decoder._teacher_force_feeding(embedded, state)
        else:
            steps = []
            for t in range(tgt_in.size(1)):
                out, state, _ = model.decoder._run(embedded[:, t : t + 1], state)
                steps.append(out)
            attentional = torch.cat(steps, dim=1)
        logits = model.decoder.output(attentional)
        logits.square().mean().backward()
        return logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    fast_logits, fast_grads = run(fast=True)
    slow_logits, slow_grads = run(fast=False)
    torch.testing.assert_close(fast_logits, slow_logits, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == slow_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general", "luong_dot"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_beams_share_their_sentences_memory_and_decode_as_copies_of_it_would(attention, input_feeding):
    """Beam search's rows share one copy of their sentence's memory (given their beams, chosen
    among them, sentences selected); every step gives what one row per copy of it gives."""
    model = small_model(attention=attention, input_feeding=input_feeding)
    src, lengths = random_batch([5, 3, 8])
    tokens = [torch.tensor(row) for row in ([4, 5, 6, 7, 8, 9], [7, 7, 4, 5, 6, 6], [5, 9, 8, 4, 4, 7])]
    within = torch.tensor([1, 1, 3, 2, 4, 5])  # each row takes a beam of its own sentence
    with torch.no_grad():
        start = model.init_decoder(model.encode(src, lengths))
        shared = start.reorder(torch.tensor([0, 0, 1, 1, 2, 2]), same_sources=True)  # two beams each
        copied = start.reorder(torch.tensor([0, 0, 1, 1, 2, 2]))  # a sentence per row
        assert shared.memory is start.memory and shared.keys is start.keys
        steps = [
            lambda state: state.reorder(within, same_sources=True),
            lambda state: state.select_sentences(torch.tensor([2, 0])) if state.beams > 1
            else state.reorder(torch.tensor([4, 5, 0, 1])),
        ]
        for t, move in enumerate([None, *steps]):
            if move is not None:
                moved = move(shared)
                if t == 1:
                    assert moved.memory is shared.memory and moved.keys is shared.keys
                shared, copied = moved, move(copied)
            prev = tokens[t][: shared.hidden.h.size(1)]
            shared_log_probs, shared = model.decoder.step(prev, shared)
            copied_log_probs, copied = model.decoder.step(prev, copied)
            torch.testing.assert_close(shared_log_probs, copied_log_probs, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(shared.attention_weights, copied.attention_weights, atol=1e-6, rtol=1e-5)
    assert shared.beams == 2 and shared.memory.size(0) == 2 and copied.memory.size(0) == 4
    with pytest.raises(ValueError, match="within their sentence"):
        shared.reorder(torch.tensor([0, 1, 2, 3]))


def test_bf16_training_step_runs_in_bf16_and_tracks_fp32():
    model = small_model().train()
    src, lengths = random_batch([5, 3, 8])
    tgt_in = torch.randint(4, VOCAB, (3, 6))
    logits32 = model(src, lengths, tgt_in)
    with autocast("bf16", torch.device("cpu")):
        logits16 = model(src, lengths, tgt_in)
    assert logits16.dtype == torch.bfloat16
    torch.testing.assert_close(logits16.float(), logits32, atol=0.05, rtol=0.05)
    logits16.float().sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="precision"):
        autocast("fp8", torch.device("cpu"))


def _fp32_mean_log_prob(model, src_ids: list[int], tokens: list[int]) -> float:
    """The fp32 model's log-probability of tokens + eos, per token (teacher forced)."""
    src, lengths = collate_src([src_ids])
    with torch.no_grad():
        logits = model(src, lengths, torch.tensor([[BOS_ID, *tokens]]))  # (1, len + 1, vocab)
    targets = torch.tensor([*tokens, EOS_ID]).unsqueeze(1)
    return logits[0].log_softmax(-1).gather(1, targets).mean().item()


@pytest.mark.parametrize("beam", [1, 4])
def test_bf16_and_int8_translations_are_fp32s_or_near_ties(trained_run, beam):
    """Rounding may flip a near tie, nothing more: wherever bf16 or int8 output differs from
    fp32's, the fp32 model scores it within 0.02 nats per token of its own choice. (The toy model
    is tiny and full of near ties, "plays" / "jumps": its differing outputs measured at most 0.006
    per token; a broken path misses by whole nats. On the reference model int8 beam 5 scored
    test BLEU 34.20 against fp32's 34.29, README.)"""
    options = SearchOptions(beam_size=beam)
    reference = Translator.from_checkpoint(trained_run, "cpu", options)
    src_ids = reference.tokenizer.encode_src([src for src, _ in PAIRS[:40]])
    expected = [hypotheses[0].tokens for hypotheses in reference.search_ids(src_ids)]
    for kwargs in ({"precision": "bf16"}, {"quantize": "int8"}):
        found = [hypotheses[0].tokens for hypotheses in
                 Translator.from_checkpoint(trained_run, "cpu", options, **kwargs).search_ids(src_ids)]  # fmt: skip
        assert sum(a == b for a, b in zip(expected, found)) >= 0.5 * len(src_ids), kwargs
        for ids, fp32_tokens, tokens in zip(src_ids, expected, found):
            if tokens != fp32_tokens:
                gap = _fp32_mean_log_prob(reference.model, ids, fp32_tokens) - _fp32_mean_log_prob(reference.model, ids, tokens)
                assert gap < 0.02, (kwargs, fp32_tokens, tokens, gap)


def test_int8_replaces_the_decoders_products(trained_run):
    model, _, _ = load_model(trained_run, device="cpu")
    src, lengths = collate_src([[5, 6, 7, 8]])
    with torch.inference_mode():
        before = search(model, src, lengths, SearchOptions(beam_size=1))[0][0]
        quantize_int8(model)
        after = search(model, src, lengths, SearchOptions(beam_size=1))[0][0]
    assert all(cell.int8 is not None for cell in model.decoder.rnn.cells)
    # The encoder runs torch's int8 LSTM (a float copy of it was once returned unquantized).
    assert "quantized" in type(model.encoder.rnn.int8_kernel[0]).__module__
    assert "quantized" in type(model.decoder.output).__module__  # torch's dynamic int8 Linear
    assert "quantized" in type(model.decoder.attention.query_proj).__module__
    # Bahdanau's one-output v stays float: quantizing its large input would cost more than it saves.
    assert type(model.decoder.attention.energy) is torch.nn.Linear
    assert abs(after.log_prob - before.log_prob) < 0.5 * max(1.0, abs(before.log_prob))


def test_a_torch_without_int8_quantization_refuses_only_int8(trained_run, monkeypatch):
    """torch.ao.quantization is deprecated upstream. A torch without it must still load and
    translate in float; only --quantize int8 fails, with a message."""
    blocked = "torch.ao.nn.quantized.dynamic"
    code = f"import sys, torch; sys.modules[{blocked!r}] = None; import nmt.translate, nmt.evaluate"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(RuntimeError, match="no dynamic int8 quantization.*translate without --quantize"):
        Translator.from_checkpoint(trained_run, "cpu", quantize="int8")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_one_softmax_loss_equals_torchs_cross_entropy(smoothing):
    import torch.nn.functional as F

    from nmt.loss import sequence_loss

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator, requires_grad=True)
    target = torch.randint(1, 11, (3, 5), generator=generator)
    target[0, 3:] = 0  # padding
    loss, nll = sequence_loss(logits, target, smoothing)
    flat = logits.reshape(-1, 11), target.reshape(-1)
    expected = F.cross_entropy(*flat, ignore_index=0, label_smoothing=smoothing, reduction="sum")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, F.cross_entropy(*flat, ignore_index=0, reduction="sum").detach())
    (grad,) = torch.autograd.grad(loss, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_the_packed_decoder_drops_ended_sentences_and_changes_nothing(input_feeding):
    """Training's decoder (finished sentences leave the batch, in stages; the output layer and the
    loss see real positions only) against the padded one: the same loss and the same gradients."""
    from nmt.batching import collate, pack_targets
    from nmt.decoder import _rows_running, _stages
    from nmt.loss import sequence_loss

    model = small_model(input_feeding=input_feeding).train()
    generator = torch.Generator().manual_seed(3)
    # Eleven target lengths from 1 to 17: the running rows fall below 80 % several times.
    tgt_lengths = [17, 1, 9, 12, 3, 16, 5, 2, 9, 14, 7]
    tgt = [torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in tgt_lengths]
    src = [torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in [4, 9, 2, 12, 6, 3, 8, 5, 11, 7, 1]]
    batch = collate(src, tgt)
    assert batch.tgt_lengths.tolist() == sorted((n + 1 for n in tgt_lengths), reverse=True)
    assert len(_stages(_rows_running(batch.tgt_lengths.tolist()))) >= 4

    def run(packed: bool):
        model.zero_grad()  # small_model has no dropout: both paths see the same network
        if packed:
            logits = model.forward_packed(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_lengths)
            loss, nll = sequence_loss(logits, pack_targets(batch.tgt_out, batch.tgt_lengths), 0.1)
        else:
            logits = model(batch.src, batch.src_lengths, batch.tgt_in)
            loss, nll = sequence_loss(logits, batch.tgt_out, 0.1)
        loss.backward()
        return loss.detach(), nll, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    packed_loss, packed_nll, packed_grads = run(packed=True)
    padded_loss, padded_nll, padded_grads = run(packed=False)
    torch.testing.assert_close(packed_loss, padded_loss)
    torch.testing.assert_close(packed_nll, padded_nll)
    assert packed_grads.keys() == padded_grads.keys()
    for name in packed_grads:
        torch.testing.assert_close(packed_grads[name], padded_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("change", ["in_place", "fused_adam"])
@pytest.mark.parametrize("table_fits", [True, False])
def test_search_steps_project_the_embedding_from_a_table_that_follows_the_weights(table_fits, change, monkeypatch):
    """Decoder.step looks the first layer's embedding half up in a table made from the weights
    (inside a `search_tables` block, when the table is small enough); it must give the
    teacher-forced logits, also after the weights change between blocks. The trainer's fused
    Adam changes them without bumping torch's version counters: a table keyed on those kept the
    first validation's weights for the rest of a run (validation BLEU 27.76 where the weights
    scored 33). Teacher forcing runs with autograd on, as in training, so the steps' in-place,
    no-autograd arithmetic (nmt.cells.tanh_) is held to training's, too."""
    if not table_fits:
        monkeypatch.setattr("nmt.decoder._SEARCH_TABLE_FLOATS", 0)
    model = small_model()
    src, lengths = random_batch([5, 3, 8])
    tgt_in = torch.tensor([[2, 7], [2, 5], [2, 9]])

    def step_and_forced():
        with torch.no_grad(), model.decoder.search_tables():
            state = model.init_decoder(model.encode(src, lengths))
            first, state = model.decoder.step(tgt_in[:, 0], state)
            assert (model.decoder._search_tables is not None) == table_fits
            second, _ = model.decoder.step(tgt_in[:, 1], state)
        assert model.decoder._search_tables is None  # the block took its table with it
        forced = model(src, lengths, tgt_in).log_softmax(-1).detach()
        return torch.stack([first, second], dim=1), forced

    stepped, forced = step_and_forced()
    torch.testing.assert_close(stepped, forced, atol=1e-5, rtol=1e-5)
    first_layer, embed = model.decoder.rnn.cells[0].weight_ih, model.decoder.embed.weight
    if change == "in_place":
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for weight in (first_layer, embed):
                weight.add_(torch.randn(weight.shape, generator=generator))
    else:
        optimizer = torch.optim.Adam([first_layer, embed], lr=1.0, fused=True)  # as nmt.train's
        model(src, lengths, tgt_in).logsumexp(-1).sum().backward()
        optimizer.step()
    moved, forced_moved = step_and_forced()
    assert (moved - stepped).abs().max() > 1e-3  # the change shows
    torch.testing.assert_close(moved, forced_moved, atol=1e-5, rtol=1e-5)
