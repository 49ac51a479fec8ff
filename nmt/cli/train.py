"""`nmt-train`: the Hydra edge of training.

Hydra composes the package's configs (`conf/`, shipped inside the package as `nmt.conf`) on top
of the typed schema of `nmt.config`, with the command line's overrides; `run_training` does the
rest. A user error (a bad value, a missing corpus, a broken checkpoint) ends in one line.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import datasets
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from nmt.checkpoint import CheckpointError
from nmt.config import ConfigError, register_configs, to_config
from nmt.data.corpus import DataError
from nmt.data.tokenizer import TokenizerError
from nmt.training.trainer import run_training
from nmt.workers import WorkerError

log = logging.getLogger(__name__)

CONFIG_PACKAGE = "pkg://nmt.conf"


def _run_dir_resolver(resume: str | None, fresh: str) -> str:
    return str(Path(resume).expanduser()) if resume else fresh


def _hydra_subdir_resolver(resume: str | None, now: str) -> str:
    return f".hydra/resumed_{now}" if resume else ".hydra"


def _train(cfg: DictConfig) -> None:
    try:
        config = to_config(cfg)
        run_training(config, Path(HydraConfig.get().runtime.output_dir))
    except (ConfigError, DataError, TokenizerError, CheckpointError) as error:
        log.error("%s", error)
        sys.exit(2)
    except WorkerError as error:
        log.error("%s; the run's last checkpoint is kept (resume with train.resume=<run dir>)", error)
        sys.exit(1)


def main() -> None:
    register_configs()
    datasets.disable_progress_bars()  # per-split map bars drown the log; tqdm shows training
    OmegaConf.register_new_resolver("nmt_run_dir", _run_dir_resolver, replace=True)
    OmegaConf.register_new_resolver("nmt_hydra_subdir", _hydra_subdir_resolver, replace=True)
    hydra.main(version_base=None, config_path=CONFIG_PACKAGE, config_name="config")(_train)()


if __name__ == "__main__":
    main()
