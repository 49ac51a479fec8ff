"""A search worker of the service: running searches that requests join as they arrive.

A worker lives in a process forked from the server once the model is loaded (it shares the
model's pages and runs one torch thread: `nmt.workers`) or, when there is one worker, in a thread
of the server. Between two search steps it reads the requests that have come down its pipe; those
whose options allow it join the search under way for their options (`RunningTranslation`:
continuous batching, so a request waits for no batch to fill or finish), the others are searched
alone. Every request's outcomes go back up the other pipe as soon as its last segment is done.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass
from multiprocessing.connection import Connection
from typing import Protocol

import torch

from nmt.options import SearchOptions
from nmt.search import can_join
from nmt.translation import RunningTranslation, Translation, Translator

log = logging.getLogger(__name__)

# One segment's answer: its texts and scores, best first (empty for an empty segment).
Outcome = tuple[list[str], list[float]]
PARENT_CHECK_S = 1.0  # how often an idle worker looks whether the server is still there
REAP_S = 5.0  # how long the server waits for a worker that closed its pipe to exit
JOIN_GROUP = 4  # sentences that join a search under way together ...
JOIN_WAIT_STEPS = 8  # ... unless the first has waited this many steps (_Loop._join_now)
TranslatorFor = Callable[[SearchOptions], Translator]


class Held(Protocol):
    """A request as a worker holds it: its number and its rough size in tokens."""

    number: int

    @property
    def tokens(self) -> int: ...


@dataclass(frozen=True)
class Request:
    number: int
    options: SearchOptions
    segments: list[str]


@dataclass(frozen=True)
class Answer:
    number: int
    outcomes: list[Outcome] | None  # None when the search failed
    error: str = ""  # the failure's traceback
    searches: int = 0  # searches the worker has started so far (for the logs and tests)


def outcomes(translations: list[Translation]) -> list[Outcome]:
    return [(t.texts, [h.score for h in t.hypotheses]) for t in translations]


class _Loop:
    """The worker's side: `run` until told to stop (None) or the server is gone."""

    def __init__(
        self, translator_for: TranslatorFor, requests: Connection, answers: Connection, batching: bool, parent: int
    ) -> None:
        self.translator_for, self.requests, self.answers, self.batching = translator_for, requests, answers, batching
        self.parent = parent  # the server's pid, in a worker process; 0 in a thread of the server
        self.running: dict[tuple, RunningTranslation] = {}  # by options, while busy
        self.waiting: list[tuple[Request, int]] = []  # to join, with the step they arrived at
        self.steps = 0
        self.searches = 0
        self.stopping = False

    def run(self) -> None:
        try:
            while not (self.stopping and not self.running and not self.waiting):
                for request in self._arrived():
                    self._take(request)
                if self.waiting and self._join_now():
                    self._join()
                for key in list(self.running):
                    self._guarded(key, lambda search: search.step())
                self.steps += 1
        except (EOFError, BrokenPipeError):  # the server has gone
            pass
        finally:
            self.answers.close()

    def _arrived(self) -> list[Request]:
        """The requests that have come; with nothing to do, waits for one."""
        while not (self.running or self.waiting or self.stopping or self.requests.poll(PARENT_CHECK_S)):
            self._check_parent()
        self._check_parent()
        arrived = []
        while self.requests.poll():
            arrived.append(self.requests.recv())
        self.stopping |= None in arrived
        return [request for request in arrived if request is not None]

    def _take(self, request: Request) -> None:
        """Queue the request to join its options' search, or search it alone, at once."""
        if self.batching and can_join(request.options):
            self.waiting.append((request, self.steps))
            return
        self.searches += 1
        try:
            answer = outcomes(self.translator_for(request.options).translate_lines(request.segments))
        except Exception:
            self._fail([request.number])
            return
        self._send(Answer(request.number, answer, "", self.searches))

    def _join_now(self) -> bool:
        """Encoding costs about as much for one sentence as for four (torch's recurrent kernel
        has a large cost per call), so while a search is under way new sentences join in groups:
        once JOIN_GROUP are waiting, or the first has waited JOIN_WAIT_STEPS steps."""
        if not self.running:
            return True
        segments = sum(len(request.segments) for request, _ in self.waiting)
        return segments >= JOIN_GROUP or self.steps - self.waiting[0][1] >= JOIN_WAIT_STEPS

    def _join(self) -> None:
        groups: dict[tuple, list[Request]] = {}
        for request, _ in self.waiting:
            groups.setdefault(astuple(request.options), []).append(request)
        self.waiting = []
        for key, requests in groups.items():
            if key not in self.running:
                try:
                    self.running[key] = self.translator_for(requests[0].options).running()
                except Exception:
                    self._fail([request.number for request in requests])
                    continue
                self.searches += 1
            joining = {request.number: request.segments for request in requests}
            self._guarded(key, lambda search, joining=joining: search.add(joining), list(joining))

    def _guarded(self, key: tuple, work: Callable[[RunningTranslation], list], joining: Sequence[int] = ()) -> None:
        """Run `work` on the search of `key`, send what it finished; a failure (a bug) fails every
        request of that search, and those joining it, and ends the search."""
        search = self.running[key]
        try:
            done = work(search)
        except Exception:
            self._fail(dict.fromkeys([*search.pending, *joining]))
            del self.running[key]
            return
        for number, translations in done:
            self._send(Answer(number, outcomes(translations), "", self.searches))
        if not search.busy:
            del self.running[key]

    def _send(self, answer: Answer) -> None:
        self.answers.send(answer)

    def _fail(self, numbers: Iterable[int]) -> None:
        """Answer these requests with the exception being handled (a bug): 500, model kept."""
        log.exception("search failed")
        error = traceback.format_exc()
        for number in numbers:
            self._send(Answer(number, None, error, self.searches))

    def _check_parent(self) -> None:
        # A server killed from outside closes no pipe that the worker would notice (its siblings
        # hold copies of the server's ends), so the worker looks whether its parent is still there.
        if self.parent and os.getppid() != self.parent:
            raise EOFError("the server has gone")


def search_loop(
    translator_for: TranslatorFor, requests: Connection, answers: Connection, batching: bool, parent: int = 0
) -> None:
    """Serve requests from `requests` until a None, answering on `answers`; in a worker process,
    `parent` is the server's pid: the loop ends when the server has gone."""
    _Loop(translator_for, requests, answers, batching, parent).run()


def _worker_process(
    translator_for: TranslatorFor, requests: Connection, answers: Connection, batching: bool, parent: int
) -> None:
    torch.set_num_threads(1)  # more would hang after the fork: nmt.workers
    search_loop(translator_for, requests, answers, batching, parent)


class SearchWorker:
    """The server's end of one worker: its pipes, the requests it holds, and a thread that reads
    its answers and hands them to `on_answer`; `on_lost` when it ends (stopped, or killed)."""

    def __init__(
        self,
        translator_for: TranslatorFor,
        batching: bool,
        in_process: bool,
        on_answer: Callable[[SearchWorker, Answer], None],
        on_lost: Callable[[SearchWorker], None],
    ) -> None:
        request_end, self._requests = multiprocessing.Pipe(duplex=False)
        self._answers, answer_end = multiprocessing.Pipe(duplex=False)
        self.jobs: dict[int, Held] = {}  # requests sent and not answered, by number
        self.tokens = 0  # their rough size
        self.searches = 0  # searches started, as its last answer counted them
        self.stopping = False
        args = (translator_for, request_end, answer_end, batching)
        if in_process:
            self.process = None
            threading.Thread(target=search_loop, args=args, name="nmt-search", daemon=True).start()
        else:
            self.process = multiprocessing.get_context("fork").Process(
                target=_worker_process, args=(*args, os.getpid()), name="nmt-search", daemon=True
            )
            self.process.start()
            request_end.close()  # the worker's ends: this process keeps its own
            answer_end.close()
        self._on_answer, self._on_lost = on_answer, on_lost
        self._reader = threading.Thread(target=self._read, name="nmt-answers", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    # What it holds. The engine calls these under the lock its choice of a worker waits on.
    @property
    def idle(self) -> bool:
        return not self.jobs

    def assign(self, job: Held) -> None:
        """The request is this worker's until its answer (or the worker's end) settles it."""
        self.jobs[job.number] = job
        self.tokens += job.tokens

    def settle(self, answer: Answer) -> Held | None:
        """The request this answer is for (None if it was given up), no longer held."""
        self.searches = answer.searches
        job = self.jobs.pop(answer.number, None)
        if job is not None:
            self.tokens -= job.tokens
        return job

    def release_all(self) -> list[Held]:
        """Every request it holds (it has died), no longer held."""
        lost, self.jobs, self.tokens = list(self.jobs.values()), {}, 0
        return lost

    def send(self, request: Request) -> None:
        """Raises OSError when the worker has died (its reader reports it)."""
        self._requests.send(request)

    def stop(self) -> None:
        """Finish the requests it holds, then end."""
        self.stopping = True
        with contextlib.suppress(OSError):  # already gone
            self._requests.send(None)

    def join(self, timeout: float | None = None) -> None:
        self._reader.join(timeout)
        if self.process is not None:
            self.process.join(timeout)

    def _read(self) -> None:
        while True:
            try:
                answer = self._answers.recv()
            except (EOFError, OSError):
                break
            self._on_answer(self, answer)
        if self.process is not None:
            self.process.join(REAP_S)  # it has closed its pipe: it is ending, or dead
        self._on_lost(self)
