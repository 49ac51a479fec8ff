"""What training reports: the log's lines, TensorBoard's scalars (rank 0 only), and the mean
loss and target tokens per second since the last report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from nmt.checkpoint import Progress

log = logging.getLogger("nmt.training.trainer")  # the training log's one voice


class ThroughputMeter:
    """Mean training loss per target token and target tokens per second since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.tokens, self.started = 0.0, 0, time.monotonic()

    def add(self, loss_sum: float, tokens: int) -> None:
        self.loss += loss_sum
        self.tokens += tokens

    def read(self) -> tuple[float, float]:
        seconds = max(time.monotonic() - self.started, 1e-9)
        return self.loss / max(self.tokens, 1), self.tokens / seconds


class TrainingReport:
    def __init__(self, run_dir: Path, is_main: bool) -> None:
        self.meter = ThroughputMeter()
        self.writer = SummaryWriter(str(run_dir / "tensorboard")) if is_main else None

    def record(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def training(self, progress: Progress, lr: float, bar: tqdm) -> None:
        """The loss and speed since the last report, to the log, the bar and TensorBoard."""
        loss, tokens_per_s = self.meter.read()
        self.meter.reset()
        step = progress.step
        self.record("train/loss", loss, step)
        self.record("train/lr", lr, step)
        self.record("train/tokens_per_s", tokens_per_s, step)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}")
        log.info(
            "step %d epoch %d: loss %.3f, lr %.2g, %.0f target tokens/s, %.1f min",
            step,
            progress.epoch + 1,
            loss,
            lr,
            tokens_per_s,
            progress.train_seconds / 60,
        )

    def validation(self, result: dict, progress: Progress, improved: bool) -> None:
        step, minutes = progress.step, progress.train_seconds / 60
        for name in ("loss", "ppl", "bleu"):
            self.record(f"valid/{name}", result[name], step)
        self.record("valid/train_minutes", minutes, step)
        self.flush()
        self.meter.reset()  # validation time is not training time
        log.info(
            "validation at step %d (%.1f min): loss %.3f, ppl %.2f, BLEU %.2f%s (%s)",
            step,
            minutes,
            result["loss"],
            result["ppl"],
            result["bleu"],
            " (best)" if improved else "",
            result["signature"],
        )
