"""Scoring with sacrebleu, and the `nmt-evaluate` command.

Hypotheses are scored detokenized, against plain-text references, with sacrebleu's defaults;
every score carries its signature. Three ways in:

    nmt-evaluate RUN_OR_CKPT [RUN_OR_CKPT ...] --split test    # the corpus the run trained on
    nmt-evaluate RUN_OR_CKPT --src FILE --ref FILE             # any parallel text
    nmt-evaluate --hyp FILE --ref FILE                         # translations made elsewhere

With a model, hypotheses and a JSON of the scores are written to the run's `results/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from sacrebleu.metrics import BLEU, CHRF, TER

from nmt.config import PRECISIONS
from nmt.quantize import QUANTIZE_KINDS
from nmt.search import LENGTH_PENALTIES, STOPPING_RULES, SearchOptions
from nmt.workers import default_workers, parse_workers

log = logging.getLogger(__name__)


@dataclass
class Score:
    name: str
    score: float
    signature: str

    def __str__(self) -> str:
        return f"{self.name} = {self.score:.2f}  ({self.signature})"


def _check_lengths(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references; they must be line-aligned")


def bleu(hypotheses: list[str], references: list[str]) -> Score:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, cased) of one reference per line."""
    _check_lengths(hypotheses, references)
    metric = BLEU()
    result = metric.corpus_score(hypotheses, [references])
    return Score("BLEU", result.score, str(metric.get_signature()))


def corpus_scores(hypotheses: list[str], references: list[str]) -> list[Score]:
    """BLEU, chrF and TER, each with its signature."""
    _check_lengths(hypotheses, references)
    scores = []
    for metric in (BLEU(), CHRF(), TER()):
        result = metric.corpus_score(hypotheses, [references])
        scores.append(Score(result.name, result.score, str(metric.get_signature())))
    return scores


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


def read_text(path: str | Path) -> list[str]:
    """A text file's lines (UTF-8, gzipped or not), for sources, references and hypotheses."""
    from nmt.data import read_lines  # clear errors for missing files and invalid UTF-8

    return read_lines(Path(path))


def _results_dir(checkpoint: Path) -> Path:
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return run_dir / "results"


def evaluate_model(run_or_checkpoint: str, sources: list[str], references: list[str], split: str,
                   args: argparse.Namespace) -> Evaluation:  # fmt: skip
    """Translate `sources` with the checkpoint, score, and write hypotheses + JSON to results/."""
    from nmt.checkpoint import resolve_checkpoint
    from nmt.translate import Translator

    checkpoint = resolve_checkpoint(run_or_checkpoint)
    options = SearchOptions(beam_size=args.beam, length_penalty=args.length_penalty, alpha=args.alpha,
                            stopping=args.stopping, max_len_a=args.max_len_a, max_len_b=args.max_len_b)  # fmt: skip
    translator = Translator.from_checkpoint(
        checkpoint, args.device, options, args.batch_tokens, args.precision, args.quantize,
        args.workers or default_workers(),
    )
    started = time.perf_counter()
    hypotheses = translator.translate(sources)
    seconds = time.perf_counter() - started
    evaluation = Evaluation(str(checkpoint), split, args.beam, len(sources), corpus_scores(hypotheses, references), seconds)
    out_dir = _results_dir(checkpoint)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{split}.{checkpoint.stem}.beam{args.beam}"
    if args.precision != "fp32" or args.quantize != "none":
        stem += f".{args.quantize if args.quantize != 'none' else args.precision}"
    (out_dir / f"{stem}.hyp").write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
    result = {
        **asdict(evaluation), "sentences_per_s": evaluation.sentences_per_s, "search": asdict(options),
        "precision": args.precision, "quantize": args.quantize,
    }  # fmt: skip
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s.{hyp,json} in %s", stem, out_dir)
    return evaluation


def _corpus_split(run_or_checkpoint: str, split: str, source: str | None) -> tuple[list[str], list[str]]:
    """Sources and references of the corpus the checkpoint was trained on (or `source`)."""
    from nmt.checkpoint import load_checkpoint, resolve_checkpoint
    from nmt.config import Config
    from nmt.data import load_corpus

    config = Config.from_dict(load_checkpoint(resolve_checkpoint(run_or_checkpoint))["config"]).data
    prefixes = {"train": config.train_prefix, "validation": config.valid_prefix, "test": config.test_prefix}
    corpus = load_corpus(source or config.source, config.src_lang, config.tgt_lang, prefixes)
    return list(corpus[split]["src"]), list(corpus[split]["tgt"])


def _testset(name: str, langpair: str) -> tuple[list[str], list[str]]:
    """A sacrebleu test set (downloaded by sacrebleu into its cache on first use)."""
    from sacrebleu.utils import get_reference_files, get_source_file

    try:
        return read_text(get_source_file(name, langpair)), read_text(get_reference_files(name, langpair)[0])
    except Exception as error:  # sacrebleu raises plain exceptions or exits for unknown sets
        raise ValueError(f"sacrebleu test set {name!r} ({langpair}) is not available: {error}") from None


def format_table(evaluations: list[Evaluation]) -> str:
    lines = ["| model | split | beam | sentences | BLEU | chrF | TER | sentences/s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for e in evaluations:
        scores = {s.name: s.score for s in e.scores}
        speed = f"{e.sentences_per_s:.1f}" if e.sentences_per_s else "-"
        lines.append(f"| {e.name} | {e.split} | {e.beam} | {e.sentences} | {scores['BLEU']:.2f} | "
                     f"{scores['chrF2']:.2f} | {scores['TER']:.2f} | {speed} |")  # fmt: skip
    signatures = {f"{s.name}: {s.signature}" for e in evaluations for s in e.scores}
    return "\n".join([*lines, "", *sorted(signatures)])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nmt-evaluate", description="BLEU, chrF and TER with sacrebleu.")
    parser.add_argument("checkpoints", nargs="*", metavar="RUN_OR_CKPT", help="run directories or checkpoints")
    parser.add_argument("--split", choices=("validation", "test"), help="score a split of the run's corpus")
    parser.add_argument("--source", help="corpus to read --split from (default: the one the run trained on)")
    parser.add_argument("--src", help="source file to translate")
    parser.add_argument("--ref", help="reference file")
    parser.add_argument("--hyp", help="translations to score (no model needed)")
    parser.add_argument("--testset", help="a sacrebleu test set name, e.g. wmt16 (sacrebleu downloads it)")
    parser.add_argument("--langpair", help="with --testset: e.g. de-en (default: the run's languages)")
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--length-penalty", default=SearchOptions.length_penalty, choices=LENGTH_PENALTIES)
    parser.add_argument("--alpha", type=float, default=0.6)
    parser.add_argument("--stopping", default=SearchOptions.stopping, choices=STOPPING_RULES)
    parser.add_argument("--max-len-a", type=float, default=1.5)
    parser.add_argument("--max-len-b", type=int, default=10)
    parser.add_argument("--batch-tokens", type=int, default=2000)
    parser.add_argument("--workers", type=parse_workers, default=None,
                        help="CPU processes searching side by side (default: one per core on Linux; 1: one process)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="bf16: autocast products; auto: bf16 where native")
    parser.add_argument("--quantize", default="none", choices=QUANTIZE_KINDS,
                        help="int8: dynamic int8 LSTM and linear layers (CPU)")
    args = parser.parse_args(argv)
    ways = sum([args.split is not None, args.src is not None, args.hyp is not None, args.testset is not None])
    if ways != 1:
        parser.error("give exactly one of --split, --src/--ref, --hyp/--ref, --testset")
    if (args.src or args.hyp) and not args.ref:
        parser.error("--src and --hyp need --ref")
    if args.hyp is None and not args.checkpoints:
        parser.error("give a run directory or checkpoint to translate with")
    return args


def _evaluations(args: argparse.Namespace) -> list[Evaluation]:
    if args.hyp:
        hypotheses, references = read_text(args.hyp), read_text(args.ref)
        return [Evaluation(args.hyp, Path(args.ref).name, 0, len(hypotheses), corpus_scores(hypotheses, references))]
    evaluations = []
    for checkpoint in args.checkpoints:
        if args.split:
            sources, references = _corpus_split(checkpoint, args.split, args.source)
            split = args.split
        elif args.testset:
            sources, references = _testset(args.testset, args.langpair or _langpair(checkpoint))
            split = args.testset
        else:
            sources, references = read_text(args.src), read_text(args.ref)
            split = Path(args.src).name
        if len(sources) != len(references):
            raise ValueError(f"{len(sources)} source lines but {len(references)} references")
        evaluations.append(evaluate_model(checkpoint, sources, references, split, args))
    return evaluations


def _langpair(checkpoint: str) -> str:
    from nmt.checkpoint import load_checkpoint, resolve_checkpoint

    data = load_checkpoint(resolve_checkpoint(checkpoint))["config"]["data"]
    return f"{data['src_lang']}-{data['tgt_lang']}"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = _parse_args(argv)
    from nmt.checkpoint import CheckpointError
    from nmt.data import DataError

    try:
        evaluations = _evaluations(args)
    except (ValueError, CheckpointError, DataError, RuntimeError, OSError) as error:
        print(f"nmt-evaluate: {error}", file=sys.stderr)
        return 2
    print(format_table(evaluations))
    return 0


if __name__ == "__main__":
    sys.exit(main())
