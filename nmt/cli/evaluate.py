"""`nmt-evaluate`: BLEU, chrF and TER with sacrebleu, each with its signature. Three ways in:

    nmt-evaluate RUN_OR_CKPT [RUN_OR_CKPT ...] --split test    # the corpus the run trained on
    nmt-evaluate RUN1 RUN2 [...] --ensemble --split test       # the models as one ensemble
    nmt-evaluate RUN_OR_CKPT --src FILE --ref FILE             # any parallel text
    nmt-evaluate --hyp FILE --ref FILE                         # translations made elsewhere

With a model, hypotheses and a JSON of the scores are written to the run's `results/`. It takes
the search and inference flags of `nmt-translate`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from nmt.checkpoint import CheckpointError
from nmt.cli.options import add_option_flags, options_from_args
from nmt.data.corpus import DataError, read_lines
from nmt.evaluation import corpus_split, language_pair, sacrebleu_testset
from nmt.model_sources import resolve_model
from nmt.options import InferenceOptions, SearchOptions
from nmt.scoring import Score, corpus_scores
from nmt.translation import Translator

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    name: str  # the checkpoint, or the hypothesis file
    split: str
    beam: int
    sentences: int
    scores: list[Score]
    seconds: float | None = None  # translation time, model loading excluded

    @property
    def sentences_per_s(self) -> float | None:
        return self.sentences / self.seconds if self.seconds else None


def evaluate_model(
    checkpoints: list[Path], sources: list[str], references: list[str], split: str, args: argparse.Namespace
) -> Evaluation:
    """Translate `sources` with the checkpoint (several: their ensemble), score, and write
    hypotheses + JSON to the (first) checkpoint's run's results/."""
    search_options, inference = options_from_args(SearchOptions, args), options_from_args(InferenceOptions, args)
    translator = Translator.load(checkpoints, search_options, inference)
    started = time.perf_counter()
    hypotheses = translator.translate(sources)
    seconds = time.perf_counter() - started
    scores = corpus_scores(hypotheses, references, args.lowercase_bleu)
    name = " + ".join(map(str, checkpoints))
    evaluation = Evaluation(name, split, search_options.beam_size, len(sources), scores, seconds)
    out_dir = _results_dir(checkpoints[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{split}.{checkpoints[0].stem}" + (f".ensemble{len(checkpoints)}" if len(checkpoints) > 1 else "")
    stem += f".beam{search_options.beam_size}"
    if inference.precision != "fp32" or inference.quantize != "none":
        stem += f".{inference.quantize if inference.quantize != 'none' else inference.precision}"
    if search_options.sample:
        stem += f".sample{search_options.seed}"
    (out_dir / f"{stem}.hyp").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    result = {
        **asdict(evaluation),
        "checkpoints": [str(checkpoint) for checkpoint in checkpoints],
        "sentences_per_s": evaluation.sentences_per_s,
        "search": asdict(search_options),
        "inference": asdict(inference),
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s.{hyp,json} in %s", stem, out_dir)
    return evaluation


def _results_dir(checkpoint: Path) -> Path:
    """The run's results/; a model directory's results go under ./results/NAME (a Hub
    snapshot lives in the hub client's cache, which is not ours to write)."""
    if checkpoint.is_dir():
        return Path("results") / checkpoint.name
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / "results"


def format_table(evaluations: list[Evaluation]) -> str:
    lowercased = any(s.name == "BLEU-lc" for e in evaluations for s in e.scores)
    extra = " BLEU-lc |" if lowercased else ""
    lines = [
        f"| model | split | beam | sentences | BLEU |{extra} chrF | TER | sentences/s |",
        "| --- | --- | ---: | ---: | ---: |" + (" ---: |" if lowercased else "") + " ---: | ---: | ---: |",
    ]
    for e in evaluations:
        scores = {s.name: s.score for s in e.scores}
        speed = f"{e.sentences_per_s:.1f}" if e.sentences_per_s else "-"
        lc = f" {scores['BLEU-lc']:.2f} |" if lowercased else ""
        lines.append(
            f"| {e.name} | {e.split} | {e.beam} | {e.sentences} | {scores['BLEU']:.2f} |{lc} "
            f"{scores['chrF2']:.2f} | {scores['TER']:.2f} | {speed} |"
        )
    signatures = {f"{s.name}: {s.signature}" for e in evaluations for s in e.scores}
    return "\n".join([*lines, "", *sorted(signatures)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt-evaluate", description="BLEU, chrF and TER with sacrebleu.")
    parser.add_argument("checkpoints", nargs="*", metavar="RUN_OR_CKPT", help="run directories or checkpoints")
    parser.add_argument("--split", choices=("validation", "test"), help="score a split of the run's corpus")
    parser.add_argument("--source", help="corpus to read --split from (default: the one the run trained on)")
    parser.add_argument("--src", help="source file to translate")
    parser.add_argument("--ref", help="reference file")
    parser.add_argument("--hyp", help="translations to score (no model needed)")
    parser.add_argument("--testset", help="a sacrebleu test set name, e.g. wmt16 (sacrebleu downloads it)")
    parser.add_argument("--langpair", help="with --testset: e.g. de-en (default: the run's languages)")
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="translate with the checkpoints as one ensemble (the mean of their log-probabilities) "
        "instead of scoring each",
    )
    parser.add_argument(
        "--lowercase-bleu",
        action="store_true",
        help="also the lowercased BLEU most Multi30k papers report (BLEU-lc, with its signature)",
    )
    add_option_flags(parser, SearchOptions, "search")
    add_option_flags(parser, InferenceOptions, "inference")
    args = parser.parse_args(argv)
    ways = sum([args.split is not None, args.src is not None, args.hyp is not None, args.testset is not None])
    if ways != 1:
        parser.error("give exactly one of --split, --src/--ref, --hyp/--ref, --testset")
    if (args.src or args.hyp) and not args.ref:
        parser.error("--src and --hyp need --ref")
    if args.hyp is None and not args.checkpoints:
        parser.error("give a run directory or checkpoint to translate with")
    if args.ensemble and len(args.checkpoints) < 2:
        parser.error("--ensemble needs at least two run directories or checkpoints")
    return args


def evaluations(args: argparse.Namespace) -> list[Evaluation]:
    if args.hyp:
        hypotheses, references = read_lines(Path(args.hyp)), read_lines(Path(args.ref))
        scores = corpus_scores(hypotheses, references, args.lowercase_bleu)
        return [Evaluation(args.hyp, Path(args.ref).name, 0, len(hypotheses), scores)]
    results = []
    models = (
        [[resolve_model(c) for c in args.checkpoints]]
        if args.ensemble
        else [[resolve_model(c)] for c in args.checkpoints]
    )
    for checkpoints in models:
        checkpoint = checkpoints[0]
        if args.split:
            sources, references = corpus_split(checkpoint, args.split, args.source)
            split = args.split
        elif args.testset:
            sources, references = sacrebleu_testset(args.testset, args.langpair or language_pair(checkpoint))
            split = args.testset
        else:
            sources, references = read_lines(Path(args.src)), read_lines(Path(args.ref))
            split = Path(args.src).name
        if len(sources) != len(references):
            raise ValueError(f"{len(sources)} source lines but {len(references)} references")
        results.append(evaluate_model(checkpoints, sources, references, split, args))
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        table = format_table(evaluations(args))
    except (ValueError, CheckpointError, DataError, RuntimeError, OSError) as error:
        print(f"nmt-evaluate: {error}", file=sys.stderr)
        return 2
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
