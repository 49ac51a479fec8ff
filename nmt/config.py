"""Typed configuration: the one place where defaults live.

Hydra composes `conf/` on top of these dataclasses (registered as the schema `nmt_config`), so a
misspelt key stops the run at start; the YAML presets hold only what they change. `to_config`
turns the composed config into these dataclasses; their `__post_init__` checks values, so a bad
value is reported in one line naming the key. The options of search and inference are
`nmt.options`'s. The model, data and search code never see Hydra: they take plain arguments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from nmt.options import (
    DEVICES,
    PRECISIONS,
    ConfigError,
    SearchOptions,
    check,
    check_choice,
    check_positive,
)

ATTENTION_KINDS = ("none", "bahdanau", "luong_dot", "luong_general")
CELL_KINDS = ("lstm", "peephole", "cifg", "gru", "rnn")  # nmt.model.cells registers one class per kind
TOKENIZER_KINDS = ("unigram", "bpe")
INIT_KINDS = ("uniform", "xavier", "pytorch")
BATCHINGS = ("length", "source", "random")
LONG_EPOCH_STEPS = 2000  # train.validate_every=0 validates this often when an epoch is longer
LONG_VALIDATION = 2000  # train.valid_bleu_sentences=0 samples a larger validation split down to this


@dataclass
class TokenizerConfig:
    kind: str = "unigram"  # unigram | bpe
    vocab_size: int = 8000
    joint: bool = True  # one model for both sides, or one per side
    character_coverage: float = 1.0
    # Sentences SentencePiece trains on: a sample of the training pairs drawn with a fixed seed
    # (joint: max_sentences / 2 pairs, both sides; else max_sentences pairs, a model per side);
    # 0: every sentence. A corpus that fits is taken whole, in its order.
    max_sentences: int = 1_000_000
    # An existing tokenizer to use as it is, without training: a SentencePiece `.model` file
    # (joint), or a run directory or its tokenizer/ directory (with its output pieces).
    model: str | None = None
    # The output layer covers only the pieces the training targets use (a joint model's other
    # half never occurs there): a smaller softmax, faster training and search.
    restrict_output: bool = True
    # Subword regularization (Kudo 2018), unigram only: every epoch segments the training pairs
    # anew, each sentence drawn from its `sampling_nbest` most likely segmentations with
    # probability proportional to P^sampling_alpha (smaller alpha: more varied; 0.5 over 16
    # re-segments a third of Multi30k's sentences each epoch). 0: off. Validation, test and
    # translation always take the best segmentation.
    sampling_alpha: float = 0.0
    sampling_nbest: int = 16

    def __post_init__(self) -> None:
        check_choice("data.tokenizer.kind", self.kind, TOKENIZER_KINDS)
        check(
            self.sampling_alpha >= 0.0,
            f"data.tokenizer.sampling_alpha={self.sampling_alpha} must be >= 0 (0 turns subword sampling off)",
        )
        check(
            self.sampling_alpha == 0.0 or self.kind == "unigram",
            "data.tokenizer.sampling_alpha samples segmentations of a unigram model; "
            "set data.tokenizer.kind=unigram or sampling_alpha=0",
        )
        check(
            self.sampling_nbest >= 2,
            f"data.tokenizer.sampling_nbest={self.sampling_nbest} must be >= 2 (segmentations to sample from)",
        )
        check(self.vocab_size >= 16, f"data.tokenizer.vocab_size={self.vocab_size} must be >= 16")
        check(
            0.9 <= self.character_coverage <= 1.0,
            f"data.tokenizer.character_coverage={self.character_coverage} must be in [0.9, 1.0]",
        )
        check_positive("data.tokenizer.max_sentences", self.max_sentences, allow_zero=True)


@dataclass
class CorpusConfig:
    """One training corpus of a mix (`data.corpora.NAME`)."""

    source: str = ""  # as data.source: a hub id, a hub-layout directory or text files
    # The corpus' share of every epoch, relative to the other corpora's weights.
    weight: float = 1.0
    prefix: str = "train"  # its training files' prefix (text files)
    config: str | None = None  # its hub config name (default: data.config)


@dataclass
class DataConfig:
    name: str = "multi30k_de_en"
    # A hub id, a local directory in the hub layout (*.jsonl / parquet / csv), or a directory of
    # line-aligned text files (train.de, train.en, ..., gzipped or not).
    source: str = "bentrevett/multi30k"
    # The hub dataset's config name, for datasets that have several (wmt14: de-en).
    config: str | None = None
    # Training corpora mixed by weight (nmt/data/mixing.py); empty: the train split of `source`,
    # which always gives validation and test.
    corpora: dict[str, CorpusConfig] = field(default_factory=dict)
    # Where prepared stores are kept (nmt/data/store.py); null: $NMT_CACHE, else ~/.cache/nmt.
    cache_dir: str | None = None
    src_lang: str = "de"
    tgt_lang: str = "en"
    # Split names as the training code knows them, mapped to file prefixes for text sources.
    train_prefix: str = "train"
    valid_prefix: str = "val"
    test_prefix: str = "test"
    # Training pairs longer than this (in pieces, either side) are dropped; val/test keep all.
    max_len: int = 100
    # Use only the first N training pairs (0: all); for smoke runs and tests.
    train_limit: int = 0
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def __post_init__(self) -> None:
        check(bool(self.source), "data.source is empty; give a hub id or a local path")
        check(
            self.src_lang != self.tgt_lang,
            f"data.src_lang and data.tgt_lang are both {self.src_lang!r}; give two languages",
        )
        check_positive("data.max_len", self.max_len)
        check_positive("data.train_limit", self.train_limit, allow_zero=True)
        for name, corpus in self.corpora.items():
            check(bool(corpus.source), f"data.corpora.{name}.source is empty; give a hub id or a local path")
            check(corpus.weight > 0, f"data.corpora.{name}.weight={corpus.weight} must be > 0")


@dataclass
class EncoderConfig:
    hidden_size: int = 256  # per direction
    num_layers: int = 2
    bidirectional: bool = True
    cell: str = "lstm"  # one of CELL_KINDS (nmt/model/cells.py)

    def __post_init__(self) -> None:
        check_positive("model.encoder.hidden_size", self.hidden_size)
        check_positive("model.encoder.num_layers", self.num_layers)
        check_choice("model.encoder.cell", self.cell, CELL_KINDS)


@dataclass
class DecoderConfig:
    hidden_size: int = 512
    num_layers: int = 2
    cell: str = "lstm"

    def __post_init__(self) -> None:
        check_positive("model.decoder.hidden_size", self.hidden_size)
        check_positive("model.decoder.num_layers", self.num_layers)
        check_choice("model.decoder.cell", self.cell, CELL_KINDS)


@dataclass
class ModelConfig:
    name: str = "lstm_attention"
    embed_dim: int = 256
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    attention: str = "bahdanau"  # none | bahdanau | luong_dot | luong_general
    # Feed the previous attentional vector into the next decoder input (Luong et al. 2015).
    # Without attention there is no attentional vector, so it has no effect.
    input_feeding: bool = True
    dropout: float = 0.3
    # Whole-word dropout in training: each source token's embedding (and each previous target
    # token's, fed to the decoder) is zeroed with this probability (Marian's --dropout-src/-trg).
    source_word_dropout: float = 0.0
    target_word_dropout: float = 0.0
    # Share the target embedding matrix with the output projection.
    tie_embeddings: bool = False
    init: str = "uniform"  # uniform (+-init_range) | xavier | pytorch (torch's defaults)
    init_range: float = 0.1
    # Initial bias of the forget gate (gru: update gate), the usual remedy for early forgetting;
    # null leaves the initializer's values.
    forget_bias: float | None = 1.0

    def __post_init__(self) -> None:
        check_positive("model.embed_dim", self.embed_dim)
        check_choice("model.attention", self.attention, ATTENTION_KINDS)
        check_choice("model.init", self.init, INIT_KINDS)
        for key in ("dropout", "source_word_dropout", "target_word_dropout"):
            value = getattr(self, key)
            check(0.0 <= value < 1.0, f"model.{key}={value} must be in [0, 1)")
        check_positive("model.init_range", self.init_range)
        encoder_out = self.encoder.hidden_size * (2 if self.encoder.bidirectional else 1)
        check(
            self.attention != "luong_dot" or encoder_out == self.decoder.hidden_size,
            f"model.attention=luong_dot needs the encoder output size ({encoder_out}) to equal "
            f"model.decoder.hidden_size ({self.decoder.hidden_size}); use luong_general or "
            "bahdanau, or change the sizes",
        )


@dataclass
class TrainConfig:
    seed: int = 1234
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda
    num_threads: int = 0  # CPU threads for torch; 0 leaves torch's default (every core)
    # Training processes on this machine, each on a share of every batch (torch.distributed with
    # DDP; nmt-train starts them through torch's launcher, as torchrun --standalone). 0: in fp32 one
    # per core on a Linux CPU while each share keeps ~1,000 batch tokens, one per GPU on CUDA, else 1.
    # Under torchrun, torchrun's --nproc-per-node decides instead.
    processes: int = 0
    # A training process that waits this long for the others (a hung or lost rank) ends the job.
    process_timeout_s: float = 600.0
    # train.processes > 1: restart the processes this many times after a failure, each time
    # resuming from the run's last.pt (torchrun's --max-restarts).
    max_restarts: int = 0
    # fp32; bf16: matrix products in bfloat16 under autocast, weights and loss in fp32; auto: bf16
    # where the hardware has native bf16 products, else fp32 (nmt/model/device.py). Validation
    # translates in the same precision.
    precision: str = "fp32"
    # Tokens per batch, each pair counting its longer side + eos: with `length` batching the
    # padded batch size x longest side, otherwise the sum over pairs (nmt/data/batching.py).
    batch_tokens: int = 4000
    # length: equal target lengths per batch (least padding); source: equal source lengths, the
    # targets vary; random: the corpus' mix in every batch. The decoder skips target padding.
    batching: str = "length"
    lr: float = 0.001
    clip_norm: float = 1.0  # 0 disables clipping
    label_smoothing: float = 0.1
    # Exponential moving average of the weights (nmt/training/averaging.py); 0 turns it off. With
    # it on, validation, best.pt and translation use the averaged weights (last.pt keeps both).
    average_decay: float = 0.0
    # Learning-rate decay when validation loss stops improving.
    lr_decay_factor: float = 0.5
    lr_patience: int = 2
    min_lr: float = 1e-5
    # Or: the rate falls linearly to min_lr over this last share of the budget (max_steps,
    # max_minutes or max_epochs, whichever ends first; nmt/training/schedule.py). 0 keeps it off.
    lr_anneal: float = 0.0
    # Stop at whichever comes first (0 disables a limit).
    max_epochs: int = 20
    max_steps: int = 0
    max_minutes: float = 0.0
    # Steps between validations; 0: at the end of every epoch, or every LONG_EPOCH_STEPS (2,000)
    # steps where an epoch is longer than that (a large corpus).
    validate_every: int = 0
    save_every: int = 200  # steps between last.pt checkpoints (and at every validation)
    log_every: int = 50  # steps between train-loss log lines and TensorBoard points
    # Stop when validation BLEU has not improved for this many validations (0: never).
    patience: int = 0
    # Validation BLEU decodes a fixed sample of this many validation sentences, the same in every
    # run; 0: the whole split up to LONG_VALIDATION (2,000) sentences, a sample of that many beyond.
    valid_bleu_sentences: int = 0
    # The search of validation BLEU: greedy unless asked, as it runs at every validation.
    valid_search: SearchOptions = field(default_factory=lambda: SearchOptions(beam_size=1))
    valid_attention_plots: int = 3  # validation sentences whose attention goes to TensorBoard
    valid_gate_plots: bool = True  # every layer's gates on the first validation sentence, too
    # Keep the weights of the last K validations as checkpoints/step_NNNNNNN.pt, for nmt-average
    # (0: none).
    keep_checkpoints: int = 0
    # Updates with a NaN or inf gradient are skipped; this many in a row stop training.
    max_nonfinite_steps: int = 5
    # A run directory to continue from its checkpoints/last.pt.
    resume: str | None = None

    def __post_init__(self) -> None:
        check_choice("train.device", self.device, DEVICES)
        check_choice("train.precision", self.precision, PRECISIONS)
        check_positive("train.num_threads", self.num_threads, allow_zero=True)
        check_positive("train.processes", self.processes, allow_zero=True)
        check_positive("train.process_timeout_s", self.process_timeout_s)
        check_positive("train.max_restarts", self.max_restarts, allow_zero=True)
        check_positive("train.batch_tokens", self.batch_tokens)
        check_choice("train.batching", self.batching, BATCHINGS)
        check_positive("train.lr", self.lr)
        check_positive("train.clip_norm", self.clip_norm, allow_zero=True)
        check(
            0.0 <= self.label_smoothing < 1.0,
            f"train.label_smoothing={self.label_smoothing} must be in [0, 1)",
        )
        check(
            0.0 < self.lr_decay_factor <= 1.0,
            f"train.lr_decay_factor={self.lr_decay_factor} must be in (0, 1]",
        )
        check(0.0 <= self.lr_anneal <= 1.0, f"train.lr_anneal={self.lr_anneal} must be in [0, 1] (0 turns it off)")
        check(
            not (self.lr_anneal and self.lr_decay_factor < 1.0),
            f"train.lr_anneal={self.lr_anneal} and train.lr_decay_factor={self.lr_decay_factor} both lower the"
            " learning rate: set train.lr_decay_factor=1.0 to anneal over the budget, or train.lr_anneal=0",
        )
        check(
            0.0 <= self.average_decay < 1.0,
            f"train.average_decay={self.average_decay} must be in [0, 1) (0 turns averaging off)",
        )
        counts = ("lr_patience", "max_epochs", "max_steps", "validate_every", "save_every", "patience")
        for key in (*counts, "valid_attention_plots", "valid_bleu_sentences"):
            check_positive(f"train.{key}", getattr(self, key), allow_zero=True)
        check_positive("train.max_minutes", self.max_minutes, allow_zero=True)
        check_positive("train.log_every", self.log_every)
        check_positive("train.max_nonfinite_steps", self.max_nonfinite_steps)
        check_positive("train.keep_checkpoints", self.keep_checkpoints, allow_zero=True)
        check(
            self.max_epochs or self.max_steps or self.max_minutes,
            "no stopping rule: set train.max_epochs, train.max_steps or train.max_minutes",
        )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (str, int, float, bool, None): safe for `weights_only` checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """The inverse of `to_dict`; also reads the dicts of older checkpoints, whose train section
        held the validation search as `valid_beam`, `max_len_a` and `max_len_b`, and the process
        count as `workers`."""
        data = dict(values["data"])
        data["tokenizer"] = TokenizerConfig(**data["tokenizer"])
        data["corpora"] = {name: CorpusConfig(**corpus) for name, corpus in (data.get("corpora") or {}).items()}
        model = dict(values["model"])
        model["encoder"] = EncoderConfig(**model["encoder"])
        model["decoder"] = DecoderConfig(**model["decoder"])
        train = dict(values["train"])
        if "workers" in train:  # the hand-written data-parallel training's name for processes
            train["processes"] = train.pop("workers")
        search = dict(train.pop("valid_search", None) or {})
        legacy = {"valid_beam": "beam_size", "max_len_a": "max_len_a", "max_len_b": "max_len_b"}
        for old, new in legacy.items():
            if old in train:
                search[new] = train.pop(old)
        search.setdefault("beam_size", 1)
        train["valid_search"] = SearchOptions(**search)
        return cls(data=DataConfig(**data), model=ModelConfig(**model), train=TrainConfig(**train))


def register_configs() -> None:
    """Register the schema with Hydra so `conf/config.yaml` is checked against it."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="nmt_config", node=Config)


def to_config(cfg: Any) -> Config:
    """Composed Hydra/OmegaConf config -> validated dataclasses (raises ConfigError)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as error:
        raise ConfigError(str(error).splitlines()[0]) from None
    assert isinstance(config, Config), type(config)
    return config
