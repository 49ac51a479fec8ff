"""Scoring with sacrebleu: one path for validation and test.

Hypotheses are scored detokenized, against plain-text references, with sacrebleu's defaults
(cased BLEU with its 13a tokenizer, chrF, TER); every score carries its signature.
"""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF, TER


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
    if not references:
        raise ValueError("nothing to score: the hypotheses and the references are empty")


def bleu(hypotheses: list[str], references: list[str]) -> Score:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, cased) of one reference per line."""
    _check_lengths(hypotheses, references)
    metric = BLEU()
    result = metric.corpus_score(hypotheses, [references])
    return Score("BLEU", result.score, str(metric.get_signature()))


def corpus_scores(hypotheses: list[str], references: list[str], lowercase_bleu: bool = False) -> list[Score]:
    """BLEU, chrF and TER, each with its signature; with `lowercase_bleu` also the lowercased
    13a BLEU that most Multi30k papers report, as "BLEU-lc" (its signature says case:lc)."""
    _check_lengths(hypotheses, references)
    scores = []
    for metric in (BLEU(), CHRF(), TER()):
        result = metric.corpus_score(hypotheses, [references])
        scores.append(Score(result.name, result.score, str(metric.get_signature())))
    if lowercase_bleu:
        metric = BLEU(lowercase=True)
        result = metric.corpus_score(hypotheses, [references])
        scores.append(Score("BLEU-lc", result.score, str(metric.get_signature())))
    return scores
