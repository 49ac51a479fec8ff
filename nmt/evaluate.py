"""Scoring with sacrebleu: detokenized text against references, with the metric's signature."""

from __future__ import annotations

from dataclasses import dataclass

from sacrebleu.metrics import BLEU


@dataclass
class Score:
    name: str
    score: float
    signature: str

    def __str__(self) -> str:
        return f"{self.name} = {self.score:.2f}  ({self.signature})"


def bleu(hypotheses: list[str], references: list[str]) -> Score:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, cased) of one reference per line."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    metric = BLEU()
    result = metric.corpus_score(hypotheses, [references])
    return Score("BLEU", result.score, str(metric.get_signature()))
