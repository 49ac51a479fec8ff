"""The Translator: a checkpoint in, text in, text out. The Python API of nmt.

    from nmt import Translator

    translator = Translator.load("runs/multi30k_de_en/<time>", beam_size=5, nbest=2)
    translator.translate(["Ein Mann fährt Fahrrad."])            # ['A man rides a bike.']
    translator.translate_lines(["Ein Hund läuft."])[0].nbest     # [('A dog runs.', -0.21), ...]

Lines are translated in token-budget batches of similar length and returned in input order, one
result for every line; a blank line gives an empty result. The command lines (`nmt.cli`) are thin
layers over this module.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import logging
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from nmt.checkpoint import Checkpoint, CheckpointError
from nmt.config import Config
from nmt.data.batching import collate_src, token_budget_batches
from nmt.data.tokenizer import Tokenizer
from nmt.model.device import autocast, resolve_precision
from nmt.model.onednn import onednn_available, use_onednn_linears
from nmt.model.quantize import quantize_int8
from nmt.model.seq2seq import Seq2Seq
from nmt.model_sources import load_for_translation, resolve_model
from nmt.onnx_engine import OnnxModel
from nmt.options import InferenceOptions, SearchOptions
from nmt.search import DecodingModel, Hypothesis, search, start_search
from nmt.search.ensemble import Ensemble
from nmt.workers import can_fork, map_in_workers, resolve_workers

log = logging.getLogger(__name__)

CHUNK_LINES = 2000  # lines of a stream read, sorted and translated together


@dataclass
class Translation:
    """The search's hypotheses for one input line, best first, with their detokenized texts."""

    source: str
    hypotheses: list[Hypothesis] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    @property
    def score(self) -> float:
        """The best hypothesis's score (log-probability after the length penalty); 0 for a blank line."""
        return self.hypotheses[0].score if self.hypotheses else 0.0

    @property
    def nbest(self) -> list[tuple[str, float]]:
        """(text, score) of every hypothesis kept, best first."""
        return [(text, hypothesis.score) for text, hypothesis in zip(self.texts, self.hypotheses)]


class Translator:
    """A model and its tokenizer, with the search and the batching to translate with."""

    def __init__(
        self,
        model: Seq2Seq,
        tokenizer: Tokenizer,
        search_options: SearchOptions,
        device: torch.device,
        batch_tokens: int,
        precision: str,
        workers: int,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.options = search_options
        self.device = device
        self.batch_tokens = batch_tokens
        self.precision = resolve_precision(precision, device)  # a bad value fails here, not mid-translation
        # Forked processes for the batches of one call (nmt.workers); CUDA cannot fork.
        self.workers = resolve_workers(workers) if device.type == "cpu" and can_fork() else 1
        self.config: Config | None = None  # the checkpoint's, when loaded from one
        self.max_src_len = InferenceOptions().max_src_len  # source pieces per line; 0: all
        self._frozen_searcher: DecodingModel | None = None
        self.members: list[Seq2Seq] = []  # an ensemble's other models
        # With --engine onnxruntime, what search steps: the models' ONNX graphs (the torch
        # models stay for the gate inspector).
        self.graphs: list[OnnxModel] = []

    @classmethod
    def load(
        cls,
        run_or_checkpoint: str | Path | Sequence[str | Path],
        search_options: SearchOptions | None = None,
        inference: InferenceOptions | None = None,
        **options: Any,
    ) -> Translator:
        """The model of a run directory (its best.pt, else last.pt) or of a checkpoint file; for
        several, their ensemble (`nmt.search.ensemble`: the mean of their log-probabilities).

        `options` are fields of SearchOptions (beam_size, nbest, length_penalty, sample, ...) or
        of InferenceOptions (device, precision, quantize, batch_tokens, workers), by name; they
        override `search_options` and `inference`.
        """
        search_options, inference = split_options(search_options, inference, options)
        paths = [run_or_checkpoint] if isinstance(run_or_checkpoint, str | Path) else list(run_or_checkpoint)
        if not paths:
            raise ValueError("no checkpoint to translate with")
        if inference.engine == "onnxruntime":  # the graphs run on the CPU, in float32 or int8 graphs
            paths = [resolve_model(path) for path in paths]
            inference = replace(inference, device="cpu", precision="fp32")
        loaded = [_load_for_translation(path, inference) for path in paths]
        (model, checkpoint), others = loaded[0], loaded[1:]
        tokenizer = checkpoint.tokenizer
        for path, (_, other) in zip(paths[1:], others):
            other_tokenizer = other.tokenizer
            if other_tokenizer.fingerprint != tokenizer.fingerprint:
                raise CheckpointError(
                    f"cannot ensemble {path} with {paths[0]}: their vocabularies differ (tokenizer "
                    f"{other_tokenizer.fingerprint} against {tokenizer.fingerprint}); an ensemble's models "
                    "must share the tokenizer they were trained with"
                )
        device = next(model.parameters()).device
        translator = cls(
            model, tokenizer, search_options, device, inference.batch_tokens, inference.precision, inference.workers
        )
        translator.members = [other_model for other_model, _ in others]
        if inference.engine == "onnxruntime":
            # One thread per session where workers are forked: a parent's session with a thread
            # pool would hang its children's sessions.
            threads = 1 if translator.workers > 1 else None
            int8 = inference.quantize == "int8"
            translator.graphs = [OnnxModel.load(path, int8=int8, threads=threads) for path in paths]
        elif (
            device.type == "cpu"
            and translator.precision == "fp32"
            and inference.quantize == "none"
            and onednn_available()
        ):
            for each_model in translator.models:
                use_onednn_linears(each_model)
        translator.config = checkpoint.config
        translator.max_src_len = inference.max_src_len
        return translator

    @property
    def models(self) -> list[Seq2Seq]:
        """The model, and the other members of an ensemble."""
        return [self.model, *self.members]

    def freeze(self) -> Translator:
        """Promise that the weights will not change any more (a served model): search's tables
        are made once, now, instead of once per call."""
        self._frozen_searcher = self._searcher()
        return self

    def searcher(self) -> DecodingModel:
        """What search steps: the model (or ensemble) with its tables, made now unless frozen."""
        return self._frozen_searcher or self._searcher()

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        """No autograd, this translator's precision: the context every search step runs in."""
        with torch.inference_mode(), autocast(self.precision, self.device):
            yield

    def _searcher(self) -> DecodingModel:
        # fp32 searches look the first layer's embedding half up in a table made from the weights
        # (bf16 autocast would cast it back at every step: it multiplies).
        searchers: list[DecodingModel] = list(self.graphs)
        if not searchers:
            searchers = [model.for_search() if self.precision == "fp32" else model for model in self.models]
        return searchers[0] if len(searchers) == 1 else Ensemble(searchers)

    def with_options(self, search_options: SearchOptions) -> Translator:
        """The same model, tokenizer and batching with other search options."""
        clone = copy.copy(self)
        clone.options = search_options
        return clone

    def translate(self, lines: list[str]) -> list[str]:
        """The best translation of every line, in order; empty for blank lines."""
        return [translation.text for translation in self.translate_lines(lines)]

    def translate_lines(self, lines: list[str]) -> list[Translation]:
        """One Translation per line (its n-best hypotheses, texts and scores), in order."""
        translations = [Translation(line) for line in lines]
        todo, src_ids = self.source_ids(lines)
        for i, hypotheses in zip(todo, self.search_ids(src_ids)):
            self.complete(translations[i], hypotheses)
        return translations

    def source_ids(self, lines: list[str]) -> tuple[list[int], list[list[int]]]:
        """-> the numbers of the lines that are not blank, and their source piece ids (cut to
        max_src_len pieces)."""
        todo = [i for i, line in enumerate(lines) if line.strip()]
        src_ids = self.tokenizer.encode_src([lines[i].strip() for i in todo])
        if self.max_src_len:
            for number, ids in enumerate(src_ids):
                if len(ids) > self.max_src_len:
                    log.warning(
                        "a line of %d pieces is cut to its first %d (--max-src-len)", len(ids), self.max_src_len
                    )
                    src_ids[number] = ids[: self.max_src_len]
        return todo, src_ids

    def complete(self, translation: Translation, hypotheses: list[Hypothesis]) -> None:
        translation.hypotheses = hypotheses
        translation.texts = self.tokenizer.decode_tgt([h.tokens for h in hypotheses])

    def running(self) -> RunningTranslation:
        """A search that lines join while others are being translated (continuous batching),
        with this translator's options; see RunningTranslation."""
        return RunningTranslation(self)

    def translate_stream(self, lines: Iterable[str], chunk_lines: int = CHUNK_LINES) -> Iterator[Translation]:
        """Translations of a (possibly endless) stream of lines, in order, chunk by chunk."""
        iterator = iter(lines)
        while chunk := list(itertools.islice(iterator, chunk_lines)):
            yield from self.translate_lines(chunk)

    def translate_ids(self, src_ids: list[list[int]]) -> list[str]:
        """Source piece ids -> the best hypothesis of each, detokenized."""
        return self.tokenizer.decode_tgt([hypotheses[0].tokens for hypotheses in self.search_ids(src_ids)])

    def search_ids(self, src_ids: list[list[int]]) -> list[list[Hypothesis]]:
        """Source piece ids -> hypotheses per sentence, in the order given.

        The batches do not depend on `workers`, so neither do the translations."""
        results: list[list[Hypothesis]] = [[] for _ in src_ids]
        # +1 for the eos that collate_src appends.
        batches = token_budget_batches([len(ids) + 1 for ids in src_ids], self.batch_tokens)
        was_training = self.model.training
        for model in self.models:
            model.eval()
        try:
            # The weights stay as they are for this call: search may use tables made from them.
            searcher = self.searcher()
            search_batch = functools.partial(self._search_batch, searcher)
            if self.workers > 1 and len(batches) > 1:
                # Longest sentences first (batches come shortest first): the workers finish together.
                longest_first = batches[::-1]
                tasks = [[src_ids[i] for i in batch] for batch in longest_first]
                finished = map_in_workers(search_batch, tasks, self.workers)
                batch_results = ((longest_first[k], hypotheses) for k, hypotheses in finished)
            else:
                batch_results = ((batch, search_batch([src_ids[i] for i in batch])) for batch in batches)
            for batch, hypotheses_of_batch in batch_results:
                for i, hypotheses in zip(batch, hypotheses_of_batch):
                    results[i] = hypotheses
        finally:
            for model in self.models:
                model.train(was_training)
        return results

    def _search_batch(self, searcher: DecodingModel, src_ids: list[list[int]]) -> list[list[Hypothesis]]:
        with self.searching():
            src, src_lengths = collate_src(src_ids)
            return search(searcher, src.to(self.device), src_lengths, self.options)


class RunningTranslation:
    """Lines that join a search under way and leave it when done: continuous batching, for a
    service whose requests arrive one by one. `add` requests (a key and its lines) between
    steps; `step` decodes one piece of every sentence in progress and returns the requests whose
    every line is translated. A line's translation is the one `translate_lines` gives it (up to
    the order of floating-point sums, which a batch's composition can change), as long as
    `can_join(options)`; otherwise add one request at a time and step until it is done.
    """

    def __init__(self, translator: Translator) -> None:
        self.translator = translator
        self.search = start_search(translator.searcher(), translator.options)
        self.pending: dict[Hashable, list[Translation]] = {}  # requests in progress
        self.lines_to_go: dict[Hashable, int] = {}

    @property
    def busy(self) -> bool:
        return self.search.busy

    def add(self, requests: dict[Hashable, list[str]]) -> list[tuple[Hashable, list[Translation]]]:
        """Requests (key -> lines) that join at the next step -> those done at once (all blank)."""
        done, keys, src_ids = [], [], []
        for key, lines in requests.items():
            todo, ids = self.translator.source_ids(lines)
            translations = [Translation(line) for line in lines]
            if not todo:
                done.append((key, translations))
                continue
            self.pending[key], self.lines_to_go[key] = translations, len(todo)
            keys += [(key, i) for i in todo]
            src_ids += ids
        if src_ids:
            with self.translator.searching():
                src, src_lengths = collate_src(src_ids)
                self.search.add(src.to(self.translator.device), src_lengths, keys)
        return done

    def step(self) -> list[tuple[Hashable, list[Translation]]]:
        """Decode one piece of every sentence -> the requests now done, with their translations."""
        with self.translator.searching():
            finished = self.search.step()
        done = []
        for (key, line), hypotheses in finished:
            self.translator.complete(self.pending[key][line], hypotheses)
            self.lines_to_go[key] -= 1
            if self.lines_to_go[key] == 0:
                del self.lines_to_go[key]
                done.append((key, self.pending.pop(key)))
        return done


def split_options(
    search_options: SearchOptions | None, inference: InferenceOptions | None, options: dict[str, Any]
) -> tuple[SearchOptions, InferenceOptions]:
    """Search and inference options with `options` (fields of either, by name) applied; an
    unknown name is a TypeError that lists the valid ones."""
    search_fields = {f.name for f in fields(SearchOptions)}
    inference_fields = {f.name for f in fields(InferenceOptions)}
    unknown = sorted(set(options) - search_fields - inference_fields)
    if unknown:
        valid = ", ".join(sorted(search_fields | inference_fields))
        raise TypeError(f"unknown option {', '.join(unknown)}; valid options: {valid}")
    search_changes = {k: v for k, v in options.items() if k in search_fields}
    inference_changes = {k: v for k, v in options.items() if k in inference_fields}
    search_options = replace(search_options or SearchOptions(), **search_changes)
    inference = replace(inference or InferenceOptions(), **inference_changes)
    return search_options, inference


def _load_for_translation(run_or_checkpoint: str | Path, inference: InferenceOptions) -> tuple[Seq2Seq, Checkpoint]:
    """The checkpoint's model, int8-quantized when `inference` asks for it."""
    model, checkpoint = load_for_translation(run_or_checkpoint, inference.device)
    if inference.quantize == "int8" and inference.engine == "torch":
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("int8 quantization runs on the CPU only; use device cpu")
        quantize_int8(model)
    return model, checkpoint


def load_model(run_or_checkpoint: str | Path, device: str = "auto") -> tuple[Seq2Seq, Tokenizer, Checkpoint]:
    """The model (in eval mode, on the device) and tokenizer of a run or checkpoint file, and
    the checkpoint (its config, progress and weights)."""
    model, checkpoint = load_for_translation(run_or_checkpoint, device)
    return model, checkpoint.tokenizer, checkpoint
