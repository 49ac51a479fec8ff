"""Properties over many generated inputs (hypothesis): the tokenizer round-trips what it can
represent, every batcher deals each example once within its budget, and translation gives one
line out for every line in, in order, whatever the Unicode."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from helpers import PAIRS  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from nmt.data.batching import BATCHERS, pair_costs  # noqa: E402
from nmt.data.tokenizer import Tokenizer  # noqa: E402

TARGETS = [en for _, en in PAIRS]
ALPHABET = sorted({char for text in TARGETS for char in text if not char.isspace()})
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train([de for de, _ in PAIRS], TARGETS, vocab_size=80)


words = st.text(alphabet=ALPHABET, min_size=1, max_size=12)


@FEW
@given(st.lists(words, min_size=1, max_size=12))
def test_the_tokenizer_round_trips_text_made_of_its_characters(tokenizer, sentence_words):
    text = " ".join(sentence_words)  # single spaces: SentencePiece normalizes whitespace
    ids = tokenizer.encode_tgt([text])[0]
    assert tokenizer.decode_tgt([ids])[0] == text


@FEW
@given(
    st.sampled_from(sorted(BATCHERS)),
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=200),
    st.integers(1, 400),
    st.integers(0, 3),
)
def test_every_batcher_deals_each_example_once_within_its_budget(kind, lengths, batch_tokens, epoch):
    src, tgt = [s for s, _ in lengths], [t for _, t in lengths]
    batches = BATCHERS[kind](src, tgt, batch_tokens, seed=7).epoch_batches(epoch)
    dealt = sorted(i for batch in batches for i in batch)
    assert dealt == list(range(len(lengths)))
    costs = pair_costs(src, tgt)
    for batch in batches:
        if len(batch) == 1:
            continue  # a pair over the budget gets a batch of its own
        if kind == "length":  # padded: batch size x its longest pair
            assert len(batch) * max(costs[i] for i in batch) <= batch_tokens
        else:  # summed, padding not counted
            assert sum(costs[i] for i in batch) <= batch_tokens


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(max_size=40).map(lambda s: s.replace("\n", "")), max_size=8))
def test_nmt_translate_gives_one_line_out_for_every_line_in_in_order(trained_run, tmp_path_factory, lines):
    """Any Unicode but the line feed itself: carriage returns, U+2028, NUL, lone surrogates'
    replacements, emoji. The empty lines stay empty, in their places."""
    import nmt.cli.translate

    directory = tmp_path_factory.mktemp("lines")
    source, output = directory / "in.txt", directory / "out.txt"
    source.write_bytes("".join(f"{line}\n" for line in lines).encode("utf-8", errors="surrogatepass"))
    argv = [str(trained_run), "-i", str(source), "-o", str(output), "--beam", "2", "--workers", "1", "--no-progress"]
    assert nmt.cli.translate.main([*argv, "--device", "cpu"]) == 0
    out = output.read_text(encoding="utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)
    for line, translated in zip(lines, out):
        if not line.rstrip("\r").strip():
            assert translated == ""
