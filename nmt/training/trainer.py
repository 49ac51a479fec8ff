"""The Trainer: the training loop over a prepared corpus, its checkpoints and its stopping rules.

The Trainer takes a validated `Config` (the Hydra edge is `nmt.cli.train`, the setting up
`nmt.training.run`) and writes the run directory's `checkpoints/{last,best}.pt` and
`tensorboard/`. Under torchrun (or `train.processes`) every rank runs a Trainer on its share of
every batch (nmt/training/distributed.py); rank 0 writes, and validation is shared between the
ranks (nmt/training/validation.py).
"""

from __future__ import annotations

import logging
import signal
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from nmt.checkpoint import (
    BEST,
    LAST,
    Checkpoint,
    Progress,
    TrainingState,
    step_checkpoint_name,
    step_checkpoints,
)
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
from nmt.training.optimization import Optimization
from nmt.training.reporting import TrainingReport
from nmt.training.stopping import StopSignals, TrainingStopped, limit_reached
from nmt.training.validation import Validator

log = logging.getLogger(__name__)


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
        self.optimization = Optimization(self.model, config.train, device)
        decay = config.train.average_decay
        self.average = WeightAverage(self.model, decay) if decay else None
        self._train_texts: tuple[list[str], list[str]] | None = None  # read for subword sampling only
        self._use_train_pairs(store.train)
        self.validator = Validator(self.loss, tokenizer, store.validation, self.train_config, ranks)
        self.validated_step = -1
        self.progress = Progress()
        self.stop_signals = StopSignals()
        self.report = TrainingReport(run_dir, ranks.is_main)
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

    # --- checkpoints -------------------------------------------------------------------------
    def checkpoint(self, full: bool) -> Checkpoint:
        """The run as it stands; `full`: with what resuming needs (last.pt). Its `model` is what
        translation uses: the averaged weights when averaging is on."""
        average = self.average
        model = self.model.state_dict() if average is None else average.state_dict(self.model)
        training = None
        if full:
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            optimizer, scheduler = self.optimization.state()
            training = TrainingState(
                optimizer=optimizer,
                scheduler=scheduler,
                rng=rng,
                trained_model=None if average is None else self.model.state_dict(),
            )
        return Checkpoint(self.config, self.tokenizer, model, replace(self.progress), training)

    def save(self, best: bool = False, validated: bool = False) -> None:
        """Rank 0 writes; the other ranks hold the same weights and state. At a validation with
        `train.keep_checkpoints` K, the weights are also kept as step_NNNNNNN.pt, the last K of
        them (what `nmt-average RUN --last K` averages)."""
        if not self.ranks.is_main:
            return
        self.checkpoint(full=True).save(self.checkpoint_dir / LAST)
        if best:
            self.checkpoint(full=False).save(self.checkpoint_dir / BEST)
        keep = self.train_config.keep_checkpoints
        if validated and keep:
            self.checkpoint(full=False).save(self.checkpoint_dir / step_checkpoint_name(self.progress.step))
            for old in step_checkpoints(self.checkpoint_dir)[:-keep]:
                old.unlink(missing_ok=True)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from a run's last.pt: weights, optimizer, scheduler, RNG, data position."""
        training = checkpoint.training
        assert training is not None, "load_for_resume checks that last.pt holds the training state"
        self.model.load_state_dict(training.trained_model or checkpoint.model)
        if self.average is not None:
            # A run that was not averaging starts its average from the weights it resumes with.
            self.average.load(checkpoint.model, updates=checkpoint.progress.step)
        self.optimization.load(training)
        torch.set_rng_state(training.rng["torch"])
        if "cuda" in training.rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(training.rng["cuda"])
        self.progress = replace(checkpoint.progress)
        log.info(
            "resumed at step %d (epoch %d, batch %d), best BLEU %.2f",
            self.progress.step,
            self.progress.epoch,
            self.progress.batch_in_epoch,
            self.progress.best_bleu,
        )

    # --- the loop ----------------------------------------------------------------------------
    def limit_reached(self) -> bool:
        return limit_reached(self.train_config, self.progress)

    def train(self) -> Progress:
        """Train until a limit is reached; the final weights are validated and saved."""
        progress = self.progress
        self._started, self._seconds_before = time.monotonic(), progress.train_seconds
        with self.stop_signals.catching():
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
        self.report.close()
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
                    self.optimization.anneal(progress, progress.epoch + progress.batch_in_epoch / len(batches))
                loss_sum, tokens = self.train_step(indices)
                seconds = self._seconds_before + time.monotonic() - self._started
                stop = float(self.stop_signals.received or 0)
                if self.ranks.distributed:
                    # Every rank takes rank 0's clock, so that a time limit stops all at one step,
                    # and any rank's stop signal, so that a stop does too.
                    main_seconds = seconds if self.ranks.is_main else 0.0
                    loss_sum, seconds, stop = all_sum([loss_sum, main_seconds, stop], self.ranks)
                progress.step += 1
                progress.batch_in_epoch += 1
                progress.tgt_tokens += tokens
                progress.train_seconds = seconds
                self.report.meter.add(loss_sum, tokens)
                bar.update(1)
                if progress.step % cfg.log_every == 0:
                    self.report.training(progress, self.optimization.lr, bar)
                if self.limit_reached():
                    return
                if validate_every and progress.step % validate_every == 0:
                    self._validate_and_save()
                elif cfg.save_every and progress.step % cfg.save_every == 0:
                    self.save()
                if stop:
                    self._stop(self.stop_signals.received or signal.SIGTERM)

    def _stop(self, signal_number: int) -> None:
        self.save()
        self.report.flush()
        step = self.progress.step
        if self.ranks.is_main:
            log.warning(
                "stopped at step %d by %s; resume with `nmt-train train.resume=%s`",
                step,
                signal.Signals(signal_number).name,
                self.run_dir,
            )
        raise TrainingStopped(signal_number, step)

    def train_step(self, indices: np.ndarray) -> tuple[float, int]:
        """One update on the training pairs `indices` -> (this rank's loss sum, the batch's
        target tokens)."""
        tokens = int(self.tgt_lengths[indices].sum()) + len(indices)  # target tokens, eos included
        loss_sum = self.backward(indices, tokens)
        self.optimization.update(self.progress, indices)
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
        self.optimization.zero_grad()
        batch = None
        if len(indices):
            pairs = self.train_pairs
            batch = collate([pairs.src[i] for i in indices], [pairs.tgt[i] for i in indices])
            batch = batch.to(self.device)
        loss_sum, _ = self.objective(batch, self.train_config.label_smoothing)
        # DDP averages the ranks' gradients: scaled by the world size, the average is the sum.
        (loss_sum * (ranks.world_size / batch_tokens)).backward()
        return loss_sum.item()

    # --- validation --------------------------------------------------------------------------
    def _averaged(self):
        """Inside this block the model holds the weights that validation and best.pt judge."""
        return self.average.applied(self.model) if self.average is not None else nullcontext()

    def _validate_and_save(self) -> None:
        with self._averaged():
            result = self.validator.validate()
        self.validated_step = self.progress.step
        self.optimization.validated(result["loss"])
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
        if self.report.writer is not None:
            with self._averaged():
                self.validator.plot(self.report.writer, self.progress.step)
        self.report.validation(result, self.progress, improved)
