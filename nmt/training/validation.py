"""Validation during training: the teacher-forced loss, perplexity and BLEU of the model on the
validation split, shared between the ranks, and the attention and gate figures for TensorBoard."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from nmt.config import LONG_VALIDATION, TrainConfig
from nmt.data.batching import collate, token_budget_batches
from nmt.data.store import ValidationSplit
from nmt.data.tokenizer import Tokenizer
from nmt.scoring import bleu
from nmt.training.distributed import Ranks, all_sum, gather_objects
from nmt.training.loss import TeacherForcedLoss
from nmt.translation import Translator


class Validator:
    """Judges the weights a `TeacherForcedLoss` holds on the validation split."""

    def __init__(
        self,
        loss: TeacherForcedLoss,
        tokenizer: Tokenizer,
        valid: ValidationSplit,
        config: TrainConfig,
        ranks: Ranks,
    ) -> None:
        self.loss, self.model = loss, loss.model
        self.tokenizer = tokenizer
        self.config = config
        self.ranks = ranks
        self.src_ids, self.tgt_ids = valid.src_ids, valid.tgt_ids
        self.refs = valid.tgt_texts
        self.bleu_sample = bleu_sample(len(valid), config.valid_bleu_sentences)
        self.gate_sentence = next((text for text in valid.src_texts if text.strip()), None)
        # Each rank translates its share of the sentences in one process.
        self.translator = Translator(
            self.model, tokenizer, config.valid_search, loss.device, config.batch_tokens, loss.precision, workers=1
        )

    def validate(self) -> dict[str, float]:
        """Teacher-forced loss and perplexity, and BLEU of the validation translations. Each rank
        takes every world_size-th batch and sentence; every rank gets the same result."""
        self.model.eval()
        rank, world_size = self.ranks.rank, self.ranks.world_size
        src_ids, tgt_ids = self.src_ids, self.tgt_ids
        lengths = [max(len(s), len(t)) + 1 for s, t in zip(src_ids, tgt_ids)]
        nll_total, tokens = 0.0, 0
        with torch.inference_mode():
            for indices in token_budget_batches(lengths, self.config.batch_tokens)[rank::world_size]:
                batch = collate([src_ids[i] for i in indices], [tgt_ids[i] for i in indices]).to(self.loss.device)
                _, nll = self.loss(batch)
                nll_total += float(nll)
                tokens += batch.num_tgt_tokens
        nll_total, tokens = all_sum([nll_total, tokens], self.ranks)
        sample = self.bleu_sample
        mine = [src_ids[i] for i in sample[rank::world_size]]
        shares = gather_objects(self.translator.translate_ids(mine), self.ranks)
        hypotheses = [""] * len(sample)
        for share_rank, share in enumerate(shares):
            hypotheses[share_rank::world_size] = share
        score = bleu(hypotheses, [self.refs[i] for i in sample])
        loss = nll_total / max(tokens, 1)
        return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "bleu": score.score, "signature": score.signature}

    def plot(self, writer: SummaryWriter, step: int) -> None:
        """The figures the config asks for (train.valid_attention_plots, train.valid_gate_plots)."""
        self._plot_attention(writer, step)
        self._plot_gates(writer, step)

    def _plot_attention(self, writer: SummaryWriter, step: int) -> None:
        """Attention heatmaps of the first validation sentences, greedy."""
        count = self.config.valid_attention_plots
        if not count or self.model.decoder.attention is None:
            return
        from nmt.plots import attention_figure  # matplotlib only when plots are asked for

        options = replace(self.translator.options, beam_size=1, nbest=1, sample=False, return_attention=True)
        plotter = Translator(
            self.model, self.tokenizer, options, self.loss.device, self.translator.batch_tokens, self.loss.precision, 1
        )
        for i, hypotheses in enumerate(plotter.search_ids(self.src_ids[:count])):
            best = hypotheses[0]
            if best.attention is None:
                continue
            src_pieces = [*self.tokenizer.src_id_pieces(self.src_ids[i]), "</s>"]
            tgt_pieces = [*self.tokenizer.tgt_id_pieces(best.tokens), "</s>"]
            writer.add_figure(f"attention/valid_{i}", attention_figure(best.attention, src_pieces, tgt_pieces), step)

    def _plot_gates(self, writer: SummaryWriter, step: int) -> None:
        """Every layer's gates on the first validation sentence."""
        if not self.config.valid_gate_plots or self.gate_sentence is None:
            return
        from nmt.inspection import inspect_sentence
        from nmt.plots import gate_figure

        _, layers = inspect_sentence(self.model, self.tokenizer, self.gate_sentence, self.loss.device)
        for layer in layers:
            title = f"{layer.side} layer {layer.layer} ({layer.direction})"
            writer.add_figure(f"gates/{layer.name}", gate_figure(layer.gates, layer.pieces, title), step)


def bleu_sample(sentences: int, wanted: int) -> list[int]:
    """The validation sentences BLEU decodes: `wanted` of them (0: up to LONG_VALIDATION), a
    sample fixed by a seed of its own, so every run and every step judges the same ones."""
    wanted = min(sentences, wanted or LONG_VALIDATION)
    if wanted == sentences:
        return list(range(sentences))
    return sorted(np.random.default_rng(0).choice(sentences, wanted, replace=False).tolist())
