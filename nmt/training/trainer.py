"""The Trainer: the training loop over a prepared corpus, its checkpoints and its stopping rules.

The Trainer takes a validated `Config` (the Hydra edge is `nmt.cli.train`, the setting up
`nmt.training.run`) and writes the run directory's `checkpoints/{last,best}.pt` and
`tensorboard/`. Under torchrun (or `train.processes`) every rank runs a Trainer on its share of
every batch (nmt/training/distributed.py); rank 0 writes, and validation is shared between the
ranks (nmt/training/validation.py).
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from nmt.checkpoint import BEST, LAST, save_checkpoint, step_checkpoint_name, step_checkpoints
from nmt.config import LONG_EPOCH_STEPS, Config, TrainConfig
from nmt.data.arrays import TokenPairs
from nmt.data.batching import EpochBatches, collate, make_batcher
from nmt.data.mixing import epoch_pairs
from nmt.data.store import Store
from nmt.model.device import resolve_precision
from nmt.model.seq2seq import Seq2Seq, build_model, count_parameters
from nmt.training.averaging import WeightAverage
from nmt.training.distributed import Ranks, all_sum, split_batch
from nmt.training.loss import TeacherForcedLoss
from nmt.training.schedule import annealed_lr, budget_used
from nmt.training.validation import Validator

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint so a resumed run picks up exactly here."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already trained on
    best_bleu: float = -1.0
    validations_since_best: int = 0  # for early stopping (train.patience)
    train_seconds: float = 0.0  # wall time spent training, summed over resumes
    tgt_tokens: int = 0
    nonfinite_in_a_row: int = 0  # updates skipped for a NaN or inf gradient, since the last good one
    nonfinite_total: int = 0


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


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped training after a step; last.pt holds that step."""

    def __init__(self, signal_number: int, step: int) -> None:
        super().__init__(f"stopped at step {step} by {signal.Signals(signal_number).name}")
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them


class TrainingDiverged(RuntimeError):
    """Too many updates in a row had a NaN or inf gradient (train.max_nonfinite_steps)."""


class Trainer:
    def __init__(
        self,
        config: Config,
        run_dir: Path,
        store: Store,
        device: torch.device,
        ranks: Ranks | None = None,
    ) -> None:
        self.config = config
        self.train_config: TrainConfig = config.train
        self.precision = resolve_precision(config.train.precision, device)
        self.run_dir = run_dir
        self.checkpoint_dir = run_dir / "checkpoints"
        self.store = store
        self.tokenizer = tokenizer = store.tokenizer
        self.device = device
        self.ranks = ranks = ranks or Ranks()
        torch.manual_seed(self.train_config.seed)
        self.model: Seq2Seq = build_model(config.model, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        self.model.to(device)
        self.loss = TeacherForcedLoss(self.model, self.precision, device)
        self.objective = self._training_objective()
        self._build_optimizer()
        self._train_texts: tuple[list[str], list[str]] | None = None  # read for subword sampling only
        self._use_train_pairs(store.train)
        self.validator = Validator(self.loss, tokenizer, store.validation, self.train_config, ranks)
        self.validated_step = -1
        self.progress = Progress()
        self.stop_signal: int | None = None  # SIGINT or SIGTERM received: stop after this step
        self.meter = ThroughputMeter()
        self.writer = SummaryWriter(str(run_dir / "tensorboard")) if ranks.is_main else None
        log.info(
            "model: %s parameters; precision %s; %d training process%s of %d thread%s",
            f"{count_parameters(self.model):,}",
            self.precision,
            ranks.world_size,
            "es" if ranks.distributed else "",
            torch.get_num_threads(),
            "s" if torch.get_num_threads() > 1 else "",
        )

    def _training_objective(self) -> torch.nn.Module:
        """The module a training step runs: with several ranks, DDP sums the shares' gradients
        bucket by bucket while the backward pass goes on (and starts every rank from rank 0's
        weights)."""
        if not self.ranks.distributed:
            return self.loss
        return torch.nn.parallel.DistributedDataParallel(
            self.loss,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            gradient_as_bucket_view=True,
        )

    def _build_optimizer(self) -> None:
        """Adam, the weight average (train.average_decay) and the plateau scheduler."""
        # torch's fused Adam makes one pass over each weight where the default makes a dozen
        # elementwise ones: 57 -> 17 ms per update of the reference model on one thread.
        fused = self.device.type in ("cpu", "cuda")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.train_config.lr, fused=fused)
        decay = self.train_config.average_decay
        self.average = WeightAverage(self.model, decay) if decay else None
        # lr_decay_factor 1.0 means a constant rate (torch's plateau scheduler refuses factor 1).
        self.scheduler = None
        if self.train_config.lr_decay_factor < 1.0:
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="min",
                factor=self.train_config.lr_decay_factor,
                patience=self.train_config.lr_patience,
                min_lr=self.train_config.min_lr,
            )

    def _use_train_pairs(self, pairs: TokenPairs) -> None:
        """Train on `pairs` (the store's, or an epoch's sampled segmentations of them): arrays of
        lengths and costs, one number per pair."""
        self.train_pairs = pairs
        self.src_lengths, self.tgt_lengths = pairs.src.lengths(), pairs.tgt.lengths()
        cfg = self.train_config
        self.batcher = make_batcher(cfg.batching, self.src_lengths, self.tgt_lengths, cfg.batch_tokens, cfg.seed)

    def epoch_batches(self, epoch: int) -> EpochBatches:
        """This epoch's batches, of the pairs its corpora's weights draw; with subword sampling,
        of the pairs segmented anew. Both come from `(seed, epoch)` alone, so that a resumed run
        and every rank see the same ones."""
        options = self.config.data.tokenizer
        if options.sampling_alpha:
            if self._train_texts is None:
                self._train_texts = (self.store.train_texts[0].load().texts(), self.store.train_texts[1].load().texts())
            seed = f"{self.train_config.seed}-{epoch}-segmentation"
            sampled = self.tokenizer.sample_pairs(
                *self._train_texts, options.sampling_alpha, options.sampling_nbest, seed
            )
            self._use_train_pairs(TokenPairs.from_rows(*sampled))
        corpora = self.config.data.corpora
        spans = [(start, stop) for _, start, stop in self.store.corpora]
        weights = [corpora[name].weight if name in corpora else 1.0 for name, _, _ in self.store.corpora]
        return self.batcher.epoch_batches(epoch, epoch_pairs(spans, weights, self.train_config.seed, epoch))

    def _validate_every(self, batches_per_epoch: int) -> int:
        """Steps between validations; 0: at the end of every epoch (train.validate_every)."""
        if self.train_config.validate_every:
            return self.train_config.validate_every
        return LONG_EPOCH_STEPS if batches_per_epoch > LONG_EPOCH_STEPS else 0

    def _record(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    # --- checkpoints -------------------------------------------------------------------------
    def _payload(self, full: bool) -> dict:
        # "model" is what translation uses: the averaged weights when averaging is on.
        payload = {
            "config": self.config.to_dict(),
            "tokenizer": self.tokenizer.state(),
            "model": self.model.state_dict() if self.average is None else self.average.state_dict(self.model),
            "progress": asdict(self.progress),
        }
        if full:
            if self.average is not None:
                payload["trained_model"] = self.model.state_dict()  # where the optimizer goes on from
            payload["optimizer"] = self.optimizer.state_dict()
            payload["scheduler"] = None if self.scheduler is None else self.scheduler.state_dict()
            payload["rng"] = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                payload["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return payload

    def save(self, best: bool = False, validated: bool = False) -> None:
        """Rank 0 writes; the other ranks hold the same weights and state. At a validation with
        `train.keep_checkpoints` K, the weights are also kept as step_NNNNNNN.pt, the last K of
        them (what `nmt-average RUN --last K` averages)."""
        if not self.ranks.is_main:
            return
        save_checkpoint(self._payload(full=True), self.checkpoint_dir / LAST)
        if best:
            save_checkpoint(self._payload(full=False), self.checkpoint_dir / BEST)
        keep = self.train_config.keep_checkpoints
        if validated and keep:
            save_checkpoint(self._payload(full=False), self.checkpoint_dir / step_checkpoint_name(self.progress.step))
            for old in step_checkpoints(self.checkpoint_dir)[:-keep]:
                old.unlink(missing_ok=True)

    def restore(self, payload: dict) -> None:
        """Continue from a `last.pt` payload: weights, optimizer, scheduler, RNG, data position."""
        self.model.load_state_dict(payload.get("trained_model", payload["model"]))
        if self.average is not None:
            # A run that was not averaging starts its average from the weights it resumes with.
            self.average.load(payload["model"], updates=payload["progress"]["step"])
        # The saved groups carry the saving run's `fused` flag: this run's decides (and where the
        # step counters live).
        saved = payload["optimizer"]
        groups = [{**group, "fused": self.optimizer.defaults["fused"]} for group in saved["param_groups"]]
        self.optimizer.load_state_dict({**saved, "param_groups": groups})
        if self.scheduler is not None and payload.get("scheduler") is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
        self.progress = Progress(**payload["progress"])
        log.info(
            "resumed at step %d (epoch %d, batch %d), best BLEU %.2f",
            self.progress.step,
            self.progress.epoch,
            self.progress.batch_in_epoch,
            self.progress.best_bleu,
        )

    # --- the loop ----------------------------------------------------------------------------
    def limit_reached(self) -> bool:
        """Whether a stopping rule of the config holds (steps, epochs, minutes, patience)."""
        cfg, progress = self.train_config, self.progress
        return bool(
            (cfg.max_steps and progress.step >= cfg.max_steps)
            or (cfg.max_epochs and progress.epoch >= cfg.max_epochs)
            or (cfg.max_minutes and progress.train_seconds >= cfg.max_minutes * 60)
            or (cfg.patience and progress.validations_since_best >= cfg.patience)
        )

    def train(self) -> Progress:
        """Train until a limit is reached; the final weights are validated and saved."""
        progress = self.progress
        self._started, self._seconds_before = time.monotonic(), progress.train_seconds
        with self._stop_on_signals():
            while not self.limit_reached():
                batches = self.epoch_batches(progress.epoch)
                validate_every = self._validate_every(len(batches))
                self._run_epoch(batches, validate_every)
                if progress.batch_in_epoch < len(batches):
                    break  # a limit was reached inside the epoch
                progress.epoch += 1
                progress.batch_in_epoch = 0
                if not validate_every:
                    self._validate_and_save()
        if self.validated_step != progress.step:
            self._validate_and_save()
        log.info(
            "done: %d steps, %d epochs, %.1f min, best validation BLEU %.2f",
            progress.step,
            progress.epoch,
            progress.train_seconds / 60,
            progress.best_bleu,
        )
        if self.writer is not None:
            self.writer.close()
        return progress

    def _run_epoch(self, batches: EpochBatches, validate_every: int) -> None:
        """The rest of this epoch's batches (all of them, unless resumed mid-epoch)."""
        cfg, progress = self.train_config, self.progress
        with tqdm(
            total=len(batches),
            initial=progress.batch_in_epoch,
            desc=f"epoch {progress.epoch + 1}",
            disable=None if self.ranks.is_main else True,
            dynamic_ncols=True,
            leave=False,
        ) as bar:
            for indices in batches[progress.batch_in_epoch :]:
                if cfg.lr_anneal:
                    self._set_lr(progress.epoch + progress.batch_in_epoch / len(batches))
                loss_sum, tokens = self.train_step(indices)
                seconds = self._seconds_before + time.monotonic() - self._started
                stop = float(self.stop_signal or 0)
                if self.ranks.distributed:
                    # Every rank takes rank 0's clock, so that a time limit stops all at one step,
                    # and any rank's stop signal, so that a stop does too.
                    main_seconds = seconds if self.ranks.is_main else 0.0
                    loss_sum, seconds, stop = all_sum([loss_sum, main_seconds, stop], self.ranks)
                progress.step += 1
                progress.batch_in_epoch += 1
                progress.tgt_tokens += tokens
                progress.train_seconds = seconds
                self.meter.add(loss_sum, tokens)
                bar.update(1)
                if progress.step % cfg.log_every == 0:
                    self._log_train(bar)
                if self.limit_reached():
                    return
                if validate_every and progress.step % validate_every == 0:
                    self._validate_and_save()
                elif cfg.save_every and progress.step % cfg.save_every == 0:
                    self.save()
                if stop:
                    self._stop(self.stop_signal or signal.SIGTERM)

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """Inside the block, SIGINT (Ctrl-C) and SIGTERM (schedulers, preemption) stop training
        after the current step with last.pt written; a second Ctrl-C stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers belong to the main thread
            return

        def request_stop(number: int, frame) -> None:
            if self.stop_signal is not None and number == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = number
            # Logged from a thread: the handler may run inside this thread's own write of a log
            # line (a write to a full pipe is interrupted), and writing there again raises or
            # recurses; the thread waits for the handler's lock instead.
            message = "%s: stopping after this step (Ctrl-C again stops at once)"
            threading.Thread(target=log.warning, args=(message, signal.Signals(number).name), daemon=True).start()

        previous = {number: signal.signal(number, request_stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _stop(self, signal_number: int) -> None:
        self.save()
        if self.writer is not None:
            self.writer.flush()
        step = self.progress.step
        if self.ranks.is_main:
            log.warning(
                "stopped at step %d by %s; resume with `nmt-train train.resume=%s`",
                step,
                signal.Signals(signal_number).name,
                self.run_dir,
            )
        raise TrainingStopped(signal_number, step)

    def _set_lr(self, epoch_progress: float) -> None:
        """The annealed rate of the coming update, from the budget spent so far (so a resumed run
        continues the same fall)."""
        cfg, progress = self.train_config, self.progress
        used = budget_used(
            progress.step, progress.train_seconds, epoch_progress, cfg.max_steps, cfg.max_minutes, cfg.max_epochs
        )
        for group in self.optimizer.param_groups:
            group["lr"] = annealed_lr(cfg.lr, cfg.min_lr, cfg.lr_anneal, used)

    def train_step(self, indices: np.ndarray) -> tuple[float, int]:
        """One update on the training pairs `indices` -> (this rank's loss sum, the batch's
        target tokens)."""
        tokens = int(self.tgt_lengths[indices].sum()) + len(indices)  # target tokens, eos included
        loss_sum = self.backward(indices, tokens)
        self._update(indices)
        if self.average is not None:
            self.average.update(self.model)
        return loss_sum, tokens

    def backward(self, indices: np.ndarray, batch_tokens: int) -> float:
        """This rank's share of the batch `indices` forward and backward, its loss divided by the
        whole batch's target tokens; the ranks' gradients are summed, so every rank holds the
        whole batch's gradient. -> this rank's loss sum."""
        self.model.train()
        ranks = self.ranks
        if ranks.distributed:
            costs = self.src_lengths[indices].astype(np.int64) + self.tgt_lengths[indices]
            indices = split_batch(indices.tolist(), dict(zip(indices.tolist(), costs.tolist())), ranks.world_size)[
                ranks.rank
            ]
            if not ranks.is_main:
                # Dropout draws of its own (rank 0's seed would repeat rank 0's masks), a function
                # of the step so that a resumed run draws what the whole run would have.
                torch.manual_seed(self.train_config.seed + 7919 * ranks.rank + 104729 * self.progress.step)
        self.optimizer.zero_grad(set_to_none=True)
        batch = None
        if len(indices):
            pairs = self.train_pairs
            batch = collate([pairs.src[i] for i in indices], [pairs.tgt[i] for i in indices])
            batch = batch.to(self.device)
        loss_sum, _ = self.objective(batch, self.train_config.label_smoothing)
        # DDP averages the ranks' gradients: scaled by the world size, the average is the sum.
        (loss_sum * (ranks.world_size / batch_tokens)).backward()
        return loss_sum.item()

    def _update(self, indices: np.ndarray) -> None:
        """Clip and step, unless the gradient holds a NaN or inf (a bad batch, an overflow): then
        the update is skipped and counted, and too many in a row stop training. Every rank sees
        the same summed gradient, so every rank decides alike."""
        cfg, progress = self.train_config, self.progress
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm or math.inf)
        if torch.isfinite(norm):
            self.optimizer.step()
            progress.nonfinite_in_a_row = 0
            return
        self.optimizer.zero_grad(set_to_none=True)
        progress.nonfinite_in_a_row += 1
        progress.nonfinite_total += 1
        log.warning(
            "step %d: the gradient holds NaN or inf; update skipped (%d in a row, %d in all); the batch: "
            "%d training pairs, the first %s",
            progress.step + 1,
            progress.nonfinite_in_a_row,
            progress.nonfinite_total,
            len(indices),
            np.asarray(indices[:5]).tolist(),
        )
        if progress.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
            raise TrainingDiverged(
                f"{progress.nonfinite_in_a_row} updates in a row had a NaN or inf gradient (at step "
                f"{progress.step + 1}): training stopped. Lower train.lr, keep train.clip_norm on, or use fp32; "
                f"last.pt holds the last good state"
            )

    def _log_train(self, bar: tqdm) -> None:
        loss, tokens_per_s = self.meter.read()
        self.meter.reset()
        step, lr = self.progress.step, self.optimizer.param_groups[0]["lr"]
        self._record("train/loss", loss, step)
        self._record("train/lr", lr, step)
        self._record("train/tokens_per_s", tokens_per_s, step)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}")
        log.info(
            "step %d epoch %d: loss %.3f, lr %.2g, %.0f target tokens/s, %.1f min",
            step,
            self.progress.epoch + 1,
            loss,
            lr,
            tokens_per_s,
            self.progress.train_seconds / 60,
        )

    # --- validation --------------------------------------------------------------------------
    def _averaged(self):
        """Inside this block the model holds the weights that validation and best.pt judge."""
        return self.average.applied(self.model) if self.average is not None else nullcontext()

    def _validate_and_save(self) -> None:
        with self._averaged():
            result = self.validator.validate()
        step = self.validated_step = self.progress.step
        minutes = self.progress.train_seconds / 60
        for name in ("loss", "ppl", "bleu"):
            self._record(f"valid/{name}", result[name], step)
        self._record("valid/train_minutes", minutes, step)
        if self.writer is not None:
            self.writer.flush()
        if self.scheduler is not None:
            self.scheduler.step(result["loss"])
        finite = all(bool(torch.isfinite(weight).all()) for weight in self.model.parameters())
        if not finite:
            log.error("the weights hold NaN or inf at step %d: best.pt is not written", self.progress.step)
        improved = finite and result["bleu"] > self.progress.best_bleu
        if improved:
            self.progress.best_bleu = result["bleu"]
            self.progress.validations_since_best = 0
        else:
            self.progress.validations_since_best += 1
        self.save(best=improved, validated=True)
        if self.writer is not None:
            with self._averaged():
                self.validator.plot(self.writer, step)
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
