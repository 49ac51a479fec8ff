"""`nmt-train`: the Hydra edge of training.

Hydra composes the package's configs (`conf/`, shipped inside the package as `nmt.conf`) on top
of the typed schema of `nmt.config`, with the command line's overrides; `run_training` does the
rest. With `train.processes` > 1 this command starts itself once per process through torch's
launcher and waits for them. Under torchrun every rank runs this command; ranks other than 0
write nothing into the run directory and log only warnings. A user error (a bad value, a missing
corpus, a broken checkpoint) ends in one line.
"""

from __future__ import annotations

import difflib
import logging
import shutil
import sys
import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, get_type_hints

import datasets
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nmt.checkpoint import CheckpointError
from nmt.config import Config, register_configs, to_config
from nmt.data.corpus import DataError, check_source
from nmt.data.tokenizer import TokenizerError
from nmt.model.device import resolve_device, resolve_precision
from nmt.options import ConfigError
from nmt.training.distributed import (
    LOST_PEER_EXIT,
    LaunchError,
    Ranks,
    die_with_launcher,
    launch,
    launched_by_nmt,
    lost_contact,
    resolve_processes,
    under_launcher,
)
from nmt.training.run import PeerError, resume_point, run_training
from nmt.training.stopping import TrainingDiverged, TrainingStopped

log = logging.getLogger(__name__)

CONFIG_PACKAGE = "pkg://nmt.conf"
GROUPS = ("data", "model", "train", "cell", "experiment")
# Hydra's options that choose the config itself: the processes must compose the same one.
CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def _run_dir_resolver(resume: str | None, fresh: str) -> str:
    return str(Path(resume).expanduser()) if resume else fresh


def _hydra_subdir_resolver(resume: str | None, now: str) -> str:
    return f".hydra/resumed_{now}" if resume else ".hydra"


def _train(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    ranks = Ranks.from_environment()
    if not ranks.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the job
    try:
        config, overrides = to_config(cfg), list(HydraConfig.get().overrides.task)
        if under_launcher():  # one rank of the job: it reads last.pt itself
            run_training(config, run_dir, overrides)
            return
        config, resumed = resume_point(config, run_dir, overrides)
        if _processes(config) > 1:
            if resumed is None:  # a resumed run reads the data source it was started with
                # One message in seconds, before the processes start.
                for source in [config.data.source, *(corpus.source for corpus in config.data.corpora.values())]:
                    check_source(source)
            _launch(config, run_dir)
        else:
            run_training(config, run_dir, resumed=resumed)
    except (ConfigError, DataError, TokenizerError, CheckpointError) as error:
        log.error("%s", error)
        sys.exit(2)
    except PeerError:
        sys.exit(2)  # rank 0 has said why
    except TrainingDiverged as error:
        log.error("%s", error)
        sys.exit(1)
    except TrainingStopped as stop:
        sys.exit(stop.exit_code)  # last.pt holds the step; the log says how to resume
    except LaunchError as error:
        if error.exit_code == 1:
            log.error("%s; the run's last checkpoint is kept (resume with train.resume=%s)", error, run_dir)
        elif error.exit_code != 2:  # stopped by a signal, after a step
            log.warning("%s; resume with `nmt-train train.resume=%s`", error, run_dir)
        sys.exit(error.exit_code)
    except Exception as error:
        if not ranks.distributed:
            raise
        sys.exit(_rank_failed(ranks, error))


def _rank_failed(ranks: Ranks, error: Exception) -> int:
    """One line for a rank that stopped on an error -> its exit status. A rank that lost contact
    with another one is not the cause: under train.processes the launcher names the rank that
    failed first, and this rank stays quiet."""
    log.debug("rank %d failed", ranks.rank, exc_info=error)
    lost_peer = lost_contact(error)
    if not (lost_peer and launched_by_nmt()):
        first_line = (str(error).strip().splitlines() or [""])[0]
        log.error("rank %d stopped: %s: %s", ranks.rank, type(error).__name__, first_line)
    return LOST_PEER_EXIT if lost_peer else 1


def _processes(config: Config) -> int:
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    return resolve_processes(config.train.processes, device, config.train.batch_tokens, precision)


def _launch(config: Config, run_dir: Path) -> None:
    """This command once per process, in this run directory (which Hydra has made, with the
    config it composed)."""
    processes = _processes(config)
    log.info("training in %d processes (torch.distributed)", processes)
    overrides = list(HydraConfig.get().overrides.task)
    argv = [*_config_flags(sys.argv[1:]), *overrides, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    launch(processes, argv, config.train.max_restarts)


def _config_flags(argv: list[str]) -> list[str]:
    flags = []
    for position, arg in enumerate(argv):
        name = arg.split("=", 1)[0]
        if name in CONFIG_FLAGS:
            flags += [arg] if "=" in arg else argv[position : position + 2]
    return flags


def unknown_key_message(argv: list[str]) -> str | None:
    """One line for the first override whose key the schema does not have (Hydra's own error
    spans several lines and hints at HYDRA_FULL_ERROR), naming the valid keys at that level."""
    for arg in argv:
        key = arg.split("=", 1)[0]
        if "=" not in arg or arg.startswith(("-", "+", "~")) or key.startswith(("hydra.", "hydra/")):
            continue
        node: Any = Config
        parts = key.split(".")
        if len(parts) == 1 and parts[0] in GROUPS:
            continue  # a preset of a config group: Hydra names the valid ones itself
        for depth, part in enumerate(parts):
            names = [f.name for f in fields(node)] if is_dataclass(node) else []
            if part not in names:
                where = ".".join(parts[:depth]) or "the config"
                close = difflib.get_close_matches(part, names, n=1)
                hint = f" (did you mean {'.'.join([*parts[:depth], close[0]])}?)" if close else ""
                return f"nmt-train: unknown key {key}{hint}; {where} has: {', '.join(names)}"
            node = get_type_hints(node)[part]  # a nested dataclass, or a plain type: nothing below
    return None


def missing_resume_message(argv: list[str]) -> str | None:
    """A `train.resume=RUN` without RUN/checkpoints/last.pt, before Hydra makes RUN a directory."""
    for arg in argv:
        if arg.startswith("train.resume=") and arg.split("=", 1)[1] not in ("", "null"):
            run = Path(arg.split("=", 1)[1]).expanduser()
            if not (run / "checkpoints" / "last.pt").is_file():
                return f"nmt-train: train.resume={run}: no checkpoints/last.pt there; give a run directory of nmt-train"
    return None


def main() -> None:
    message = unknown_key_message(sys.argv[1:]) or missing_resume_message(sys.argv[1:])
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)
    register_configs()
    datasets.disable_progress_bars()  # per-split map bars drown the log; tqdm shows training
    OmegaConf.register_new_resolver("nmt_run_dir", _run_dir_resolver, replace=True)
    OmegaConf.register_new_resolver("nmt_hydra_subdir", _hydra_subdir_resolver, replace=True)
    if under_launcher():
        die_with_launcher()
    scratch = None
    if not Ranks.from_environment().is_main:
        # Only rank 0 writes the run directory: the others' Hydra output goes to a scratch one.
        scratch = tempfile.mkdtemp(prefix="nmt-rank-")
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    try:
        hydra.main(version_base=None, config_path=CONFIG_PACKAGE, config_name="config")(_train)()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
