"""The Translator (checkpoint -> text in, text out) and the `nmt-translate` command.

Lines are translated in token-budget batches of similar length and written back in input order,
one output line for every input line; an empty line gives an empty line. Input is read in chunks,
so memory stays flat however long the input is.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from nmt.batching import collate_src, token_budget_batches
from nmt.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from nmt.config import PRECISIONS, Config
from nmt.model import Seq2Seq, build_model
from nmt.precision import autocast, resolve_precision
from nmt.quantize import QUANTIZE_KINDS, quantize_int8
from nmt.search import LENGTH_PENALTIES, STOPPING_RULES, Hypothesis, SearchOptions, search
from nmt.tokenizer import Tokenizer
from nmt.workers import WorkerError, can_fork, default_workers, map_in_workers, parse_workers

log = logging.getLogger(__name__)

CHUNK_LINES = 2000  # lines read, sorted and translated together


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)


@dataclass
class Translation:
    """The search's hypotheses for one input line, best first, with their detokenized texts."""

    source: str
    hypotheses: list[Hypothesis] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


class Translator:
    def __init__(
        self,
        model: Seq2Seq,
        tokenizer: Tokenizer,
        device: torch.device,
        options: SearchOptions | None = None,
        batch_tokens: int = 2000,
        precision: str = "fp32",
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.options = options or SearchOptions()
        self.batch_tokens = batch_tokens
        self.precision = resolve_precision(precision, device)  # a bad value fails here, not mid-translation
        # Forked processes for the batches of one call (nmt/workers.py); CUDA cannot fork.
        self.workers = workers if device.type == "cpu" and can_fork() else 1

    @classmethod
    def from_checkpoint(
        cls, run_or_checkpoint: str | Path, device: str = "auto", options: SearchOptions | None = None,
        batch_tokens: int = 2000, precision: str = "fp32", quantize: str = "none", workers: int = 1,
    ) -> "Translator":  # fmt: skip
        """`quantize="int8"`: dynamic int8 quantization for CPU translation (nmt/quantize.py)."""
        if quantize not in QUANTIZE_KINDS:
            raise ValueError(f"quantize {quantize!r} is not valid; choose one of: {', '.join(QUANTIZE_KINDS)}")
        model, tokenizer, _ = load_model(run_or_checkpoint, device)
        device_used = next(model.parameters()).device
        if quantize == "int8":
            if device_used.type != "cpu":
                raise ValueError("int8 quantization runs on the CPU only; add --device cpu")
            quantize_int8(model)
        return cls(model, tokenizer, device_used, options, batch_tokens, precision, workers)

    def search_ids(self, src_ids: list[list[int]]) -> list[list[Hypothesis]]:
        """Source piece ids -> hypotheses per sentence, in the order given.

        The batches do not depend on `workers`, so neither do the translations."""
        results: list[list[Hypothesis]] = [[] for _ in src_ids]
        # +1 for the eos that collate_src appends.
        batches = token_budget_batches([len(ids) + 1 for ids in src_ids], self.batch_tokens)
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.decoder.search_tables():  # fixed weights for every batch: one table per call
                if self.workers > 1 and len(batches) > 1:
                    # Longest sentences first (batches come shortest first): the workers finish together.
                    longest_first = batches[::-1]
                    tasks = [[src_ids[i] for i in batch] for batch in longest_first]
                    finished = map_in_workers(self._search_batch, tasks, self.workers)
                    batch_results = ((longest_first[k], hypotheses) for k, hypotheses in finished)
                else:
                    batch_results = ((batch, self._search_batch([src_ids[i] for i in batch])) for batch in batches)
                for batch, hypotheses_of_batch in batch_results:
                    for i, hypotheses in zip(batch, hypotheses_of_batch):
                        results[i] = hypotheses
        finally:
            self.model.train(was_training)
        return results

    def _search_batch(self, src_ids: list[list[int]]) -> list[list[Hypothesis]]:
        with torch.inference_mode(), autocast(self.precision, self.device):
            src, src_lengths = collate_src(src_ids)
            return search(self.model, src.to(self.device), src_lengths, self.options)

    def translate_ids(self, src_ids: list[list[int]]) -> list[str]:
        """Source piece ids -> the best hypothesis of each, detokenized."""
        return self.tokenizer.decode_tgt([hyps[0].tokens for hyps in self.search_ids(src_ids)])

    def translate_lines(self, lines: list[str]) -> list[Translation]:
        """One Translation per line, in order; blank lines give empty Translations."""
        translations = [Translation(line) for line in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        src_ids = self.tokenizer.encode_src([lines[i].strip() for i in todo])
        for i, hypotheses in zip(todo, self.search_ids(src_ids)):
            translations[i].hypotheses = hypotheses
            translations[i].texts = self.tokenizer.decode_tgt([h.tokens for h in hypotheses])
        return translations

    def translate(self, lines: list[str]) -> list[str]:
        """The best translation of every line, in order; empty for blank lines."""
        return [translation.text for translation in self.translate_lines(lines)]

    def translate_stream(self, lines: Iterable[str], chunk_lines: int = CHUNK_LINES) -> Iterator[Translation]:
        """Translations of a (possibly endless) stream of lines, in order, chunk by chunk."""
        iterator = iter(lines)
        while chunk := list(itertools.islice(iterator, chunk_lines)):
            yield from self.translate_lines(chunk)


def load_model(run_or_checkpoint: str | Path, device: str = "auto") -> tuple[Seq2Seq, Tokenizer, dict]:
    """The model (in eval mode, on the device) and tokenizer of a checkpoint, and its payload."""
    path = resolve_checkpoint(run_or_checkpoint)
    payload = load_checkpoint(path)
    config = Config.from_dict(payload["config"])
    tokenizer = Tokenizer.from_state(payload["tokenizer"])
    model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, init_weights=False)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes: {error}") from None
    model.to(resolve_device(device)).eval()
    log.info("loaded %s (step %s)", path, payload.get("progress", {}).get("step", "?"))
    return model, tokenizer, payload


def _read_lines(stream: io.BufferedIOBase, name: str) -> Iterator[str]:
    """Decoded lines without their line ending; undecodable bytes become U+FFFD and are reported
    once, with the first line number, so one bad byte never stops a long job."""
    reported = False
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            if not reported:
                log.warning("%s:%d: invalid UTF-8 replaced with U+FFFD (reported once)", name, number)
                reported = True
        yield line.rstrip("\r\n")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nmt-translate",
        description="Translate text with a trained model: one output line for every input line, in order.",
    )
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run directory (its best.pt) or .pt checkpoint")
    parser.add_argument("-i", "--input", help="input file (default: stdin)")
    parser.add_argument("-o", "--output", help="output file (default: stdout)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy)")
    parser.add_argument("--nbest", type=int, default=1,
                        help="write the N best per input, as LINE<tab>SCORE<tab>TEXT lines (N <= beam)")
    parser.add_argument("--scores", action="store_true", help="write SCORE<tab>TEXT for the best hypothesis")
    parser.add_argument("--length-penalty", default=SearchOptions.length_penalty, choices=LENGTH_PENALTIES,
                        help="rank by log-prob (none), log-prob / length (average), or GNMT's penalty")
    parser.add_argument("--alpha", type=float, default=0.6, help="alpha of the gnmt length penalty")
    parser.add_argument("--stopping", default=SearchOptions.stopping, choices=STOPPING_RULES,
                        help="beam search: stop a sentence once no live beam beats its best finished one at the "
                             "next step (early) or at any length up to the limit (exact)")
    parser.add_argument("--min-len", type=int, default=0, help="no eos before this many pieces")
    parser.add_argument("--max-len-a", type=float, default=1.5, help="output length limit: a * src_len + b pieces")
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--batch-tokens", type=int, default=2000, help="padded source tokens per batch")
    parser.add_argument("--workers", type=parse_workers, default=None,
                        help="CPU processes that search batches side by side, the cores split between them "
                             "(default: one per core on Linux; 1: one process)")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="bf16: matrix products in bfloat16 (autocast); fast on CPUs with AVX-512 BF16 / AMX")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_KINDS,
                        help="int8: dynamic int8 quantization of the encoder LSTM, the decoder's cells and every linear layer (CPU)")
    parser.add_argument("--attention", metavar="DIR", type=Path,
                        help="write each sentence's attention as DIR/<line>.png (source x target pieces)")
    parser.add_argument("--gates", metavar="DIR", type=Path,
                        help="inspect the gates of each sentence's greedy translation: DIR/<line>/*.png, gates.json")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar on stderr (default: when the output is a file)")
    return parser.parse_args(argv)  # fmt: skip


def _format(translation: Translation, number: int, args: argparse.Namespace) -> str:
    if args.nbest > 1:
        rows = [(h.score, text) for h, text in zip(translation.hypotheses, translation.texts)] or [(0.0, "")]
        return "".join(f"{number}\t{score:.4f}\t{text}\n" for score, text in rows)
    if args.scores:
        score = translation.hypotheses[0].score if translation.hypotheses else 0.0
        return f"{score:.4f}\t{translation.text}\n"
    return translation.text + "\n"


def _write_attention(translator: Translator, translation: Translation, number: int, directory: Path) -> None:
    from nmt.plots import save_attention_heatmap  # matplotlib only when plots are asked for

    if not translation.hypotheses or translation.hypotheses[0].attention is None:
        return
    best = translation.hypotheses[0]
    src_pieces = [*translator.tokenizer.src_pieces(translation.source.strip()), "</s>"]
    tgt_pieces = [*translator.tokenizer.tgt_id_pieces(best.tokens), "</s>"]
    save_attention_heatmap(best.attention, src_pieces, tgt_pieces, directory / f"{number:06d}.png")


def _write_gates(translator: Translator, sentence: str, directory: Path) -> None:
    from nmt.inspect_gates import inspect_sentence, write_inspection  # matplotlib only when asked

    translation, layers = inspect_sentence(translator.model, translator.tokenizer, sentence, translator.device)
    write_inspection(translation, layers, sentence, directory)


def _count_lines(path: str) -> int | None:
    with open(path, "rb") as stream:
        return sum(1 for _ in stream)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = _parse_args(argv)
    out_path = Path(args.output) if args.output else None
    # Written beside the target and renamed at the end, so a failed run never truncates an old file.
    tmp_path = out_path.with_name(f".{out_path.name}.partial") if out_path else None
    try:
        options = SearchOptions(
            beam_size=args.beam, nbest=args.nbest, max_len_a=args.max_len_a, max_len_b=args.max_len_b,
            min_len=args.min_len, length_penalty=args.length_penalty, alpha=args.alpha, stopping=args.stopping,
            return_attention=args.attention is not None,
        )  # fmt: skip
        translator = Translator.from_checkpoint(
            args.checkpoint, args.device, options, args.batch_tokens, args.precision, args.quantize,
            args.workers or default_workers(),
        )
        source = open(args.input, "rb") if args.input else sys.stdin.buffer
        total = _count_lines(args.input) if args.input else None
        out = open(tmp_path, "w", encoding="utf-8") if tmp_path else sys.stdout
    except (ValueError, CheckpointError, RuntimeError, OSError) as error:
        print(f"nmt-translate: {error}", file=sys.stderr)
        return 2
    show_progress = args.progress if args.progress is not None else bool(out_path) or not sys.stdout.isatty()
    try:
        with source, (out if tmp_path else nullcontext(out)):
            _translate_all(translator, _read_lines(source, args.input or "<stdin>"), out, args, total, show_progress,
                           interactive=source.isatty())  # fmt: skip
        if tmp_path and out_path:
            tmp_path.replace(out_path)
    except WorkerError as error:
        print(f"nmt-translate: {error}", file=sys.stderr)
        return 1
    finally:
        if tmp_path:
            tmp_path.unlink(missing_ok=True)
    return 0


def _translate_all(translator: Translator, lines: Iterator[str], out, args: argparse.Namespace,
                   total: int | None, show_progress: bool, interactive: bool) -> None:  # fmt: skip
    progress = tqdm(total=total, unit=" lines", disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
    # Typed input is answered line by line; piped input goes in chunks, sorted into batches.
    chunk_lines = 1 if interactive else CHUNK_LINES
    for number, translation in enumerate(translator.translate_stream(lines, chunk_lines), start=1):
        out.write(_format(translation, number, args))
        if interactive:
            out.flush()
        if args.attention is not None:
            _write_attention(translator, translation, number, args.attention)
        if args.gates is not None and translation.source.strip():
            _write_gates(translator, translation.source, args.gates / f"{number:06d}")
        progress.update(1)
    progress.close()
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
