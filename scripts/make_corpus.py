"""A deterministic N-pair parallel corpus made from a base corpus, for measuring nmt at scale.

    python scripts/make_corpus.py BASE OUT --pairs 4500000 [--join 2] [--seed 1] [--src de --tgt en]
        [--layout text|translation]

Every generated training pair joins `--join` training pairs of BASE drawn at random (with
repetition) side by side: with Multi30k and the default 2, about 25 words a side. The same BASE,
N, join and seed give the same bytes. The validation and test splits of BASE are copied as they
are. BASE is anything nmt reads (a hub id, a hub-layout directory, text files); OUT is written as
line-aligned text files (`train.de`, `train.en`, `val.*`, `test.*`) or, with `--layout
translation`, as JSON lines of the hub's `{"translation": {"de": ..., "en": ...}}` layout.
Writes about 280 MB per million pairs with Multi30k, joined by two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nmt.data.corpus import load_corpus  # noqa: E402

CHUNK = 100_000  # pairs drawn and written at a time


def joined_pairs(src: list[str], tgt: list[str], pairs: int, join: int, seed: int):
    """Chunks of (source lines, target lines): each line `join` random base lines side by side."""
    rng = np.random.default_rng(seed)
    for start in range(0, pairs, CHUNK):
        picks = rng.integers(0, len(src), size=(min(CHUNK, pairs - start), join))
        yield (
            [" ".join(src[i] for i in row) for row in picks.tolist()],
            [" ".join(tgt[i] for i in row) for row in picks.tolist()],
        )


def write_text(out: Path, name: str, langs: tuple[str, str], chunks) -> None:
    with contextlib.ExitStack() as files:
        streams = [files.enter_context(open(out / f"{name}.{lang}", "w", encoding="utf-8")) for lang in langs]
        for chunk in chunks:
            for stream, lines in zip(streams, chunk):
                stream.write("".join(line + "\n" for line in lines))


def write_translation(out: Path, name: str, langs: tuple[str, str], chunks) -> None:
    with open(out / f"{name}.jsonl", "w", encoding="utf-8") as stream:
        for src_lines, tgt_lines in chunks:
            stream.write(
                "".join(
                    json.dumps({"translation": {langs[0]: s, langs[1]: t}}, ensure_ascii=False) + "\n"
                    for s, t in zip(src_lines, tgt_lines)
                )
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the base corpus: a hub id, a hub-layout directory or text files")
    parser.add_argument("out", type=Path, help="the directory to write (made if missing)")
    parser.add_argument("--pairs", type=int, required=True, help="training pairs to generate")
    parser.add_argument("--join", type=int, default=2, help="base pairs joined into one generated pair")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--src", default="de")
    parser.add_argument("--tgt", default="en")
    parser.add_argument("--layout", choices=("text", "translation"), default="text")
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.join < 1:
        parser.error("--pairs and --join must be >= 1")
    base = load_corpus(args.base, args.src, args.tgt)
    args.out.mkdir(parents=True, exist_ok=True)
    write = write_text if args.layout == "text" else write_translation
    langs = (args.src, args.tgt)
    train = base["train"]
    src, tgt = train.src, train.tgt
    write(args.out, "train", langs, joined_pairs(src, tgt, args.pairs, args.join, args.seed))
    for split, name in (("validation", "val"), ("test", "test")):
        write(args.out, name, langs, [(base[split].src, base[split].tgt)])
    print(f"wrote {args.pairs:,} training pairs to {args.out} ({args.layout} layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
