"""Running searches (continuous batching): sentences that join a search under way get what they
get alone, and the oneDNN products translation uses compute what torch's do."""

import copy

import pytest
import torch
from helpers import PAIRS, lively_model, random_batch, small_model

from nmt.config import DecoderConfig, SearchOptions
from nmt.model.onednn import OneDNNLinear, onednn_available, use_onednn_linears
from nmt.search import can_join, search, start_search
from nmt.translation import Translator

OPTIONS = dict(max_len_a=1.0, max_len_b=3, min_len=2)  # each sentence its own length limit


def join_one_per_step(model, src: torch.Tensor, lengths: torch.Tensor, options: SearchOptions) -> dict:
    """Sentence i joins the search at its step i (two at once at step 3) -> hypotheses by sentence."""
    running, results, waiting = start_search(model, options), {}, list(range(src.size(0)))
    while waiting or running.busy:
        joining = waiting[:2] if len(waiting) > 1 and running.busy and waiting[0] == 3 else waiting[:1]
        if joining:
            waiting = waiting[len(joining) :]
            running.add(src[joining][:, : int(lengths[joining].max())], lengths[joining], joining)
        results.update(running.step())
    return results


@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("attention", ["none", "bahdanau", "luong_dot"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sentences_that_join_a_search_under_way_get_what_they_get_alone(beam, attention, cell):
    model = lively_model(attention=attention, decoder=DecoderConfig(hidden_size=24, num_layers=2, cell=cell))
    src, lengths = random_batch([5, 3, 8, 2, 6, 7, 4])
    options = SearchOptions(beam_size=beam, nbest=beam, **OPTIONS)
    joined = join_one_per_step(model, src, lengths, options)
    assert sorted(joined) == list(range(src.size(0)))
    outputs = set()
    for i in range(src.size(0)):
        alone = search(model, src[i : i + 1, : lengths[i]], lengths[i : i + 1], options)[0]
        assert [h.tokens for h in joined[i]] == [h.tokens for h in alone], i
        assert [h.score for h in joined[i]] == pytest.approx([h.score for h in alone], abs=1e-4)
        outputs.add(tuple(joined[i][0].tokens))
    assert len(outputs) > 3 and len({len(tokens) for tokens in outputs}) > 2  # a test that can fail


def test_a_joined_state_pads_and_masks_the_shorter_sources():
    model = small_model()
    first = model.init_decoder(model.encode(*random_batch([3, 2])))
    second = model.init_decoder(model.encode(*random_batch([6], seed=1)))
    joined = first.join(second)
    assert joined.memory.shape[:2] == joined.keys.shape[:2] == joined.src_mask.shape == (3, 6)
    assert joined.src_mask.sum(1).tolist() == [3, 2, 6]
    assert joined.memory[0, 3:].abs().sum() == 0
    torch.testing.assert_close(joined.hidden.h[:, 2], second.hidden.h[:, 0])
    with pytest.raises(ValueError, match="beams per sentence"):
        first.reorder_beams(torch.tensor([0, 0, 1, 1])).join(second)


@pytest.mark.parametrize(
    "options", [SearchOptions(sample=True), SearchOptions(no_repeat_ngram=2), SearchOptions(return_attention=True)]
)
def test_searches_whose_state_follows_the_batch_refuse_late_sentences(options):
    model = small_model()
    running = start_search(model, options)
    running.add(*random_batch([4]), ["first"])
    running.step()
    assert not can_join(options)
    with pytest.raises(ValueError, match="cannot join"):
        running.add(*random_batch([3]), ["late"])


def test_a_running_translation_returns_each_request_when_its_last_line_is_done(trained_run):
    translator = Translator.load(trained_run, beam_size=3, device="cpu", workers=1)
    lines = [PAIRS[0][0], "", PAIRS[5][0]]
    running = translator.running()
    done_at_once = running.add({"a": lines, "blank": ["", "  "]})  # a request of blank lines is done at once
    assert [key for key, _ in done_at_once] == ["blank"]
    assert [t.text for t in done_at_once[0][1]] == ["", ""] and running.busy
    finished = {}
    while running.busy:
        finished.update(running.step())
    expected = translator.translate_lines(lines)
    assert [t.text for t in finished["a"]] == [t.text for t in expected]
    assert finished["a"][1].text == ""


@pytest.mark.skipif(not onednn_available(), reason="this torch has no oneDNN linear kernel")
def test_onednn_products_keep_the_weights_and_compute_what_torchs_do():
    model = lively_model(attention="bahdanau", tie_embeddings=True)
    swapped = use_onednn_linears(copy.deepcopy(model))
    assert isinstance(swapped.decoder.output, OneDNNLinear)
    assert swapped.decoder.output.weight is swapped.decoder.embed.weight  # still tied
    assert swapped.state_dict().keys() == model.state_dict().keys()
    src, lengths = random_batch([5, 3, 8, 2])
    options = SearchOptions(beam_size=3, nbest=3, **OPTIONS)
    with torch.inference_mode():
        ours, theirs = search(swapped, src, lengths, options), search(model, src, lengths, options)
        memory = swapped.encode(src, lengths).memory
        torch.testing.assert_close(memory, model.encode(src, lengths).memory)
    for a, b in zip(ours, theirs):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
