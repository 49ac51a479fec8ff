"""`nmt-translate`: one output line for every input line, in order, over `nmt.translation.Translator`.

    nmt-translate RUN_OR_CKPT [-i FILE] [-o FILE] [--beam 5] [--nbest N] [--sample ...]
    nmt-translate RUN1 RUN2 [...] -i FILE      # an ensemble: the mean of the models' log-probabilities

Input is read in chunks of what is already waiting (at most 2,000 lines), so a file or a long
pipe is translated in full batches while a line typed at a terminal or written into an open pipe
is answered at once; memory stays flat however long the input is. Invalid UTF-8 is replaced and
reported once. An output file is written beside its
target and renamed at the end, so a failed run never truncates an old one.
"""

from __future__ import annotations

import argparse
import io
import itertools
import logging
import os
import select
import sys
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from nmt.checkpoint import CheckpointError
from nmt.cli.options import add_option_flags, options_from_args
from nmt.options import InferenceOptions, SearchOptions
from nmt.translation import CHUNK_LINES, Translation, Translator
from nmt.workers import WorkerError

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nmt-translate",
        description="Translate text with a trained model: one output line for every input line, in order.",
    )
    parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="RUN_OR_CKPT",
        help="run directory (its best.pt) or .pt checkpoint; several: their ensemble (mean log-probabilities)",
    )
    parser.add_argument("-i", "--input", help="input file (default: stdin)")
    parser.add_argument("-o", "--output", help="output file (default: stdout)")
    parser.add_argument("--scores", action="store_true", help="write SCORE<tab>TEXT for the best hypothesis")
    parser.add_argument(
        "--attention", metavar="DIR", type=Path, help="write each sentence's attention as DIR/<line>.png"
    )
    parser.add_argument(
        "--gates", metavar="DIR", type=Path, help="inspect the gates of each sentence: DIR/<line>/*.png, gates.json"
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when the output is not a terminal)",
    )
    add_option_flags(parser, SearchOptions, "search (with --nbest N > 1: LINE<tab>SCORE<tab>TEXT rows)")
    add_option_flags(parser, InferenceOptions, "inference")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    out_path = Path(args.output) if args.output else None
    tmp_path = out_path.with_name(f".{out_path.name}.partial") if out_path else None
    try:
        # Inputs and outputs first: a missing file is one line before any model is loaded.
        source, total = _open_input(args.input)
        if out_path and not out_path.parent.is_dir():
            raise OSError(f"output directory {out_path.parent} does not exist (for -o {out_path})")
        if out_path and out_path.is_dir():
            raise OSError(f"-o {out_path} is a directory; give a file name")
        search_options = replace(options_from_args(SearchOptions, args), return_attention=args.attention is not None)
        translator = Translator.load(args.checkpoints, search_options, options_from_args(InferenceOptions, args))
        out = open(tmp_path, "w", encoding="utf-8") if tmp_path else sys.stdout  # noqa: SIM115
    except (ValueError, CheckpointError, RuntimeError, OSError) as error:
        print(f"nmt-translate: {error}", file=sys.stderr)
        return 2
    show_progress = args.progress if args.progress is not None else bool(out_path) or not sys.stdout.isatty()
    try:
        with source, out if tmp_path else nullcontext(out):
            chunks = read_chunks(source, args.input or "<stdin>")
            translate_all(translator, chunks, out, args, total, show_progress)
        if tmp_path and out_path:
            tmp_path.replace(out_path)
    except WorkerError as error:
        print(f"nmt-translate: {error}", file=sys.stderr)
        return 1
    finally:
        if tmp_path:
            tmp_path.unlink(missing_ok=True)
    return 0


def translate_all(
    translator: Translator,
    chunks: Iterator[list[str]],
    out,
    args: argparse.Namespace,
    total: int | None,
    show_progress: bool,
) -> None:
    progress = tqdm(total=total, unit=" lines", disable=not show_progress, file=sys.stderr, dynamic_ncols=True)
    number = 0
    for chunk in chunks:
        for translation in translator.translate_lines(chunk):
            number += 1
            out.write(format_translation(translation, number, args.nbest, args.scores))
            if args.attention is not None:
                _write_attention(translator, translation, number, args.attention)
            if args.gates is not None and translation.source.strip():
                _write_gates(translator, translation.source, args.gates / f"{number:06d}")
            progress.update(1)
        out.flush()  # whoever waits on the other end of a pipe gets this chunk's lines now
    progress.close()


def format_translation(translation: Translation, number: int, nbest: int, scores: bool) -> str:
    if nbest > 1:
        rows = translation.nbest or [("", 0.0)]
        return "".join(f"{number}\t{score:.4f}\t{text}\n" for text, score in rows)
    if scores:
        return f"{translation.score:.4f}\t{translation.text}\n"
    return translation.text + "\n"


def read_chunks(stream: io.BufferedIOBase, name: str, chunk_lines: int = CHUNK_LINES) -> Iterator[list[str]]:
    """Decoded lines without their line ending, in chunks of what is already waiting (at most
    `chunk_lines`): a file gives full chunks, a line written into an open pipe comes alone at
    once. Undecodable bytes become U+FFFD and are reported once, with the first line number, so
    one bad byte never stops a long job."""
    reported, number = False, 0
    for raw_chunk in _waiting_chunks(stream, chunk_lines):
        lines = []
        for raw in raw_chunk:
            number += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                if not reported:
                    log.warning("%s:%d: invalid UTF-8 replaced with U+FFFD (reported once)", name, number)
                    reported = True
            lines.append(line.rstrip("\r\n"))
        yield lines


def _waiting_chunks(stream: io.BufferedIOBase, chunk_lines: int) -> Iterator[list[bytes]]:
    """Raw lines in chunks, each ending where no more input is waiting (select on the file
    descriptor; a regular file is always ready). Without select on this stream, fixed chunks."""
    try:
        fd = stream.fileno()
        select.select([fd], [], [], 0)
    except (OSError, ValueError, io.UnsupportedOperation):
        yield from _fixed_chunks(stream, chunk_lines)
        return
    pending, chunk = b"", []
    while True:
        if chunk and not select.select([fd], [], [], 0)[0]:
            yield chunk  # nothing more is waiting: answer what came
            chunk = []
            continue
        data = os.read(fd, 1 << 16)
        if not data:
            break
        *lines, pending = (pending + data).split(b"\n")
        chunk.extend(lines)
        while len(chunk) >= chunk_lines:
            yield chunk[:chunk_lines]
            chunk = chunk[chunk_lines:]
    if pending:
        chunk.append(pending)
    if chunk:
        yield chunk


def _fixed_chunks(stream, chunk_lines: int) -> Iterator[list[bytes]]:
    iterator = iter(stream)
    while chunk := list(itertools.islice(iterator, chunk_lines)):
        yield chunk


def _write_attention(translator: Translator, translation: Translation, number: int, directory: Path) -> None:
    from nmt.plots import save_attention_heatmap  # matplotlib only when plots are asked for

    if not translation.hypotheses or translation.hypotheses[0].attention is None:
        return
    best = translation.hypotheses[0]
    src_pieces = [*translator.tokenizer.src_pieces(translation.source.strip()), "</s>"]
    tgt_pieces = [*translator.tokenizer.tgt_id_pieces(best.tokens), "</s>"]
    save_attention_heatmap(best.attention, src_pieces, tgt_pieces, directory / f"{number:06d}.png")


def _write_gates(translator: Translator, sentence: str, directory: Path) -> None:
    from nmt.inspection import inspect_sentence, write_inspection  # matplotlib only when asked

    translation, layers = inspect_sentence(translator.model, translator.tokenizer, sentence, translator.device)
    write_inspection(translation, layers, sentence, directory)


def _open_input(path: str | None) -> tuple[io.BufferedIOBase, int | None]:
    """The input stream (closed by main's `with`) and its line count (None for stdin)."""
    if not path:
        return sys.stdin.buffer, None
    try:
        with open(path, "rb") as stream:
            total = sum(1 for _ in stream)
        return open(path, "rb"), total
    except OSError as error:
        raise OSError(f"-i {path}: {error.strerror or error}") from None


if __name__ == "__main__":
    sys.exit(main())
