"""Tasks spread over forked CPU processes, each with its own share of the cores.

Beam search on a CPU spends about half its time outside the matrix products: torch's dispatch of
~250 small operations per step and operations too small to split between cores. One process with
two threads speeds the products up but not that overhead, so two processes with one thread each,
each searching its own batches, translate faster (docs/performance.md has the figures). The pool
is the standard library's `ProcessPoolExecutor` with the fork start method: the workers share the
parent's model pages without pickling it, and only task numbers and results travel between the
processes. Fork needs a POSIX system (not Windows, and not after CUDA has started, so the callers
use workers on the CPU only).
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import torch

Task = TypeVar("Task")
Result = TypeVar("Result")


def can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def resolve_workers(workers: int) -> int:
    """A worker count as configured: 0 means `default_workers()`."""
    return workers or default_workers()


def default_workers() -> int:
    """One worker per core torch would use on Linux; else 1. (macOS can fork, but its system
    libraries are not all safe to use after a fork, so there workers are asked for explicitly.)"""
    return torch.get_num_threads() if sys.platform.startswith("linux") and can_fork() else 1


class WorkerError(RuntimeError):
    """A worker failed; the message carries the worker's traceback or exit code."""


def map_in_workers(
    function: Callable[[Task], Result], tasks: Sequence[Task], workers: int
) -> Iterator[tuple[int, Result]]:
    """(index, function(task)) for every task, in the order they finish.

    `workers` forked processes take the next task as they become free, in the order given (put
    the longest first), one torch thread each: a forked child that uses more than one OpenMP
    thread after its parent has used them hangs (GNU OpenMP is not fork-safe), so workers are
    one thread each and as many as the cores (the default). `function` and `tasks` reach the
    workers through the fork, so neither needs to pickle; results must.
    """
    if not tasks:
        return
    workers = max(1, min(workers, len(tasks)))
    # Under fork, an initializer's arguments are inherited, not pickled.
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(function, tasks),
    )
    try:
        futures = {pool.submit(_run_task, index): index for index in range(len(tasks))}
        for future in as_completed(futures):
            result, error = _outcome(future)
            if error is not None:
                raise WorkerError(f"a worker failed on task {futures[future]}:\n{error}")
            yield futures[future], pickle.loads(result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _outcome(future) -> tuple[bytes | None, str | None]:
    try:
        return future.result()
    except BrokenProcessPool:
        # Killed from outside (out of memory, a signal): its task will never report.
        raise WorkerError(
            "a worker died before finishing its tasks (killed by a signal, or for memory? fewer "
            "--workers or a smaller --batch-tokens need less)"
        ) from None


# The forked worker's function and tasks: set once in each worker process by `_start_worker`.
_worker_job: tuple[Callable[[Any], Any], Sequence[Any]] | None = None


def _start_worker(function: Callable[[Any], Any], tasks: Sequence[Any]) -> None:
    global _worker_job
    _worker_job = (function, tasks)
    torch.set_num_threads(1)  # more would hang: see map_in_workers


def _run_task(index: int) -> tuple[bytes | None, str | None]:
    """(pickled result, None) or (None, the traceback). Plain pickle: the pool's own pickler would
    move every tensor of a result into shared memory, one file descriptor each."""
    assert _worker_job is not None, "_start_worker runs first in every worker"
    function, tasks = _worker_job
    try:
        return pickle.dumps(function(tasks[index])), None
    except Exception:
        return None, traceback.format_exc()
