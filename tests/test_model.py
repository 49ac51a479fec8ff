import pytest
import torch
from helpers import VOCAB, random_batch, small_model

from nmt.config import DecoderConfig, EncoderConfig
from nmt.model.attention import make_attention
from nmt.model.bridge import Bridge
from nmt.model.encoder import RecurrentState
from nmt.model.word_dropout import WordDropout


def test_padding_changes_nothing_for_a_sentence_in_a_batch():
    model = small_model()
    src, lengths = random_batch([5, 9, 3, 7])
    tgt_in = torch.randint(4, VOCAB, (4, 6))
    with torch.no_grad():
        batched = model.encode(src, lengths)
        batched_logits = model(src, lengths, tgt_in)
        for row, n in enumerate(lengths.tolist()):
            alone = model.encode(src[row : row + 1, :n], lengths[row : row + 1])
            torch.testing.assert_close(batched.final.h[:, row], alone.final.h[:, 0])
            torch.testing.assert_close(batched.final.c[:, row], alone.final.c[:, 0])
            torch.testing.assert_close(batched.memory[row, :n], alone.memory[0])
            assert batched.memory[row, n:].abs().sum() == 0
            alone_logits = model(src[row : row + 1, :n], lengths[row : row + 1], tgt_in[row : row + 1])
            torch.testing.assert_close(batched_logits[row], alone_logits[0], atol=1e-5, rtol=1e-5)


def test_encoder_final_state_joins_directions_per_layer():
    model = small_model()
    src, lengths = random_batch([4, 6])
    out = model.encode(src, lengths)
    assert out.memory.shape == (2, 6, 24)
    assert out.final.h.shape == out.final.c.shape == (2, 2, 24)
    # Top layer: the forward half is the output at the last real token, the backward half at 0.
    torch.testing.assert_close(out.final.h[-1, 0, :12], out.memory[0, 3, :12])
    torch.testing.assert_close(out.final.h[-1, 0, 12:], out.memory[0, 0, 12:])


@pytest.mark.parametrize(
    "enc_layers, enc_size, dec_layers, dec_size, mode",
    [(2, 8, 2, 8, "copy"), (2, 16, 2, 8, "per_layer"), (3, 16, 1, 8, "all_layers"), (1, 8, 2, 8, "all_layers")],
)
def test_bridge_maps_every_encoder_layer_to_every_decoder_layer(enc_layers, enc_size, dec_layers, dec_size, mode):
    bridge = Bridge(enc_layers, enc_size, dec_layers, dec_size)
    final = RecurrentState(torch.randn(enc_layers, 5, enc_size), torch.randn(enc_layers, 5, enc_size))
    out = bridge(final)
    assert bridge.mode == mode
    assert out.h.shape == out.c.shape == (dec_layers, 5, dec_size)
    if mode == "copy":
        assert out.h is final.h and out.c is final.c
    else:
        assert out.h.abs().max() < 1  # tanh
        # Each decoder layer depends on the encoder's state: change one encoder row, see it move.
        final.h[:, 0] += 1
        moved = bridge(final)
        assert not torch.allclose(moved.h[:, 0], out.h[:, 0])
        torch.testing.assert_close(moved.h[:, 1:], out.h[:, 1:])


@pytest.mark.parametrize("kind", ["bahdanau", "luong_dot", "luong_general"])
def test_attention_weights_sum_to_one_over_real_tokens_only(kind):
    attention = make_attention(kind, query_size=8, memory_size=8)
    memory = torch.randn(3, 7, 8)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3, [True] + [False] * 6])
    query = torch.randn(3, 5, 8)
    context, weights = attention(query, attention.project_keys(memory), memory, mask)
    assert weights.shape == (3, 5, 7) and context.shape == (3, 5, 8)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    assert (weights.masked_select(~mask.unsqueeze(1).expand_as(weights)) == 0).all()
    torch.testing.assert_close(weights[2, :, 0], torch.ones(5))
    # Padding content cannot leak into the context.
    memory[1, 4:] = 1e6
    context_again, _ = attention(query, attention.project_keys(memory), memory, mask)
    torch.testing.assert_close(context_again[1], context[1])


@pytest.mark.parametrize("attention", ["none", "bahdanau", "luong_dot", "luong_general"])
@pytest.mark.parametrize("input_feeding", [False, True])
def test_teacher_forcing_equals_stepping_the_decoder(attention, input_feeding):
    model = small_model(attention=attention, input_feeding=input_feeding)
    src, lengths = random_batch([5, 3, 8])
    tgt_in = torch.randint(4, VOCAB, (3, 7))
    with torch.no_grad():
        logits = model(src, lengths, tgt_in)
        state = model.init_decoder(model.encode(src, lengths))
        for t in range(tgt_in.size(1)):
            log_probs, state = model.step(tgt_in[:, t], state)
            torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], -1), atol=1e-5, rtol=1e-5)


def test_without_attention_the_final_state_is_the_only_bridge():
    model = small_model(attention="none", input_feeding=False)
    src, lengths = random_batch([5, 6])
    tgt_in = torch.randint(4, VOCAB, (2, 4))
    with torch.no_grad():
        encoded = model.encode(src, lengths)
        state = model.init_decoder(encoded)
        logits = model.decoder(tgt_in, state)
        state.memory = torch.randn_like(state.memory)  # the memory is never read
        again = model.decoder(tgt_in, state)
        torch.testing.assert_close(logits, again)
        state.hidden = RecurrentState(state.hidden.h + 0.5, state.hidden.c)
        moved = model.decoder(tgt_in, state)
        assert not torch.allclose(moved, logits)


def test_selected_sentences_decode_as_they_would_have_in_place():
    model = small_model()
    src, lengths = random_batch([5, 3, 8])
    with torch.no_grad():
        state = model.init_decoder(model.encode(src, lengths))
        _, state = model.step(torch.tensor([4, 5, 6]), state)
        index = torch.tensor([2, 2, 0])
        reordered = state.select_sentences(index)
        log_probs, _ = model.step(torch.tensor([7, 7, 7]), reordered)
        expected, _ = model.step(torch.tensor([7, 7, 7]), state)
    torch.testing.assert_close(log_probs, expected[index])


def test_tied_embeddings_share_the_output_matrix_and_train():
    model = small_model(tie_embeddings=True).train()
    assert model.decoder.output.weight is model.decoder.embed.weight
    src, lengths = random_batch([4, 5])
    logits = model(src, lengths, torch.randint(4, VOCAB, (2, 3)))
    logits.sum().backward()
    assert model.decoder.embed.weight.grad is not None


def test_uniform_initialization_is_bounded_and_pad_embeddings_are_zero():
    model = small_model(forget_bias=None)
    assert all(p.abs().max() <= 0.1 + 1e-6 for p in model.parameters())
    assert model.encoder.embed.weight[0].abs().sum() == 0


def test_forget_gates_start_open_in_encoder_and_decoder():
    model = small_model(forget_bias=1.0)
    for cell in (*model.encoder.rnn.cells, *model.decoder.rnn.cells):
        forget = slice(cell.hidden_size, 2 * cell.hidden_size)  # i, f, candidate, o
        biases = cell.input_proj.bias[forget] + cell.hidden_proj.bias[forget]
        torch.testing.assert_close(biases, torch.ones(cell.hidden_size))


@pytest.mark.parametrize(
    "encoder_cell, decoder_cell",
    [("lstm", "lstm"), ("peephole", "peephole"), ("cifg", "gru"), ("gru", "lstm"), ("rnn", "cifg"), ("gru", "rnn")],
)
def test_every_cell_kind_trains_decodes_and_ignores_padding(encoder_cell, decoder_cell):
    model = small_model(
        encoder=EncoderConfig(hidden_size=12, num_layers=2, bidirectional=True, cell=encoder_cell),
        decoder=DecoderConfig(hidden_size=24, num_layers=1, cell=decoder_cell),
    )
    src, lengths = random_batch([5, 3, 6])
    tgt_in = torch.randint(4, VOCAB, (3, 4))
    with torch.no_grad():
        logits = model(src, lengths, tgt_in)
        state = model.init_decoder(model.encode(src, lengths))
        assert (state.hidden.c is None) == (decoder_cell in ("gru", "rnn"))
        for t in range(tgt_in.size(1)):
            log_probs, state = model.step(tgt_in[:, t], state)
            torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], -1), atol=1e-5, rtol=1e-5)
        alone = model(src[1:2, :3], lengths[1:2], tgt_in[1:2])
        torch.testing.assert_close(alone[0], logits[1], atol=1e-5, rtol=1e-5)
    model.train()
    model(src, lengths, tgt_in).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_a_gru_encoder_gives_an_lstm_decoder_a_zero_cell_state():
    bridge = Bridge(2, 8, 2, 8, encoder_cell_state=False, decoder_cell_state=True)
    out = bridge(RecurrentState(torch.randn(2, 3, 8), None))
    assert out.c is not None and out.c.abs().sum() == 0 and out.h.shape == (2, 3, 8)
    to_gru = Bridge(2, 8, 2, 16, encoder_cell_state=True, decoder_cell_state=False)
    assert to_gru(RecurrentState(torch.randn(2, 3, 8), torch.randn(2, 3, 8))).c is None


def test_word_dropout_zeroes_whole_words_and_keeps_the_expected_input():
    dropout = WordDropout(0.25).train()
    torch.manual_seed(0)
    out = dropout(torch.ones(200, 50, 8))
    dropped = (out == 0).all(-1)  # (batch, length): a word is zeroed whole or not at all
    assert torch.equal(dropped, (out == 0).any(-1))
    assert abs(dropped.float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(out[~dropped], torch.full_like(out[~dropped], 1 / 0.75))
    assert torch.equal(dropout.eval()(out), out)


@pytest.mark.parametrize("side", ["source", "target"])
def test_word_dropout_changes_training_only_on_its_side(side):
    plain = small_model()
    dropping = small_model(**{f"{side}_word_dropout": 0.3})
    src, lengths = random_batch([6, 4, 7])
    tgt_in = torch.randint(4, VOCAB, (3, 5))
    with torch.no_grad():
        # Translation sees the same network: word dropout has no weights and is off in eval.
        torch.testing.assert_close(dropping(src, lengths, tgt_in), plain(src, lengths, tgt_in))
        dropping.train()
        memories = [dropping.encode(src, lengths).memory for _ in range(2)]
        assert torch.equal(*memories) == (side == "target")
        encoded = dropping.encode(src, lengths)
        logits = [dropping.decoder(tgt_in, dropping.init_decoder(encoded)) for _ in range(2)]
        assert torch.equal(*logits) == (side == "source")
