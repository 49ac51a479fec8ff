"""Tasks spread over forked CPU processes, each with its own share of the cores.

Beam search on a CPU spends about half its time outside the matrix products: torch's dispatch of
~250 small operations per step and operations too small to split between cores. One process with
two threads speeds the products up but not that overhead, so two processes with one thread each,
each searching its own batches, translate faster (docs/performance.md has the figures). The workers are
forked: they share the parent's model pages without pickling it, and only task numbers and
results travel between the processes. Fork needs a POSIX system (not Windows, and not after CUDA
has started, so the callers use workers on the CPU only).
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch

Task = TypeVar("Task")
Result = TypeVar("Result")

POLL_SECONDS = 1.0  # how often a parent checks that none of its forked processes has died


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
    the longest first), and split the parent's torch threads between them. `function` and `tasks`
    reach the workers through the fork, so neither needs to pickle; results must.
    """
    if not tasks:
        return
    workers = max(1, min(workers, len(tasks)))
    context = multiprocessing.get_context("fork")
    next_task = context.Value("q", 0)  # shared: the index of the next task to take
    done = context.Queue()
    threads_per_worker = max(1, torch.get_num_threads() // workers)

    def take() -> int:
        with next_task.get_lock():
            index = next_task.value
            next_task.value += 1
        return index

    def work() -> None:
        torch.set_num_threads(threads_per_worker)
        while (index := take()) < len(tasks):
            try:
                # Plain pickle: the queue's own pickler would move every tensor into shared
                # memory, one file descriptor each.
                done.put((index, pickle.dumps(function(tasks[index])), None))
            except BaseException:
                done.put((index, None, traceback.format_exc()))
                return

    processes = [context.Process(target=work, daemon=True) for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        for _ in range(len(tasks)):
            index, result, error = _next_result(done, processes)
            if error is not None:
                raise WorkerError(f"a worker failed on task {index}:\n{error}")
            yield index, pickle.loads(result)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
        done.close()


def _next_result(done, processes) -> tuple:
    while True:
        try:
            return done.get(timeout=POLL_SECONDS)
        except queue.Empty:
            dead = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
            if dead:
                # Killed from outside (out of memory, a signal): its task will never report.
                raise WorkerError(
                    f"a worker died with exit code {dead[0]} before finishing its tasks (killed for memory? "
                    "fewer --workers or a smaller --batch-tokens need less)"
                ) from None
