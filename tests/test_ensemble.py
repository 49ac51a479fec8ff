"""Ensembles: the mean of the members' log-probabilities at every step, through the decoding
protocol (any cell and attention), and refused across vocabularies."""

from dataclasses import replace

import pytest
import torch
from helpers import PAIRS, lively_model, random_batch

import nmt.cli.evaluate
import nmt.cli.translate
from nmt.checkpoint import Checkpoint
from nmt.config import DecoderConfig
from nmt.data.tokenizer import BOS_ID, EOS_ID, Tokenizer
from nmt.options import SearchOptions
from nmt.search import search, start_search
from nmt.search.ensemble import Ensemble
from nmt.translation import Translator

MEMBERS = [
    dict(attention="bahdanau"),
    dict(attention="none", decoder=DecoderConfig(hidden_size=24, num_layers=2, cell="gru")),
    dict(attention="luong_dot", input_feeding=False),
]


def rescored(model, src, lengths, tokens: list[int]) -> float:
    """The model's teacher-forced log-probability of tokens + eos."""
    tgt_in, tgt_out = torch.tensor([[BOS_ID, *tokens]]), torch.tensor([[*tokens, EOS_ID]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(src, lengths, tgt_in), -1)
    return log_probs.gather(-1, tgt_out.unsqueeze(-1)).sum().item()


@pytest.mark.parametrize("beam", [1, 3])
def test_an_ensembles_hypotheses_score_the_mean_of_its_members_log_probabilities(beam):
    members = [lively_model(**options) for options in MEMBERS]
    src, lengths = random_batch([5, 3, 8])
    options = SearchOptions(beam_size=beam, nbest=beam, length_penalty="none", max_len_a=1.0, max_len_b=3)
    results = search(Ensemble(members), src, lengths, options)
    singles = [search(member, src, lengths, options) for member in members]
    assert any(r[0].tokens != s[i][0].tokens for s in singles for i, r in enumerate(results))  # not one member's
    for row, hypotheses in enumerate(results):
        for hypothesis in hypotheses:
            one = (src[row : row + 1, : lengths[row]], lengths[row : row + 1])
            mean = sum(rescored(member, *one, hypothesis.tokens) for member in members) / len(members)
            assert hypothesis.log_prob == pytest.approx(mean, abs=1e-4)


def test_an_ensemble_of_a_model_with_itself_is_the_model_and_joins_running_searches():
    model = lively_model()
    src, lengths = random_batch([5, 3, 8, 2])
    options = SearchOptions(beam_size=3, nbest=2, max_len_a=1.0, max_len_b=3)
    alone = search(model, src, lengths, options)
    running = start_search(Ensemble([model, model]), options)
    results = {}
    for i in range(src.size(0)):  # one sentence joins at each step
        running.add(src[i : i + 1, : lengths[i]], lengths[i : i + 1], [i])
        results.update(running.step())
    while running.busy:
        results.update(running.step())
    for i, hypotheses in enumerate(alone):
        assert [h.tokens for h in results[i]] == [h.tokens for h in hypotheses]
        assert [h.score for h in results[i]] == pytest.approx([h.score for h in hypotheses], abs=1e-5)


def test_nmt_translate_and_evaluate_take_several_runs_as_an_ensemble(trained_run, tmp_path, capsys):
    source = tmp_path / "src.de"
    source.write_text("".join(de + "\n" for de, _ in PAIRS[:6]))
    out = tmp_path / "out.en"
    assert nmt.cli.translate.main([str(trained_run), str(trained_run), "-i", str(source), "-o", str(out)]) == 0
    single = Translator.load(trained_run, device="cpu", workers=1).translate([de for de, _ in PAIRS[:6]])
    assert out.read_text().splitlines() == single
    reference = tmp_path / "ref.en"
    reference.write_text("".join(en + "\n" for _, en in PAIRS[:6]))
    args = ["--ensemble", "--src", str(source), "--ref", str(reference)]
    assert nmt.cli.evaluate.main([str(trained_run), str(trained_run), *args]) == 0
    table = capsys.readouterr().out
    assert table.count("\n| ") == 2 and " + " in table  # one row, for the ensemble


def test_models_of_different_vocabularies_are_refused_with_one_message(trained_run, tmp_path, capsys):
    checkpoint = trained_run / "checkpoints" / "last.pt"
    loaded = Checkpoint.load(checkpoint)
    state = loaded.tokenizer.state()
    pieces = list(state["output_pieces"])
    unused = next(i for i in range(pieces[-1], 10**6) if i not in pieces)
    other = tmp_path / "other_vocabulary.pt"  # as many target pieces, not the same ones
    replace(loaded, tokenizer=Tokenizer.from_state({**state, "output_pieces": [*pieces[:-1], unused]})).save(other)
    source = tmp_path / "src.de"
    source.write_text(PAIRS[0][0] + "\n")
    assert nmt.cli.translate.main([str(checkpoint), str(other), "-i", str(source)]) == 2
    error = capsys.readouterr().err
    assert "vocabularies differ" in error and "other_vocabulary.pt" in error and "Traceback" not in error
    assert (
        nmt.cli.evaluate.main([str(checkpoint), str(other), "--ensemble", "--src", str(source), "--ref", str(source)])
        == 2
    )
    assert "vocabularies differ" in capsys.readouterr().err
