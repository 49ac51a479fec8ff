"""`run_training`: everything `nmt-train` does once its config is set, in one process, alone or
as one rank of the job torchrun (or `train.processes`) started: threads, device and process group,
resuming (also after a torchrun restart), the tokenizer (trained once, by rank 0) and the corpus,
then the Trainer's loop."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from nmt.checkpoint import LAST, load_checkpoint
from nmt.config import Config
from nmt.data.corpus import prepare_data
from nmt.data.tokenizer import Tokenizer
from nmt.model.device import resolve_device
from nmt.training.distributed import (
    Ranks,
    available_cores,
    broadcast_object,
    process_group,
    rank_device,
    restart_count,
)
from nmt.training.trainer import Progress, Trainer

log = logging.getLogger(__name__)


class PeerError(RuntimeError):
    """Rank 0 failed while preparing the run (and reports why); the other ranks stop with it."""


def run_training(config: Config, run_dir: Path) -> Progress:
    """Everything `nmt-train` does once its config is composed and checked, in this process as
    one rank of the job torchrun (or `train.processes`) started, or alone."""
    cfg = config.train
    ranks = Ranks.from_environment()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif ranks.distributed:
        # Set, not inherited: torchrun sets OMP_NUM_THREADS=1 for every rank it starts.
        torch.set_num_threads(max(1, available_cores() // ranks.local_world_size))
    device = rank_device(resolve_device(cfg.device), ranks)
    with process_group(ranks, device, cfg.process_timeout_s):
        return _run(config, run_dir, ranks, device)


def _run(config: Config, run_dir: Path, ranks: Ranks, device: torch.device) -> Progress:
    cfg = config.train
    resume_dir = cfg.resume
    if not resume_dir and restart_count() and (run_dir / "checkpoints" / LAST).exists():
        resume_dir = str(run_dir)  # torchrun restarted the job (--max-restarts): go on from last.pt
        log.info("restart %d of the job: resuming from %s", restart_count(), run_dir)
    resume_payload, tokenizer = None, None
    if resume_dir:
        resume_payload = _on_rank_zero(lambda: load_checkpoint(Path(resume_dir) / "checkpoints" / LAST), ranks)
        saved = Config.from_dict(resume_payload["config"])
        _warn_ignored_changes(config, saved)
        config = Config(data=saved.data, model=saved.model, train=cfg)
        tokenizer = Tokenizer.from_state(resume_payload["tokenizer"])
    if ranks.is_main:
        log.info("run directory: %s; device %s, %d CPU threads", run_dir, device, torch.get_num_threads())
    threads = torch.get_num_threads()
    prepared = None
    if tokenizer is None and ranks.distributed:
        # The tokenizer is trained once, by rank 0; the others encode with it.
        def train_tokenizer() -> dict:
            nonlocal prepared
            prepared = prepare_data(config.data, None, num_threads=threads)
            return prepared[0].state()

        tokenizer = Tokenizer.from_state(_on_rank_zero(train_tokenizer, ranks))
    tokenizer, corpus = prepared or prepare_data(config.data, tokenizer, num_threads=threads)
    if ranks.is_main:
        tokenizer.save(run_dir / "tokenizer")
        log.info("vocabulary: %d source, %d target pieces", tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    trainer = Trainer(config, run_dir, tokenizer, corpus, device, ranks)
    if resume_payload is not None:
        trainer.restore(resume_payload)
    return trainer.train()


def _on_rank_zero(make, ranks: Ranks):
    """`make()` on rank 0, its result on every rank. An error on rank 0 is raised there and
    stops the other ranks with a PeerError, instead of leaving them waiting for the result."""
    if not ranks.distributed:
        return make()
    result, error = None, None
    if ranks.is_main:
        try:
            result = make()
        except Exception as caught:
            error = caught
    result, failed = broadcast_object((result, error is not None), ranks)
    if error is not None:
        raise error
    if failed:
        raise PeerError("rank 0 failed while preparing the run")
    return result


def _warn_ignored_changes(current: Config, saved: Config) -> None:
    for section in ("data", "model"):
        if getattr(current, section) != getattr(saved, section):
            log.warning("resuming: the run's saved %s config is used; %s overrides are ignored", section, section)
