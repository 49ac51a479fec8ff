"""SentencePiece tokenization: train on the training split, save with the run and the checkpoint.

One model serves both sides (`joint`) or each side has its own. Special ids are fixed so every
part of the toolkit agrees on them: pad 0, unk 1, bos 2, eos 3.

With a joint model, about half of the pieces never occur on the target side (German pieces, for
de-en), yet the output layer and softmax would pay for every one of them at every target token.
`restrict_output` gives the target side its own dense ids over the pieces its training text uses
(specials keep 0-3), so the output layer covers only those: on Multi30k de-en 8,000 -> 3,963.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm

from nmt.data.special import BOS_ID, EOS_ID, PAD_ID, UNK_ID

log = logging.getLogger(__name__)


class TokenizerError(RuntimeError):
    """A tokenizer could not be trained or loaded; the message says why."""


class Tokenizer:
    """Source and target SentencePiece models (the same object when joint)."""

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(
        self, src_model: bytes, tgt_model: bytes | None = None, output_pieces: list[int] | None = None
    ) -> None:
        self.src_model_bytes = src_model
        self.tgt_model_bytes = tgt_model  # None: joint
        self.src = _processor(src_model)
        self.tgt = self.src if tgt_model is None else _processor(tgt_model)
        # Target id i is SentencePiece id output_pieces[i]; None: target ids are SentencePiece ids.
        self.output_pieces = output_pieces
        self._to_output: dict[int, int] | None = None
        if output_pieces is not None:
            if sorted(set(output_pieces)) != list(output_pieces) or list(output_pieces[:4]) != [0, 1, 2, 3]:
                raise TokenizerError("output pieces must be sorted, unique, and start with the 4 special ids")
            self._to_output = {piece: i for i, piece in enumerate(output_pieces)}

    @property
    def joint(self) -> bool:
        return self.tgt_model_bytes is None

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return len(self.output_pieces) if self.output_pieces is not None else self.tgt.get_piece_size()

    @property
    def fingerprint(self) -> str:
        """Identifies the vocabulary: equal fingerprints mean equal ids for equal text."""
        digest = hashlib.sha256(self.src_model_bytes)
        digest.update(self.tgt_model_bytes or b"joint")
        if self.output_pieces is not None:
            digest.update(",".join(map(str, self.output_pieces)).encode())
        return digest.hexdigest()[:16]

    def restrict_output(self, tgt_texts: Sequence[str]) -> Tokenizer:
        """This tokenizer with target ids over the pieces that `tgt_texts` (the training targets)
        use, plus the specials; other pieces map to unk."""
        used = {PAD_ID, UNK_ID, BOS_ID, EOS_ID}
        for ids in self.tgt.encode(list(tgt_texts)):
            used.update(ids)
        return Tokenizer(self.src_model_bytes, self.tgt_model_bytes, sorted(used))

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
    ) -> Tokenizer:
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
    def state(self) -> dict:
        """Plain bytes and ints for a checkpoint (loads under `torch.load(weights_only=True)`)."""
        return {
            "src_model": self.src_model_bytes,
            "tgt_model": self.tgt_model_bytes,
            "output_pieces": self.output_pieces,
        }

    @classmethod
    def from_state(cls, state: dict) -> Tokenizer:
        src_model = state["src_model"]
        assert src_model is not None
        return cls(src_model, state["tgt_model"], state.get("output_pieces"))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        if self.output_pieces is not None:
            (directory / "output_pieces.txt").write_text("".join(f"{i}\n" for i in self.output_pieces))
        if self.joint:
            (directory / "joint.model").write_bytes(self.src_model_bytes)
        else:
            (directory / "src.model").write_bytes(self.src_model_bytes)
            (directory / "tgt.model").write_bytes(self.tgt_model_bytes or b"")

    @classmethod
    def from_path(cls, path: Path) -> Tokenizer:
        """An existing tokenizer, used as it is: a SentencePiece `.model` file (joint), a tokenizer
        directory as `save` writes it, or a run directory holding one."""
        path = Path(path).expanduser()
        if path.is_file():
            return cls(path.read_bytes())
        if (path / "tokenizer").is_dir():
            path = path / "tokenizer"
        if not path.is_dir():
            raise TokenizerError(
                f"data.tokenizer.model={path}: no such file or directory; give a SentencePiece .model file, "
                "a run directory or its tokenizer/ directory"
            )
        return cls.load(path)

    @classmethod
    def load(cls, directory: Path) -> Tokenizer:
        output_pieces = None
        if (directory / "output_pieces.txt").is_file():
            output_pieces = [int(line) for line in (directory / "output_pieces.txt").read_text().split()]
        if (directory / "joint.model").is_file():
            return cls((directory / "joint.model").read_bytes(), None, output_pieces)
        if (directory / "src.model").is_file() and (directory / "tgt.model").is_file():
            return cls((directory / "src.model").read_bytes(), (directory / "tgt.model").read_bytes(), output_pieces)
        raise TokenizerError(f"no SentencePiece model in {directory} (joint.model or src.model + tgt.model)")

    # --- text <-> ids ------------------------------------------------------------------------
    def encode_src(self, texts: list[str]) -> list[list[int]]:
        return self.src.encode(texts)

    def encode_tgt(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tgt.encode(texts)
        if self._to_output is None:
            return encoded
        to_output = self._to_output
        return [[to_output.get(piece, UNK_ID) for piece in ids] for ids in encoded]

    def sample_pairs(
        self, src_texts: Sequence[str], tgt_texts: Sequence[str], alpha: float, nbest: int, seed: int | str
    ) -> tuple[list[list[int]], list[list[int]]]:
        """Subword regularization (Kudo 2018): for every sentence, one of its `nbest` most likely
        segmentations, drawn with probability proportional to P(segmentation)^alpha. The same
        `seed` gives the same segmentations in any process.

        A sampled target piece outside the output vocabulary would become unk, teaching the model
        to emit unk, so such a sentence keeps its best segmentation instead."""
        # SentencePiece's own sampler draws from a generator that differs between processes
        # whatever its seed, so training ranks and resumed runs would disagree; the n-best
        # search is deterministic and the draw is ours.
        rng = random.Random(seed)
        src_scores, tgt_scores = _piece_scores(self.src), _piece_scores(self.tgt)
        src_ids = [_sample(self.src, src_scores, text, alpha, nbest, rng) for text in src_texts]
        tgt_ids = [_sample(self.tgt, tgt_scores, text, alpha, nbest, rng) for text in tgt_texts]
        if self._to_output is not None:
            to_output = self._to_output
            tgt_ids = [
                [to_output[piece] for piece in ids]
                if all(piece in to_output for piece in ids)
                else self.encode_tgt([text])[0]
                for ids, text in zip(tgt_ids, tgt_texts, strict=True)
            ]
        return src_ids, tgt_ids

    def decode_tgt(self, ids: Iterable[Sequence[int]]) -> list[str]:
        """Ids to text; stops at the first eos and skips pad and bos."""
        return [self.tgt.decode(self._to_pieces(_strip_specials(seq))) for seq in ids]

    def _to_pieces(self, ids: list[int]) -> list[int]:
        """Target ids -> SentencePiece ids."""
        if self.output_pieces is None:
            return ids
        return [self.output_pieces[i] for i in ids]

    def src_pieces(self, text: str) -> list[str]:
        return self.src.encode(text, out_type=str)

    def src_id_pieces(self, ids: Sequence[int]) -> list[str]:
        return [self.src.id_to_piece(int(i)) for i in ids]

    def tgt_id_pieces(self, ids: Sequence[int]) -> list[str]:
        """One piece per target id, specials included (labels for per-step plots)."""
        return [self.tgt.id_to_piece(i) for i in self._to_pieces([int(i) for i in ids])]

    def tgt_pieces(self, ids: Sequence[int]) -> list[str]:
        return self.tgt_id_pieces(_strip_specials(ids))


def _piece_scores(processor: spm.SentencePieceProcessor) -> list[float]:
    """Each piece's log-probability under a unigram model."""
    return [processor.get_score(i) for i in range(processor.get_piece_size())]


def _sample(
    processor: spm.SentencePieceProcessor,
    scores: list[float],
    text: str,
    alpha: float,
    nbest: int,
    rng: random.Random,
) -> list[int]:
    """One of the `nbest` best segmentations of `text`, drawn with weight P^alpha."""
    candidates = processor.nbest_encode(text, nbest_size=nbest)
    if len(candidates) < 2:
        return candidates[0] if candidates else []
    log_probs = [sum(scores[piece] for piece in ids) for ids in candidates]
    best = max(log_probs)
    return rng.choices(candidates, [math.exp(alpha * (log_prob - best)) for log_prob in log_probs])[0]


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


# A unigram model indexes its training text with 32-bit positions unless told otherwise; past this
# many characters nmt tells it (which costs memory, so only then).
EXTREMELY_LARGE_CHARACTERS = 2**30


def _train_model(texts: Sequence[str], vocab_size: int, **options) -> bytes:
    model = io.BytesIO()
    if options.get("model_type") == "unigram" and sum(map(len, texts)) + len(texts) > EXTREMELY_LARGE_CHARACTERS:
        options["train_extremely_large_corpus"] = True
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
