"""`run_training`: everything `nmt-train` does once its config is set, in one process, alone or
as one rank of the job torchrun (or `train.processes`) started: threads, device, resuming (also
after a torchrun restart), the prepared corpus (nmt/data/store.py: once per machine, before the
process group), the process group, then the Trainer's loop."""

from __future__ import annotations

import logging
import os
from dataclasses import fields, replace
from pathlib import Path

import torch

from nmt.checkpoint import LAST, Checkpoint, Progress, load_for_resume
from nmt.config import Config, TrainConfig
from nmt.data.corpus import DataError
from nmt.data.store import PreparedElsewhere, Store, prepare_for_resume, prepare_store
from nmt.model.device import resolve_device
from nmt.training.distributed import (
    Ranks,
    available_cores,
    gather_objects,
    process_group,
    rank_device,
    restart_count,
)
from nmt.training.trainer import Trainer

log = logging.getLogger(__name__)


class PeerError(RuntimeError):
    """Another rank failed while preparing the run (and reports why); this one stops with it."""


def run_training(
    config: Config, run_dir: Path, overrides: list[str] | None = None, resumed: Checkpoint | None = None
) -> Progress:
    """Everything `nmt-train` does once its config is composed and checked, in this process as
    one rank of the job torchrun (or `train.processes`) started, or alone. The corpus is prepared
    (or found prepared) before the ranks join their process group, so that a rank waiting for
    another one's preparation has no collective that could time out. `overrides`: the command
    line's, for a resumed run to keep its own train settings but those given (`resume_point`);
    `resumed`: the last.pt that `resume_point` has read already, with `config` its answer."""
    cfg = config.train
    ranks = Ranks.from_environment()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif ranks.distributed:
        # Set, not inherited: torchrun sets OMP_NUM_THREADS=1 for every rank it starts.
        torch.set_num_threads(max(1, available_cores() // ranks.local_world_size))
    device = rank_device(resolve_device(cfg.device), ranks)
    if resumed is None:
        config, resumed = resume_point(config, run_dir, overrides, ranks)
    store = _prepare(config, resumed, ranks)
    with process_group(ranks, device, cfg.process_timeout_s):
        _check_same_tokenizer(store, ranks)
        if ranks.is_main:
            log.info("run directory: %s; device %s, %d CPU threads", run_dir, device, torch.get_num_threads())
            store.tokenizer.save(run_dir / "tokenizer")
            tokenizer = store.tokenizer
            log.info("vocabulary: %d source, %d target pieces", tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        trainer = Trainer(config, run_dir, store, device, ranks)
        if resumed is not None:
            trainer.restore(resumed)
        return trainer.train()


def resume_point(
    config: Config, run_dir: Path, overrides: list[str] | None = None, ranks: Ranks | None = None
) -> tuple[Config, Checkpoint | None]:
    """The config to train with, and the last.pt to go on from when resuming (`train.resume`, or
    torchrun restarting the job): a resumed run keeps its data and model config, and its train
    settings (its budget, schedule and batches) but for those `overrides` give one by one."""
    ranks = ranks or Ranks.from_environment()
    resume_dir = config.train.resume
    if not resume_dir and restart_count() and (run_dir / "checkpoints" / LAST).exists():
        resume_dir = str(run_dir)  # torchrun restarted the job (--max-restarts): go on from last.pt
        log.info("restart %d of the job: resuming from %s", restart_count(), run_dir)
    if not resume_dir:
        return config, None
    # Every rank reads it: the command line has checked that each one's machine has it.
    checkpoint = load_for_resume(resume_dir)
    saved = checkpoint.config
    _warn_ignored_changes(config, saved, ranks)
    train = config.train
    given = given_train_keys(overrides) if overrides is not None and config.train.resume else None
    if given is not None:
        train = resumed_train_config(saved.train, config.train, given)
    return Config(data=saved.data, model=saved.model, train=train), checkpoint


def given_train_keys(overrides: list[str]) -> frozenset[str] | None:
    """The train settings a command line gives one by one (`train.lr=...`); None where it names a
    train preset or a recipe (`train=quick`, `experiment=...`), which gives them all."""
    keys = [override.lstrip("+~").split("=", 1)[0] for override in overrides]
    if any(key in ("train", "experiment") for key in keys):
        return None
    return frozenset(key.split(".")[1] for key in keys if key.startswith("train."))


def resumed_train_config(saved: TrainConfig, current: TrainConfig, given: frozenset[str]) -> TrainConfig:
    """The run's own train settings but for those given."""
    given = given | {"resume"}
    differing = [
        f.name
        for f in fields(TrainConfig)
        if f.name not in given and getattr(saved, f.name) != getattr(current, f.name)
    ]
    if differing:
        log.info("resuming with the run's own train settings (%s as it was started)", ", ".join(differing))
    return replace(saved, **{name: getattr(current, name) for name in given})


def _prepare(config: Config, resumed: Checkpoint | None, ranks: Ranks) -> Store:
    """The run's prepared store (a resumed run's with its checkpoint's tokenizer), prepared with
    every core of this machine by whichever process gets there first."""
    job = os.environ.get("TORCHELASTIC_RUN_ID", "") if ranks.distributed else ""
    try:
        if resumed is not None:
            return prepare_for_resume(config.data, resumed.tokenizer, available_cores(), job)
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
