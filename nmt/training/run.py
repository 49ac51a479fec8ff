"""`run_training`: everything `nmt-train` does once its config is set, in one process, alone or
as one rank of the job torchrun (or `train.processes`) started: threads, device, resuming (also
after a torchrun restart), the prepared corpus (nmt/data/store.py: once per machine, before the
process group), the process group, then the Trainer's loop."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from nmt.checkpoint import LAST, load_checkpoint
from nmt.config import Config
from nmt.data.corpus import DataError
from nmt.data.store import PreparedElsewhere, Store, prepare_for_resume, prepare_store
from nmt.data.tokenizer import Tokenizer
from nmt.model.device import resolve_device
from nmt.training.distributed import (
    Ranks,
    available_cores,
    gather_objects,
    process_group,
    rank_device,
    restart_count,
)
from nmt.training.trainer import Progress, Trainer

log = logging.getLogger(__name__)


class PeerError(RuntimeError):
    """Another rank failed while preparing the run (and reports why); this one stops with it."""


def run_training(config: Config, run_dir: Path) -> Progress:
    """Everything `nmt-train` does once its config is composed and checked, in this process as
    one rank of the job torchrun (or `train.processes`) started, or alone. The corpus is prepared
    (or found prepared) before the ranks join their process group, so that a rank waiting for
    another one's preparation has no collective that could time out."""
    cfg = config.train
    ranks = Ranks.from_environment()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif ranks.distributed:
        # Set, not inherited: torchrun sets OMP_NUM_THREADS=1 for every rank it starts.
        torch.set_num_threads(max(1, available_cores() // ranks.local_world_size))
    device = rank_device(resolve_device(cfg.device), ranks)
    resume_dir = cfg.resume
    if not resume_dir and restart_count() and (run_dir / "checkpoints" / LAST).exists():
        resume_dir = str(run_dir)  # torchrun restarted the job (--max-restarts): go on from last.pt
        log.info("restart %d of the job: resuming from %s", restart_count(), run_dir)
    resume_payload = None
    if resume_dir:
        # Every rank reads it: the command line has checked that each one's machine has it.
        resume_payload = load_checkpoint(Path(resume_dir) / "checkpoints" / LAST)
        saved = Config.from_dict(resume_payload["config"])
        _warn_ignored_changes(config, saved, ranks)
        config = Config(data=saved.data, model=saved.model, train=cfg)
    store = _prepare(config, resume_payload, ranks)
    with process_group(ranks, device, cfg.process_timeout_s):
        _check_same_tokenizer(store, ranks)
        if ranks.is_main:
            log.info("run directory: %s; device %s, %d CPU threads", run_dir, device, torch.get_num_threads())
            store.tokenizer.save(run_dir / "tokenizer")
            tokenizer = store.tokenizer
            log.info("vocabulary: %d source, %d target pieces", tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        trainer = Trainer(config, run_dir, store, device, ranks)
        if resume_payload is not None:
            trainer.restore(resume_payload)
        return trainer.train()


def _prepare(config: Config, resume_payload: dict | None, ranks: Ranks) -> Store:
    """The run's prepared store (a resumed run's with its checkpoint's tokenizer), prepared with
    every core of this machine by whichever process gets there first."""
    job = os.environ.get("TORCHELASTIC_RUN_ID", "") if ranks.distributed else ""
    try:
        if resume_payload is not None:
            tokenizer = Tokenizer.from_state(resume_payload["tokenizer"])
            return prepare_for_resume(config.data, tokenizer, available_cores(), job)
        return prepare_store(config.data, None, available_cores(), job)
    except PreparedElsewhere as error:
        if ranks.distributed:
            raise PeerError(str(error)) from None  # the rank that prepared it has said why
        raise


def _check_same_tokenizer(store: Store, ranks: Ranks) -> None:
    """Machines that each prepared their own store must have trained the same tokenizer."""
    fingerprints = gather_objects(store.tokenizer.fingerprint, ranks)
    differing = [rank for rank, fingerprint in enumerate(fingerprints) if fingerprint != fingerprints[0]]
    if not differing:
        return
    if not ranks.is_main:
        raise PeerError("the ranks' tokenizers differ")
    raise DataError(
        f"rank {differing[0]} prepared a tokenizer other than rank 0's: put data.cache_dir on a filesystem every "
        "machine shares, or give them all one with data.tokenizer.model=PATH"
    )


def _warn_ignored_changes(current: Config, saved: Config, ranks: Ranks) -> None:
    for section in ("data", "model"):
        if ranks.is_main and getattr(current, section) != getattr(saved, section):
            log.warning("resuming: the run's saved %s config is used; %s overrides are ignored", section, section)
