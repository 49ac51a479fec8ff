"""What the tests share besides fixtures: a toy corpus, a small model, a toy decoder.

The toy corpus is made here, in every source layout nmt reads; the small model is a real
Seq2Seq; `TableModel` implements the decoding protocol with a fixed table of next-piece
log-probabilities, so searches can be held to their definitions.
"""

from __future__ import annotations

import gzip
import importlib
import itertools
import math
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from nmt.config import Config, DataConfig, DecoderConfig, EncoderConfig, ModelConfig, TokenizerConfig, TrainConfig
from nmt.data.batching import pad
from nmt.data.tokenizer import EOS_ID
from nmt.model.seq2seq import Seq2Seq, build_model

SCRIPTS = Path(__file__).parent.parent / "scripts"


def script_module(name: str) -> ModuleType:
    """scripts/NAME.py as a module, importing its neighbours as `python scripts/NAME.py` lets it."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


SUBJECTS = [
    ("der Hund", "the dog"),
    ("die Katze", "the cat"),
    ("ein Mann", "a man"),
    ("eine Frau", "a woman"),
    ("das Kind", "the child"),
    ("der Junge", "the boy"),
]
VERBS = [
    ("läuft", "runs"),
    ("schläft", "sleeps"),
    ("spielt", "plays"),
    ("springt", "jumps"),
    ("isst", "eats"),
    ("lacht", "laughs"),
]
PLACES = [
    ("im Park", "in the park"),
    ("am Strand", "on the beach"),
    ("auf der Straße", "on the street"),
    ("im Schnee", "in the snow"),
    ("", ""),
]


def make_pairs() -> list[tuple[str, str]]:
    """180 German-English pairs of a toy grammar (subject, verb, optional place), shuffled so
    that every word of the validation and test pairs is seen in training."""
    pairs = []
    for (sd, se), (vd, ve), (pd, pe) in itertools.product(SUBJECTS, VERBS, PLACES):
        de = f"{sd[0].upper()}{sd[1:]} {vd} {pd}".strip() + "."
        en = f"{se[0].upper()}{se[1:]} {ve} {pe}".strip() + "."
        pairs.append((de, en))
    random.Random(0).shuffle(pairs)
    return pairs


PAIRS = make_pairs()
SPLITS = {"train": PAIRS[:140], "val": PAIRS[140:160], "test": PAIRS[160:]}


def write_lines(path: Path, lines: list[str]) -> None:
    data = ("\n".join(lines) + "\n").encode("utf-8")
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


VOCAB = 40  # the small model's source and target vocabulary


def small_model(**overrides) -> Seq2Seq:
    """A 2-layer attention model with no dropout, seeded: the same weights at every call."""
    options = dict(
        embed_dim=16,
        encoder=EncoderConfig(hidden_size=12, num_layers=2, bidirectional=True),
        decoder=DecoderConfig(hidden_size=24, num_layers=2),
        attention="bahdanau",
        input_feeding=True,
        dropout=0.0,
    )
    options.update(overrides)
    torch.manual_seed(0)
    return build_model(ModelConfig(**options), VOCAB, VOCAB).eval()


def lively_model(**overrides) -> Seq2Seq:
    """small_model with its weights scaled up (a small random model repeats one piece) and eos made
    likely: its sentences take different pieces and end at different steps."""
    model = small_model(**overrides)
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(12)
        model.decoder.output.bias[EOS_ID] += 3
    return model


def random_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, VOCAB, (n,), generator=generator).tolist() for n in lengths]
    return pad(rows), torch.tensor(lengths)


def toy_cli_overrides(corpus: Path) -> list[str]:
    """nmt-train's overrides for tiny_config's data and model on the toy corpus (command-line tests)."""
    return [
        f"data.source={corpus}",
        "data.name=toy",
        "data.tokenizer.vocab_size=80",
        "model.embed_dim=16",
        "model.encoder.hidden_size=16",
        "model.encoder.num_layers=1",
        "model.decoder.hidden_size=32",
        "model.decoder.num_layers=1",
        "train.batch_tokens=300",
        "train.max_epochs=0",
        "train.num_threads=1",
    ]


def tiny_config(source: Path, **train) -> Config:
    train_options = dict(
        batch_tokens=300,
        lr=0.003,
        max_epochs=0,
        max_steps=12,
        save_every=4,
        log_every=4,
        validate_every=6,
        label_smoothing=0.1,
        num_threads=1,
    )
    train_options.update(train)
    return Config(
        data=DataConfig(name="toy", source=str(source), tokenizer=TokenizerConfig(vocab_size=80)),
        model=ModelConfig(embed_dim=16, encoder=EncoderConfig(16, 1, True), decoder=DecoderConfig(32, 1), dropout=0.3),
        train=TrainConfig(**train_options),
    )


# --- a toy model of the decoding protocol ------------------------------------------------------
NEVER = -1e4  # the log-probability of what a table never produces


@dataclass
class TableState:
    """The decoding protocol's state for TableModel: which sentence every row belongs to."""

    rows: torch.Tensor  # (rows,) the sentence of every row
    sentences: int
    attention_weights: None = None

    @property
    def beams(self) -> int:
        return self.rows.numel() // self.sentences

    def reorder_beams(self, parents: torch.Tensor) -> TableState:
        assert (
            self.rows[parents] == torch.arange(self.sentences).repeat_interleave(parents.numel() // self.sentences)
        ).all()
        return TableState(self.rows[parents], self.sentences)

    def select_sentences(self, sentences: torch.Tensor) -> TableState:
        return TableState(self.rows.view(-1, self.beams)[sentences].reshape(-1), sentences.numel())

    def join(self, other: TableState) -> TableState:
        return TableState(torch.cat([self.rows, other.rows + self.sentences]), self.sentences + other.sentences)


class TableModel:
    """Next-piece log-probabilities that depend only on the previous piece: a (vocab, vocab) table."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def encode(self, src, src_lengths):
        return src

    def init_decoder(self, encoded) -> TableState:
        return TableState(torch.arange(encoded.size(0)), encoded.size(0))

    def step(self, prev_tokens, state):
        return self.table[prev_tokens].clone(), state


def table_from(rows: dict[int, dict[int, float]], vocab: int = 7) -> torch.Tensor:
    """A table from {previous piece: {next piece: probability}}; anything else is NEVER."""
    table = torch.full((vocab, vocab), NEVER)
    for prev, nexts in rows.items():
        for token, prob in nexts.items():
            table[prev, token] = math.log(prob)
    return table


# --- a running nmt-serve ----------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError("nmt-serve did not become ready")


def start_server(run: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`nmt-serve RUN` on a free port, once it answers /ready -> (process, its URL)."""
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "nmt-serve"), str(run), "--port", str(port), "--device", "cpu", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process)
    return process, url
