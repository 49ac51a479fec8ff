"""SentencePiece tokenization: train on the training split, save with the run and the checkpoint.

One model serves both sides (`joint`) or each side has its own. Special ids are fixed so every
part of the toolkit agrees on them: pad 0, unk 1, bos 2, eos 3.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

log = logging.getLogger(__name__)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class TokenizerError(RuntimeError):
    """A tokenizer could not be trained or loaded; the message says why."""


class Tokenizer:
    """Source and target SentencePiece models (the same object when joint)."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None) -> None:
        self.src_model_bytes = src_model
        self.tgt_model_bytes = tgt_model  # None: joint
        self.src = _processor(src_model)
        self.tgt = self.src if tgt_model is None else _processor(tgt_model)

    @property
    def joint(self) -> bool:
        return self.tgt_model_bytes is None

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    @property
    def fingerprint(self) -> str:
        """Identifies the vocabulary: equal fingerprints mean equal ids for equal text."""
        digest = hashlib.sha256(self.src_model_bytes)
        digest.update(self.tgt_model_bytes or b"joint")
        return digest.hexdigest()[:16]

    @classmethod
    def train(
        cls,
        src_texts: Sequence[str],
        tgt_texts: Sequence[str],
        vocab_size: int,
        kind: str = "unigram",
        joint: bool = True,
        character_coverage: float = 1.0,
        max_sentences: int = 0,
        num_threads: int = 2,
    ) -> "Tokenizer":
        options = dict(
            vocab_size=vocab_size,
            model_type=kind,
            character_coverage=character_coverage,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            num_threads=num_threads,
        )
        if joint:
            return cls(_train_model([*src_texts, *tgt_texts], **options))
        return cls(_train_model(src_texts, **options), _train_model(tgt_texts, **options))

    # --- persistence -------------------------------------------------------------------------
    def state(self) -> dict[str, bytes | None]:
        """Plain bytes for a checkpoint (loads under `torch.load(weights_only=True)`)."""
        return {"src_model": self.src_model_bytes, "tgt_model": self.tgt_model_bytes}

    @classmethod
    def from_state(cls, state: dict[str, bytes | None]) -> "Tokenizer":
        src_model = state["src_model"]
        assert src_model is not None
        return cls(src_model, state["tgt_model"])

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.joint:
            (directory / "joint.model").write_bytes(self.src_model_bytes)
        else:
            (directory / "src.model").write_bytes(self.src_model_bytes)
            (directory / "tgt.model").write_bytes(self.tgt_model_bytes or b"")

    @classmethod
    def load(cls, directory: Path) -> "Tokenizer":
        if (directory / "joint.model").is_file():
            return cls((directory / "joint.model").read_bytes())
        if (directory / "src.model").is_file() and (directory / "tgt.model").is_file():
            return cls((directory / "src.model").read_bytes(), (directory / "tgt.model").read_bytes())
        raise TokenizerError(f"no SentencePiece model in {directory} (joint.model or src.model + tgt.model)")

    # --- text <-> ids ------------------------------------------------------------------------
    def encode_src(self, texts: list[str]) -> list[list[int]]:
        return self.src.encode(texts)

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        return self.tgt.encode(texts)

    def decode_tgt(self, ids: Iterable[Sequence[int]]) -> list[str]:
        """Ids to text; stops at the first eos and skips pad and bos."""
        return [self.tgt.decode(_strip_specials(seq)) for seq in ids]

    def src_pieces(self, text: str) -> list[str]:
        return self.src.encode(text, out_type=str)

    def src_id_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.src.id_to_piece(int(i)) for i in ids]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.tgt.id_to_piece(i) for i in _strip_specials(ids)]


def _strip_specials(ids: Sequence[int]) -> list[int]:
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i not in (PAD_ID, BOS_ID):
            out.append(i)
    return out


def _processor(model: bytes) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, OSError) as error:
        raise TokenizerError(f"not a valid SentencePiece model: {error}") from None


def _train_model(texts: Sequence[str], vocab_size: int, **options) -> bytes:
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            vocab_size=vocab_size,
            # Small corpora (tests, smoke runs) cannot fill a large vocabulary: take what fits.
            hard_vocab_limit=False,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            minloglevel=2,
            **options,
        )
    except RuntimeError as error:
        raise TokenizerError(f"SentencePiece training failed: {error}") from None
    trained = model.getvalue()
    log.info("trained a SentencePiece model with %d pieces", _processor(trained).get_piece_size())
    return trained
