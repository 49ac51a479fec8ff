"""Tune the beam size and length penalty of a model (or an ensemble) on the validation split.

    make tune-search ARGS="runs/multi30k_de_en/RUN"
    python scripts/tune_search.py RUN1 RUN2 --beams 1 5 10 --penalties none average gnmt:0.6 gnmt:1.0 --test

Every pair of a beam size and a length penalty (`none`, `average`, or `gnmt:ALPHA`) translates the
validation split of the corpus the (first) checkpoint was trained on; the pair with the best cased
sacrebleu BLEU is the tuned search. With --test, the test split is scored once, with the tuned
search only: the test set picks nothing. Writes OUT/search.md and OUT/search.json when --out is
given, and prints the table and the flags of nmt-translate that the tuned search takes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets

from nmt.checkpoint import resolve_checkpoint
from nmt.evaluation import corpus_split
from nmt.options import LENGTH_PENALTIES, SearchOptions
from nmt.scoring import bleu
from nmt.translation import Translator


def length_penalty(text: str) -> tuple[str, float]:
    """`none`, `average` or `gnmt:ALPHA` -> (length_penalty, alpha)."""
    name, _, alpha = text.partition(":")
    if name not in LENGTH_PENALTIES or (alpha and name != "gnmt"):
        raise argparse.ArgumentTypeError(f"{text!r}: give none, average or gnmt:ALPHA (e.g. gnmt:0.6)")
    try:
        return name, float(alpha) if alpha else SearchOptions.alpha
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: ALPHA must be a number (e.g. gnmt:0.6)") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or checkpoints (several: their ensemble)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10], help="beam sizes (default: 1 5 10)")
    parser.add_argument(
        "--penalties",
        type=length_penalty,
        nargs="+",
        default=[("none", 0.6), ("average", 0.6), ("gnmt", 0.6), ("gnmt", 1.0)],
        help="length penalties: none, average, gnmt:ALPHA (default: none average gnmt:0.6 gnmt:1.0)",
    )
    parser.add_argument("--test", action="store_true", help="also score the test split with the tuned search")
    parser.add_argument("--out", type=Path, help="write search.md and search.json here")
    args = parser.parse_args(argv)
    if min(args.beams) < 1:
        parser.error("beam sizes must be >= 1")
    return args


def penalty_name(name: str, alpha: float) -> str:
    return f"gnmt:{alpha:g}" if name == "gnmt" else name


def flags(beam: int, name: str, alpha: float) -> str:
    return f"--beam {beam} --length-penalty {name}" + (f" --alpha {alpha:g}" if name == "gnmt" else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()  # one bar per split and map drowns the table
    checkpoint = resolve_checkpoint(args.runs[0])
    sources, references = corpus_split(checkpoint, "validation", None)
    translator = Translator.load(args.runs if len(args.runs) > 1 else args.runs[0])
    grid = []
    for beam in sorted(set(args.beams)):
        # Greedy search ranks nothing, so every length penalty gives it the same output.
        for name, alpha in args.penalties if beam > 1 else [("none", SearchOptions.alpha)]:
            options = SearchOptions(beam_size=beam, length_penalty=name, alpha=alpha)
            score = bleu(translator.with_options(options).translate(sources), references).score
            grid.append({"beam": beam, "length_penalty": name, "alpha": alpha, "val_bleu": score})
            print(f"beam {beam}, {penalty_name(name, alpha)}: validation BLEU {score:.2f}", flush=True)
    best = max(grid, key=lambda row: row["val_bleu"])
    tuned = SearchOptions(beam_size=best["beam"], length_penalty=best["length_penalty"], alpha=best["alpha"])
    test = None
    if args.test:
        test_sources, test_references = corpus_split(checkpoint, "test", None)
        test = bleu(translator.with_options(tuned).translate(test_sources), test_references).score
    lines = [
        f"Search tuned on the validation split: {' '.join(map(str, args.runs))} (cased sacrebleu BLEU)",
        "",
        "| beam | length penalty | validation BLEU |",
        "| ---: | --- | ---: |",
        *(
            f"| {r['beam']} | {penalty_name(r['length_penalty'], r['alpha'])} | "
            + (f"**{r['val_bleu']:.2f}**" if r is best else f"{r['val_bleu']:.2f}")
            + " |"
            for r in grid
        ),
        "",
        f"tuned: `{flags(best['beam'], best['length_penalty'], best['alpha'])}`"
        + (f"; test BLEU with it: {test:.2f}" if test is not None else ""),
    ]
    table = "\n".join(lines)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "search.md").write_text(table + "\n")
        record = {"runs": [str(run) for run in args.runs], "grid": grid, "tuned": best, "test_bleu": test}
        (args.out / "search.json").write_text(json.dumps(record, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
