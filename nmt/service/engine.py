"""The service's engine: the loaded model, a queue, and search workers that requests join.

Requests arrive one by one from many clients; searching each alone would run tiny batches, and
gathering them into batches makes each wait for the batch to fill and for its longest sentence.
So searches run continuously: one dispatcher thread hands every queued request to the least
loaded search worker (`nmt.service.worker`) with room for it, and there the request's segments
join the search under way for its options at the next step and leave it when done. A worker
holds at most a batch's tokens (`--batch-tokens`); beyond that requests wait in the queue, and
beyond `queue_segments` they are refused. A segment's answer does not depend on what it shared
the search with (fp32 and bf16 search is row by row), so it is the one `nmt-translate` gives;
sampling, blocked n-grams and `--no-batching` search a request alone, on an idle worker.

On a CPU the workers are processes forked from the server once the model is loaded (one per
core, one thread each, as `nmt-translate --workers`): a search step spends much of its time in
Python and in operations too small to split between cores, and a search thread in the server
would contend with the HTTP work for the interpreter. With one worker (or on CUDA) the search
runs in a thread of the server.

A reload loads the new checkpoint beside the old one (with workers of its own) and swaps it in
under a lock: a request is pinned to the model it was queued with, so requests in flight finish on
the old model, whose workers stop when its last request is answered.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import queue
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from nmt.model.seq2seq import count_parameters
from nmt.model_directory import WEIGHTS
from nmt.model_sources import resolve_model
from nmt.options import InferenceOptions, SearchOptions
from nmt.search import can_join
from nmt.service.worker import Answer, Outcome, Request, SearchWorker
from nmt.translation import Translator
from nmt.workers import can_fork, resolve_workers

log = logging.getLogger(__name__)

LINE_BREAKS = re.compile(r"\r\n|[\r\n\u2028\u2029\x85]")


def setting(default: Any, help: str) -> Any:
    """A field with the help text of its nmt-serve flag."""
    return field(default=default, metadata={"help": help})


class QueueFull(RuntimeError):
    """More segments are waiting than the service holds: the client should retry later."""


class Expired(RuntimeError):
    """A request's deadline passed before it was searched."""


class WorkerLost(RuntimeError):
    """A search worker died (killed from outside) with the request; it may be retried."""


@dataclass(frozen=True)
class EngineSettings:
    queue_segments: int = setting(1024, "segments waiting at most; beyond, requests are refused with 503")
    batching: bool = setting(True, "let requests join the searches under way (off: each searched alone)")
    workers: int = setting(
        0, "processes searching side by side, one thread each (0: one per core on Linux; 1: in this process)"
    )


@dataclass
class LoadedModel:
    """A checkpoint ready to translate, with what `/model` reports of it."""

    path: Path
    translator: Translator  # its options are replaced per request
    sha256: str
    info: dict[str, Any]
    workers: list[SearchWorker] = field(default_factory=list)  # those alive
    jobs: int = 0  # requests queued with this model and not yet answered
    retired: bool = False  # another model serves now: stop the workers after the last request

    @classmethod
    def load(cls, run_or_checkpoint: str | Path, inference: InferenceOptions) -> LoadedModel:
        path = resolve_model(run_or_checkpoint)
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

    @property
    def worker_pids(self) -> set[int]:
        return {worker.pid for worker in self.workers if worker.pid is not None}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path / WEIGHTS if path.is_dir() else path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def clean_segment(text: str) -> str:
    """One segment, one line: line breaks inside it become spaces (nmt-translate would split it)."""
    return LINE_BREAKS.sub(" ", text)


@dataclass
class Job:
    """One request's segments, from the queue to an answer."""

    loaded: LoadedModel
    options: SearchOptions
    segments: list[str]
    deadline: float  # time.monotonic()
    number: int = 0
    future: Future = field(default_factory=Future)

    @property
    def tokens(self) -> int:
        # A rough count before tokenizing: ~1 piece per 4 characters, as a budget's guide only.
        return sum(len(segment) // 4 + 2 for segment in self.segments)


class Engine:
    """Hands queued requests to search workers, which let them join the searches under way."""

    def __init__(self, loaded: LoadedModel, settings: EngineSettings) -> None:
        self.settings = settings
        self._loaded = loaded
        translator = loaded.translator
        self.workers = resolve_workers(settings.workers) if translator.device.type == "cpu" and can_fork() else 1
        self._swap = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._waiting = 0  # segments queued, not yet handed to a worker
        self._count = threading.Lock()
        self._room = threading.Condition()  # guards what the workers hold, and the lists of workers
        self._numbers = itertools.count()
        self._dispatcher: threading.Thread | None = None
        self._retired: list[LoadedModel] = []  # replaced models still answering (under _swap)
        self._stopping = False

    @property
    def loaded(self) -> LoadedModel:
        with self._swap:
            return self._loaded

    @property
    def searches(self) -> int:
        """Searches the serving model's workers have started: fewer than the requests when
        requests joined searches under way."""
        return sum(worker.searches for worker in self.loaded.workers)

    def start(self) -> None:
        self._start_workers(self._loaded)
        self._dispatcher = threading.Thread(target=self._dispatch, name="nmt-dispatch", daemon=True)
        self._dispatcher.start()

    def stop(self) -> None:
        """Search what is queued and in progress, then stop the workers."""
        self._queue.put(None)
        if self._dispatcher is not None:
            self._dispatcher.join()
        with self._swap:
            models = [self._loaded, *self._retired]
        with self._room:
            self._stopping = True
            workers = [worker for model in models for worker in model.workers]
        for worker in workers:
            worker.stop()
        for worker in workers:
            worker.join()

    def submit(self, segments: list[str], options: SearchOptions, timeout_s: float) -> Job:
        """Queue a request -> its Job, whose future gives its outcomes in order. Raises QueueFull."""
        with self._count:
            if self._waiting + len(segments) > self.settings.queue_segments:
                raise QueueFull(f"{self._waiting} segments are waiting; the queue holds {self.settings.queue_segments}")
            self._waiting += len(segments)
        with self._swap:
            loaded = self._loaded
            loaded.jobs += 1
        cleaned = [clean_segment(s) for s in segments]
        job = Job(loaded, options, cleaned, time.monotonic() + timeout_s, next(self._numbers))
        self._queue.put(job)
        return job

    def reload(self, run_or_checkpoint: str | Path | None, inference: InferenceOptions) -> LoadedModel:
        """Load a checkpoint (default: the one serving) and swap it in; on failure the old one
        goes on serving and the error is raised."""
        new = LoadedModel.load(run_or_checkpoint or self.loaded.path, inference)
        self._start_workers(new)
        with self._swap:
            old, self._loaded = self._loaded, new
            old.retired = True
            idle = old.jobs == 0
            if not idle:
                self._retired.append(old)
        if idle:
            self._stop_workers(old)
        log.info("serving %s (sha256 %s)", new.path, new.sha256[:12])
        return new

    # --- workers ------------------------------------------------------------------------------
    def _start_workers(self, loaded: LoadedModel) -> None:
        """Fork the model's workers (sharing its pages) before it serves; one worker searches in
        this process, with every core."""
        for _ in range(self.workers):
            self._start_worker(loaded)

    def _start_worker(self, loaded: LoadedModel) -> None:
        worker = SearchWorker(
            lambda options: loaded.translator_for(options),  # looked up at each use: tests replace it
            self.settings.batching,
            in_process=self.workers == 1,
            on_answer=self._on_answer,
            on_lost=lambda worker: self._on_lost(loaded, worker),
        )
        with self._room:
            loaded.workers.append(worker)
            self._room.notify_all()

    def _stop_workers(self, loaded: LoadedModel) -> None:
        with self._room:
            workers = list(loaded.workers)
        for worker in workers:
            worker.stop()

    def _on_answer(self, worker: SearchWorker, answer: Answer) -> None:
        with self._room:
            job = worker.settle(answer)
            self._room.notify_all()
        if job is None:
            return
        if answer.outcomes is None:
            log.error("a search failed:\n%s", answer.error)
            job.future.set_exception(RuntimeError(answer.error.strip().splitlines()[-1]))
        else:
            job.future.set_result(answer.outcomes)
        self._answered(job)

    def _on_lost(self, loaded: LoadedModel, worker: SearchWorker) -> None:
        """A worker ended: stopped, or killed from outside (for memory, by a signal). Its
        requests answer 503, and a new worker takes its place."""
        with self._room:
            lost = worker.release_all()
            if worker in loaded.workers:
                loaded.workers.remove(worker)
            replace = not (worker.stopping or self._stopping or loaded.retired)
            self._room.notify_all()
        for job in lost:
            job.future.set_exception(WorkerLost("a search worker died; retry the request"))
            self._answered(job)
        if replace:
            log.error("a search worker died; starting a new one")
            self._start_worker(loaded)

    def _answered(self, job: Job) -> None:
        loaded = job.loaded
        with self._swap:
            loaded.jobs -= 1
            idle = loaded.retired and loaded.jobs == 0
            if idle:
                self._retired.remove(loaded)
        if idle:
            self._stop_workers(loaded)

    # --- the dispatcher -------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._count:
                self._waiting -= len(job.segments)
            if not self._wanted(job):
                self._answered(job)
                continue
            with self._room:
                worker = self._room.wait_for(lambda job=job: self._free_worker(job))
                worker.assign(job)
            with contextlib.suppress(OSError):  # it died: its reader fails the job
                worker.send(Request(job.number, job.options, job.segments))

    def _wanted(self, job: Job) -> bool:
        """False for a request cancelled or past its deadline (answered as such)."""
        if job.future.cancelled():
            return False
        if time.monotonic() > job.deadline:
            job.future.set_exception(Expired("the request's deadline passed while it waited"))
            return False
        return job.future.set_running_or_notify_cancel()

    def _free_worker(self, job: Job) -> SearchWorker | None:
        """The least loaded of the job's model's workers with room for it: a request that may
        join a search goes where the segments held stay within a batch's tokens, another one
        only to an idle worker. None: wait."""
        if self.settings.batching and can_join(job.options):
            budget = job.loaded.translator.batch_tokens
            fits = [w for w in job.loaded.workers if w.idle or w.tokens + job.tokens <= budget]
        else:
            fits = [w for w in job.loaded.workers if w.idle]
        return min(fits, key=lambda worker: worker.tokens, default=None)


def translation_dict(outcome: Outcome, nbest: int) -> dict[str, Any]:
    texts, scores = outcome
    result: dict[str, Any] = {"text": texts[0] if texts else "", "score": round(scores[0], 6) if scores else 0.0}
    if nbest > 1:
        result["nbest"] = [{"text": text, "score": round(score, 6)} for text, score in zip(texts, scores)]
    return result
