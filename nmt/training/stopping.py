"""How training ends: its limits (steps, epochs, minutes, patience), a stop signal honoured after
the current step, and the errors that stop it early."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from nmt.checkpoint import Progress
from nmt.config import TrainConfig

log = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped training after a step; last.pt holds that step."""

    def __init__(self, signal_number: int, step: int) -> None:
        super().__init__(f"stopped at step {step} by {signal.Signals(signal_number).name}")
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them


class TrainingDiverged(RuntimeError):
    """Too many updates in a row had a NaN or inf gradient (train.max_nonfinite_steps)."""


def limit_reached(config: TrainConfig, progress: Progress) -> bool:
    """Whether a stopping rule of the config holds (steps, epochs, minutes, patience)."""
    return bool(
        (config.max_steps and progress.step >= config.max_steps)
        or (config.max_epochs and progress.epoch >= config.max_epochs)
        or (config.max_minutes and progress.train_seconds >= config.max_minutes * 60)
        or (config.patience and progress.validations_since_best >= config.patience)
    )


class StopSignals:
    """Inside `catching()`, SIGINT (Ctrl-C) and SIGTERM (schedulers, preemption) set `received`
    for the loop to stop after the current step with last.pt written; a second Ctrl-C stops at
    once."""

    def __init__(self) -> None:
        self.received: int | None = None

    @contextmanager
    def catching(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers belong to the main thread
            return
        previous = {number: signal.signal(number, self._request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _request_stop(self, number: int, frame) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number
        # Logged from a thread: the handler may run inside this thread's own write of a log
        # line (a write to a full pipe is interrupted), and writing there again raises or
        # recurses; the thread waits for the handler's lock instead.
        message = "%s: stopping after this step (Ctrl-C again stops at once)"
        threading.Thread(target=log.warning, args=(message, signal.Signals(number).name), daemon=True).start()
