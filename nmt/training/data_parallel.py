"""Data-parallel training on one machine's CPU cores: forked processes, each on a share of every batch.

A training step's matrix products are too small to keep two cores busy from one process, and its
per-operation overhead (dispatch, small elementwise work) is not split between threads at all. On
this project's 2-core machine two threads trained at 1.5x one thread's speed, while two one-thread
training loops side by side, each on half-size batches, made 1.8x between them (docs/performance.md).
So `train.workers` processes, the trainer and forked helpers, each run forward and backward on
their share of the batch. Every shard's loss is divided by the whole batch's target tokens, so the
shards' gradients add up to the whole batch's gradient: the batch, its size and the update are
those of one process, and only the dropout draws differ.

The gradients meet in shared memory, one row per process. Each process sums one slice of every
row into its own row and then copies the other slices from their owners' rows (a reduce-scatter
and an all-gather, as NCCL's all-reduce does, with ~1/N of the traffic each). Then every process
clips and applies the same summed gradient to its own copy of the weights with the same
arithmetic, so the copies stay identical without weights ever being sent. The helpers are forked
once the model and the optimizer are ready, so they start from the same weights (also after a
resume) and share the corpus' pages.

Fork needs a POSIX system, and not CUDA (the trainer uses helpers on the CPU only).
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import multiprocessing
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nmt.workers import POLL_SECONDS, WorkerError

log = logging.getLogger(__name__)


@dataclass
class Work:
    """One helper's part of a training step."""

    shard: list[int]  # indices of the training pairs this process trains on
    batch_tokens: int  # the whole batch's target tokens: every shard's loss is divided by it
    lr: float
    step: int  # updates done before this one


def split_batch(indices: Sequence[int], costs: Sequence[int], parts: int) -> list[list[int]]:
    """`indices` dealt into `parts` shares of nearly equal cost (costliest first, each to the
    cheapest share so far). Within a share the batch's order is kept."""
    shares: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for index in sorted(indices, key=lambda i: -costs[i]):
        lightest = loads.index(min(loads))
        shares[lightest].append(index)
        loads[lightest] += costs[index]
    position = {index: n for n, index in enumerate(indices)}
    return [sorted(share, key=position.__getitem__) for share in shares]


class GradientExchange:
    """Shared memory where the processes' gradients are summed: one row per process."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], processes: int, context) -> None:
        self.parameters = [parameter for parameter in parameters if parameter.requires_grad]
        numel = sum(parameter.numel() for parameter in self.parameters)
        self.processes = processes
        self.gradients = torch.zeros(processes, numel).share_memory_()  # (processes, numel)
        self.loss_sums = torch.zeros(processes, dtype=torch.float64).share_memory_()
        self.barrier = context.Barrier(processes)
        bounds = [numel * part // processes for part in range(processes + 1)]
        self.slices = [slice(start, end) for start, end in itertools.pairwise(bounds)]

    def attach(self, rank: int) -> None:
        """Point every parameter's .grad at its place in this process' row, so backward
        accumulates straight into shared memory."""
        row, offset = self.gradients[rank], 0
        for parameter in self.parameters:
            parameter.grad = row[offset : offset + parameter.numel()].view_as(parameter)
            offset += parameter.numel()

    def zero(self, rank: int) -> None:
        self.gradients[rank].zero_()

    def all_sum(self, rank: int, loss_sum: float) -> float:
        """Sum every process' gradient into each one's row; returns the summed loss. Every
        process calls it once per step; it returns when all of them have."""
        self.loss_sums[rank] = loss_sum
        self.barrier.wait()  # every shard's gradient is in
        mine = self.slices[rank]
        own = self.gradients[rank, mine]
        for other in range(self.processes):
            if other != rank:
                own.add_(self.gradients[other, mine])
        self.barrier.wait()  # every slice is summed by its owner
        for other in range(self.processes):
            if other != rank:
                theirs = self.slices[other]
                self.gradients[rank, theirs].copy_(self.gradients[other, theirs])
        total = float(self.loss_sums.sum())
        self.barrier.wait()  # nobody reads this row any more, so the next step may zero it
        return total


class Helpers:
    """The forked helper processes of data-parallel training, seen from the trainer (rank 0)."""

    def __init__(
        self, exchange: GradientExchange, helper_loop: Callable[[int, multiprocessing.Queue], None], context
    ) -> None:
        self.exchange = exchange
        self.errors = context.Queue()
        self.inboxes = [context.Queue() for _ in range(exchange.processes - 1)]
        self.processes = [
            context.Process(target=_run_helper, args=(helper_loop, rank, inbox, self.errors, exchange), daemon=True)
            for rank, inbox in enumerate(self.inboxes, start=1)
        ]
        for process in self.processes:
            process.start()
        self._closed = threading.Event()
        # A helper killed from outside (for memory, by a signal) never reaches the barrier: break
        # it, so the trainer stops with a message instead of waiting forever.
        self._watchdog = threading.Thread(target=self._watch, daemon=True)
        self._watchdog.start()

    def dispatch(self, works: Sequence[Work]) -> None:
        for inbox, work in zip(self.inboxes, works, strict=True):
            inbox.put(work)

    def all_sum(self, loss_sum: float) -> float:
        try:
            return self.exchange.all_sum(0, loss_sum)
        except threading.BrokenBarrierError:
            raise self._failure() from None

    def close(self) -> None:
        """Stop the helpers: after their last step, or at once when the trainer stopped in the
        middle of one (an error, Ctrl-C) and they wait for it at the barrier."""
        self._closed.set()
        for inbox, process in zip(self.inboxes, self.processes):
            if process.is_alive():
                inbox.put(None)
        self.exchange.barrier.abort()  # a helper that finished its step waits on its inbox, not here
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()

    def _watch(self) -> None:
        while not self._closed.wait(POLL_SECONDS):
            if any(process.exitcode not in (None, 0) for process in self.processes):
                self.exchange.barrier.abort()
                return

    def _failure(self) -> WorkerError:
        deadline = time.monotonic() + 10  # a failing helper reports before it exits
        while time.monotonic() < deadline:
            try:
                return WorkerError(f"a training worker failed:\n{self.errors.get(timeout=0.2)}")
            except queue.Empty:
                killed = [process.exitcode for process in self.processes if (process.exitcode or 0) < 0]
                if killed:
                    break
        codes = [process.exitcode for process in self.processes if process.exitcode not in (None, 0)]
        return WorkerError(
            f"a training worker died with exit code {codes[0] if codes else '?'} (killed for memory? fewer "
            "train.workers or a smaller train.batch_tokens need less)"
        )


def _run_helper(helper_loop, rank: int, inbox, errors, exchange: GradientExchange) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it stops us
    try:
        helper_loop(rank, inbox)
    except BaseException:
        errors.put(traceback.format_exc())
        exchange.barrier.abort()
        sys.exit(1)


def _die_with_parent() -> None:
    """Linux: a helper gets SIGKILL when the trainer dies, however it dies."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            log.debug("prctl unavailable: helpers may outlive a killed trainer")
