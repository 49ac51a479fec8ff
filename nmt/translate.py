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
from pathlib import Path

import torch

from nmt.batching import collate_src, token_budget_batches
from nmt.checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from nmt.config import Config
from nmt.model import Seq2Seq, build_model
from nmt.search import greedy_search
from nmt.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CHUNK_LINES = 2000  # lines read, sorted and translated together


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)


class Translator:
    def __init__(
        self,
        model: Seq2Seq,
        tokenizer: Tokenizer,
        device: torch.device,
        batch_tokens: int = 4000,
        max_len_a: float = 1.5,
        max_len_b: int = 10,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.batch_tokens = batch_tokens
        self.max_len_a = max_len_a
        self.max_len_b = max_len_b

    @classmethod
    def from_checkpoint(cls, run_or_checkpoint: str | Path, device: str = "auto", **options) -> "Translator":
        path = resolve_checkpoint(run_or_checkpoint)
        payload = load_checkpoint(path)
        config = Config.from_dict(payload["config"])
        tokenizer = Tokenizer.from_state(payload["tokenizer"])
        model = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: weights do not fit the model its config describes: {error}") from None
        torch_device = resolve_device(device)
        model.to(torch_device).eval()
        log.info("loaded %s (step %s)", path, payload.get("progress", {}).get("step", "?"))
        return cls(model, tokenizer, torch_device, **options)

    def translate(self, lines: list[str]) -> list[str]:
        """One translation per line, in order; empty (or blank) lines give empty strings."""
        outputs = [""] * len(lines)
        texts = [line.strip() for line in lines]
        todo = [i for i, text in enumerate(texts) if text]
        src_ids = self.tokenizer.encode_src([texts[i] for i in todo])
        for ids, hypothesis in zip(todo, self.translate_ids(src_ids)):
            outputs[ids] = hypothesis
        return outputs

    def translate_ids(self, src_ids: list[list[int]]) -> list[str]:
        """Source piece ids -> detokenized hypotheses, in the order given."""
        hypotheses: list[list[int]] = [[] for _ in src_ids]
        was_training = self.model.training
        self.model.eval()
        # +1 for the eos that collate_src appends.
        batches = token_budget_batches([len(ids) + 1 for ids in src_ids], self.batch_tokens)
        with torch.inference_mode():
            for batch in batches:
                src, src_lengths = collate_src([src_ids[i] for i in batch])
                outputs = greedy_search(
                    self.model, src.to(self.device), src_lengths, self.max_len_a, self.max_len_b
                )
                for i, output in zip(batch, outputs):
                    hypotheses[i] = output
        self.model.train(was_training)
        return self.tokenizer.decode_tgt(hypotheses)

    def translate_stream(self, lines: Iterable[str], chunk_lines: int = CHUNK_LINES) -> Iterator[str]:
        """Translations of a (possibly endless) stream of lines, in order, chunk by chunk."""
        iterator = iter(lines)
        while chunk := list(itertools.islice(iterator, chunk_lines)):
            yield from self.translate(chunk)


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
        description="Translate text with a trained model: one output line for every input line.",
    )
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="run directory or .pt checkpoint")
    parser.add_argument("-i", "--input", help="input file (default: stdin)")
    parser.add_argument("-o", "--output", help="output file (default: stdout)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-tokens", type=int, default=4000, help="padded source tokens per batch")
    parser.add_argument("--max-len-a", type=float, default=1.5, help="output length limit: a * src_len + b")
    parser.add_argument("--max-len-b", type=int, default=10)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = _parse_args(argv)
    try:
        translator = Translator.from_checkpoint(
            args.checkpoint,
            device=args.device,
            batch_tokens=args.batch_tokens,
            max_len_a=args.max_len_a,
            max_len_b=args.max_len_b,
        )
        source = open(args.input, "rb") if args.input else sys.stdin.buffer
    except (CheckpointError, RuntimeError, OSError) as error:
        print(f"nmt-translate: {error}", file=sys.stderr)
        return 2
    name = args.input or "<stdin>"
    with source:
        lines = _read_lines(source, name)
        if args.output:
            # Write beside the target and rename at the end, so a failed run never truncates it.
            out_path = Path(args.output)
            tmp_path = out_path.with_name(f".{out_path.name}.partial")
            with open(tmp_path, "w", encoding="utf-8") as out:
                for hypothesis in translator.translate_stream(lines):
                    out.write(hypothesis + "\n")
            tmp_path.replace(out_path)
        else:
            for hypothesis in translator.translate_stream(lines):
                sys.stdout.write(hypothesis + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
