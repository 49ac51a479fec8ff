"""The service's engine: the loaded model, and a queue whose requests are searched together.

Requests arrive one by one from many clients; searching each alone would run tiny batches. The
engine's search threads take the first request waiting, wait at most `max_wait_ms` for more, and
search every segment of those requests that share their search options as one call of
`Translator.search_ids`, which sorts them into token-budget batches as `nmt-translate` does. A
segment's answer does not depend on its batch (fp32 and bf16 search is row by row), so it is the
one `nmt-translate` gives; sampling requests are searched alone (their draws follow the batch).

A reload loads the new checkpoint beside the old one and swaps it in under a lock: a request is
pinned to the model it was queued with, so requests in flight finish on the old model.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

from nmt.checkpoint import resolve_checkpoint
from nmt.config import InferenceOptions, SearchOptions
from nmt.model.seq2seq import count_parameters
from nmt.translation import Translation, Translator

log = logging.getLogger(__name__)

LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")


class QueueFull(RuntimeError):
    """More segments are waiting than the service holds: the client should retry later."""


class Expired(RuntimeError):
    """A request's deadline passed before it was searched."""


@dataclass(frozen=True)
class EngineSettings:
    max_wait_ms: float = 5.0  # how long the first request waits for others to share its batch
    queue_segments: int = 1024  # segments waiting at most; beyond, requests are refused (503)
    batching: bool = True  # off: every request is searched alone
    search_threads: int = 1


@dataclass
class LoadedModel:
    """A checkpoint ready to translate, with what `/model` reports of it."""

    path: Path
    translator: Translator  # its options are replaced per request
    sha256: str
    info: dict[str, Any]

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, inference: InferenceOptions) -> LoadedModel:
        path = resolve_checkpoint(run_or_checkpoint)
        digest = _sha256(path)  # read first: what is hashed is what is loaded, unless it is rewritten between
        translator = Translator.load(path, inference=replace(inference, workers=1)).freeze()
        config = translator.config
        assert config is not None  # loaded from a checkpoint
        info = {
            "checkpoint": str(path),
            "sha256": digest,
            "src_lang": config.data.src_lang,
            "tgt_lang": config.data.tgt_lang,
            "encoder_cell": config.model.encoder.cell,
            "decoder_cell": config.model.decoder.cell,
            "attention": config.model.attention,
            "parameters": count_parameters(translator.model),
            "precision": translator.precision,
            "quantize": inference.quantize,
            "device": str(translator.device),
            "src_vocab_size": translator.tokenizer.src_vocab_size,
            "tgt_vocab_size": translator.tokenizer.tgt_vocab_size,
        }
        return cls(path, translator, digest, info)

    def translator_for(self, options: SearchOptions) -> Translator:
        return self.translator.with_options(options)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clean_segment(text: str) -> str:
    """One segment, one line: line breaks inside it become spaces (nmt-translate would split it)."""
    return LINE_BREAKS.sub(" ", text)


@dataclass
class Job:
    """One request's segments, waiting in the queue."""

    loaded: LoadedModel
    options: SearchOptions
    segments: list[str]
    deadline: float  # time.monotonic()
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        return id(self.loaded), astuple(self.options)


class Engine:
    """Searches queued requests in shared batches on `settings.search_threads` threads."""

    def __init__(self, loaded: LoadedModel, settings: EngineSettings) -> None:
        self.settings = settings
        self._loaded = loaded
        self._swap = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting = 0  # segments queued, not yet taken by a search thread
        self._count = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.batches = 0  # search calls made, for the logs and the tests
        self.segments = 0

    @property
    def loaded(self) -> LoadedModel:
        with self._swap:
            return self._loaded

    def start(self) -> None:
        for number in range(self.settings.search_threads):
            thread = threading.Thread(target=self._run, name=f"nmt-search-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Search what is queued, then stop the threads."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def submit(self, segments: list[str], options: SearchOptions, timeout_s: float) -> Job:
        """Queue a request -> its Job, whose future gives its Translations in order. Raises
        QueueFull."""
        with self._count:
            if self._waiting + len(segments) > self.settings.queue_segments:
                raise QueueFull(f"{self._waiting} segments are waiting; the queue holds {self.settings.queue_segments}")
            self._waiting += len(segments)
        job = Job(self.loaded, options, [clean_segment(s) for s in segments], time.monotonic() + timeout_s)
        self._queue.put(job)
        return job

    def reload(self, run_or_checkpoint: str | Path | None, inference: InferenceOptions) -> LoadedModel:
        """Load a checkpoint (default: the one serving) and swap it in; on failure the old one
        goes on serving and the error is raised."""
        new = LoadedModel.load(run_or_checkpoint or self.loaded.path, inference)
        with self._swap:
            self._loaded = new
        log.info("serving %s (sha256 %s)", new.path, new.sha256[:12])
        return new

    # --- the search threads ---------------------------------------------------------------------
    def _run(self) -> None:
        while (first := self._queue.get()) is not None:
            jobs = self._gather(first)
            groups: dict[tuple, list[Job]] = defaultdict(list)
            for job in jobs:
                groups[job.key].append(job)
            for group in groups.values():
                try:
                    self._search(group)
                except Exception as error:  # a bug: its requests answer 500, the thread goes on
                    log.exception("search failed")
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(error)

    def _gather(self, first: Job) -> list[Job]:
        """`first` and the requests that arrive within max_wait_ms, up to a batch's tokens."""
        jobs = [first]
        self._taken(first)
        if not self.settings.batching or first.options.sample:
            return jobs
        tokens, budget = _tokens(first), first.loaded.translator.batch_tokens
        until = time.monotonic() + self.settings.max_wait_ms / 1000
        while tokens < budget:
            try:
                job = self._queue.get(timeout=max(0.0, until - time.monotonic()))
            except queue.Empty:
                break
            if job is None or job.options.sample:
                self._queue.put(job)  # the stop marker, or a request that is searched alone: later
                break
            self._taken(job)
            jobs.append(job)
            tokens += _tokens(job)
        return jobs

    def _taken(self, job: Job) -> None:
        with self._count:
            self._waiting -= len(job.segments)

    def _search(self, jobs: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.future.cancelled():
                continue
            if now > job.deadline:
                job.future.set_exception(Expired("the request's deadline passed while it waited"))
                continue
            if job.future.set_running_or_notify_cancel():
                live.append(job)
        if not live:
            return
        lines = [segment for job in live for segment in job.segments]
        translations = live[0].loaded.translator_for(live[0].options).translate_lines(lines)
        self.batches += 1
        self.segments += len(lines)
        start = 0
        for job in live:
            job.future.set_result(translations[start : start + len(job.segments)])
            start += len(job.segments)


def _tokens(job: Job) -> int:
    # A rough count before tokenizing: ~1 piece per 4 characters, as a budget's guide only.
    return sum(len(segment) // 4 + 2 for segment in job.segments)


def translation_dict(translation: Translation, nbest: int) -> dict[str, Any]:
    result: dict[str, Any] = {"text": translation.text, "score": round(translation.score, 6)}
    if nbest > 1:
        result["nbest"] = [{"text": text, "score": round(score, 6)} for text, score in translation.nbest]
    return result
