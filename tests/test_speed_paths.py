"""The fast paths (input-feeding decoder loop, beams that share their memory, bf16, int8)
give what the plain paths give."""

import subprocess
import sys

import pytest
import torch
from helpers import PAIRS, VOCAB, random_batch, small_model

from nmt.config import CELL_KINDS, DecoderConfig
from nmt.data.batching import collate_src
from nmt.data.tokenizer import BOS_ID, EOS_ID
from nmt.model.device import autocast
from nmt.model.quantize import quantize_int8
from nmt.search import SearchOptions, search
from nmt.translation import Translator, load_model


@pytest.mark.parametrize("cell", CELL_KINDS)
def test_the_input_feeding_loop_computes_what_the_search_step_does_with_gradients(cell):
    """Training's input-feeding loop (the first layer's embedding half projected for the whole
    target at once) against stepping the decoder as search does, with autograd on: the same
    log-probabilities and the same gradients."""
    model = small_model(decoder=DecoderConfig(hidden_size=24, num_layers=2, cell=cell)).train()
    src, lengths = random_batch([5, 3, 8])
    tgt_in = torch.randint(4, VOCAB, (3, 6))

    def run(stepped: bool):
        model.zero_grad()
        state = model.init_decoder(model.encode(src, lengths))
        if stepped:
            steps = []
            for t in range(tgt_in.size(1)):
                log_probs, state = model.step(tgt_in[:, t], state)
                steps.append(log_probs)
            log_probs = torch.stack(steps, dim=1)
        else:
            log_probs = model.decoder(tgt_in, state).log_softmax(-1)
        log_probs.square().mean().backward()
        return log_probs.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    forced_log_probs, forced_grads = run(stepped=False)
    stepped_log_probs, stepped_grads = run(stepped=True)
    torch.testing.assert_close(forced_log_probs, stepped_log_probs, atol=1e-5, rtol=1e-5)
    assert forced_grads.keys() == stepped_grads.keys()
    for name in forced_grads:
        torch.testing.assert_close(forced_grads[name], stepped_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general", "luong_dot"])
@pytest.mark.parametrize("input_feeding", [True, False])
def test_beams_share_their_sentences_memory_and_decode_as_copies_of_it_would(attention, input_feeding):
    """Beam search's rows share one copy of their sentence's memory (given their beams, chosen
    among them, sentences selected); every step gives what one row per copy of it gives."""
    model = small_model(attention=attention, input_feeding=input_feeding)
    src, lengths = random_batch([5, 3, 8])
    tokens = [torch.tensor(row) for row in ([4, 5, 6, 7, 8, 9], [7, 7, 4, 5, 6, 6], [5, 9, 8, 4, 4, 7])]
    two_each = torch.tensor([0, 0, 1, 1, 2, 2])
    within = torch.tensor([1, 1, 3, 2, 4, 5])  # each row takes a beam of its own sentence
    with torch.no_grad():
        start = model.init_decoder(model.encode(src, lengths))
        shared = start.reorder_beams(two_each)  # two beams each
        copied = start.select_sentences(two_each)  # a sentence per row
        assert shared.memory is start.memory and shared.keys is start.keys
        moves = [
            (lambda state: state.reorder_beams(within), lambda state: state.select_sentences(within)),
            (
                lambda state: state.select_sentences(torch.tensor([2, 0])),
                lambda state: state.select_sentences(torch.tensor([4, 5, 0, 1])),
            ),
        ]
        for t, move in enumerate([None, *moves]):
            if move is not None:
                moved = move[0](shared)
                if t == 1:
                    assert moved.memory is shared.memory and moved.keys is shared.keys
                shared, copied = moved, move[1](copied)
            prev = tokens[t][: shared.hidden.h.size(1)]
            shared_log_probs, shared = model.step(prev, shared)
            copied_log_probs, copied = model.step(prev, copied)
            torch.testing.assert_close(shared_log_probs, copied_log_probs, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(shared.attention_weights, copied.attention_weights, atol=1e-6, rtol=1e-5)
    assert shared.beams == 2 and shared.memory.size(0) == 2 and copied.memory.size(0) == 4


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
    reference = Translator.load(trained_run, options, device="cpu")
    src_ids = reference.tokenizer.encode_src([src for src, _ in PAIRS[:40]])
    expected = [hypotheses[0].tokens for hypotheses in reference.search_ids(src_ids)]
    for kwargs in ({"precision": "bf16"}, {"quantize": "int8"}):
        found = [
            hypotheses[0].tokens
            for hypotheses in Translator.load(trained_run, options, device="cpu", **kwargs).search_ids(src_ids)
        ]
        assert sum(a == b for a, b in zip(expected, found)) >= 0.5 * len(src_ids), kwargs
        for ids, fp32_tokens, tokens in zip(src_ids, expected, found):
            if tokens != fp32_tokens:
                gap = _fp32_mean_log_prob(reference.model, ids, fp32_tokens) - _fp32_mean_log_prob(
                    reference.model, ids, tokens
                )
                assert gap < 0.02, (kwargs, fp32_tokens, tokens, gap)


def test_int8_replaces_the_decoders_products(trained_run):
    model, _, _ = load_model(trained_run, device="cpu")
    src, lengths = collate_src([[5, 6, 7, 8]])
    with torch.inference_mode():
        before = search(model, src, lengths, SearchOptions(beam_size=1))[0][0]
        quantize_int8(model)
        after = search(model, src, lengths, SearchOptions(beam_size=1))[0][0]
    for cell in model.decoder.rnn.cells:
        assert "quantized" in type(cell.input_proj).__module__ and "quantized" in type(cell.hidden_proj).__module__
    # The encoder runs torch's int8 LSTM (a float copy of it was once returned unquantized).
    assert "quantized" in type(model.encoder.rnn.kernel).__module__
    assert "quantized" in type(model.decoder.output).__module__  # torch's dynamic int8 Linear
    assert "quantized" in type(model.decoder.attention.query_proj).__module__
    # Bahdanau's one-output v stays float: quantizing its large input would cost more than it saves.
    assert type(model.decoder.attention.energy) is torch.nn.Linear
    assert abs(after.log_prob - before.log_prob) < 0.5 * max(1.0, abs(before.log_prob))


def test_a_torch_without_int8_quantization_refuses_only_int8(trained_run, monkeypatch):
    """torch.ao.quantization is deprecated upstream. A torch without it must still load and
    translate in float; only --quantize int8 fails, with a message."""
    blocked = "torch.ao.nn.quantized.dynamic"
    code = f"import sys, torch; sys.modules[{blocked!r}] = None; import nmt.cli.translate, nmt.cli.evaluate"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(RuntimeError, match=r"no dynamic int8 quantization.*translate without --quantize"):
        Translator.load(trained_run, device="cpu", quantize="int8")


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_one_softmax_loss_equals_torchs_cross_entropy(smoothing):
    import torch.nn.functional as F

    from nmt.training.loss import sequence_loss

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
    from nmt.data.batching import collate, pack_targets
    from nmt.model.decoder import rows_running, shrink_stages
    from nmt.training.loss import sequence_loss

    model = small_model(input_feeding=input_feeding).train()
    generator = torch.Generator().manual_seed(3)
    # Eleven target lengths from 1 to 17: the running rows fall below 80 % several times.
    tgt_lengths = [17, 1, 9, 12, 3, 16, 5, 2, 9, 14, 7]
    tgt = [torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in tgt_lengths]
    src = [torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in [4, 9, 2, 12, 6, 3, 8, 5, 11, 7, 1]]
    batch = collate(src, tgt)
    assert batch.tgt_lengths.tolist() == sorted((n + 1 for n in tgt_lengths), reverse=True)
    assert len(shrink_stages(rows_running(batch.tgt_lengths.tolist()))) >= 4

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


@pytest.mark.parametrize("input_feeding", [True, False])
def test_search_steps_with_a_table_follow_weights_that_fused_adam_changed(input_feeding):
    """`for_search()` looks the first layer's embedding half up in a table made from the weights
    of that moment. Its steps must give the teacher-forced log-probabilities, and a new one must
    follow weights that torch's fused Adam changed (fused Adam leaves the version counters alone:
    a table cached on them once kept a run's first weights for all its validations). Teacher
    forcing runs with autograd, so the steps' in-place arithmetic is held to training's too."""
    model = small_model(input_feeding=input_feeding)
    src, lengths = random_batch([5, 3, 8])
    tgt_in = torch.tensor([[2, 7], [2, 5], [2, 9]])

    def stepped_and_forced():
        searcher = model.for_search()
        assert searcher is not model and searcher.table.embedded.shape == (VOCAB, 4 * 24)
        with torch.no_grad():
            state = searcher.init_decoder(searcher.encode(src, lengths))
            first, state = searcher.step(tgt_in[:, 0], state)
            second, _ = searcher.step(tgt_in[:, 1], state)
        forced = model(src, lengths, tgt_in).log_softmax(-1).detach()
        return torch.stack([first, second], dim=1), forced

    before, forced = stepped_and_forced()
    torch.testing.assert_close(before, forced, atol=1e-5, rtol=1e-5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, fused=True)  # as the trainer's
    model(src, lengths, tgt_in).logsumexp(-1).sum().backward()
    optimizer.step()
    after, forced_after = stepped_and_forced()
    assert (after - before).abs().max() > 1e-3  # the change shows
    torch.testing.assert_close(after, forced_after, atol=1e-5, rtol=1e-5)


def test_int8_and_large_vocabularies_search_without_a_table(trained_run, monkeypatch):
    model, _, _ = load_model(trained_run, device="cpu")
    monkeypatch.setattr("nmt.model.decoder.TABLE_MAX_FLOATS", 0)
    assert model.for_search() is model
    monkeypatch.undo()
    assert model.for_search() is not model
    assert quantize_int8(model).for_search() is model
