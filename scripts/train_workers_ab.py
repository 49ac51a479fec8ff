"""Training target tokens/s with `train.workers` 1 and N, alternated in one process (so the
machine's drift hits both arms alike), on the reference model with the peers' recipe.

    python scripts/train_workers_ab.py [--workers 2] [--rounds 4] [--steps 12] [--batch-tokens 2400]

Each round trains `--steps` timed steps (after 2 untimed) with one process, then with `--workers`
processes (helpers forked for the arm and stopped after it), on the next batches of the same
epoch; the same model keeps training throughout. Prints each round and the ratio of the totals.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nmt.config import register_configs, to_config  # noqa: E402
from nmt.data.corpus import prepare_data  # noqa: E402
from nmt.training.trainer import Trainer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-tokens", type=int, default=2400)
    parser.add_argument("--data", default=os.environ.get("NMT_DATA", str(ROOT.parent / "shared/data/multi30k/hub")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from hydra import compose, initialize_config_module

    register_configs()
    overrides = [
        "model=reference",
        "train=peers",
        "train.batching=length",
        f"train.batch_tokens={args.batch_tokens}",
        f"data.source={args.data}",
    ]
    with initialize_config_module("nmt.conf", version_base=None):
        config = to_config(compose("config", overrides=overrides))
    tokenizer, corpus = prepare_data(config.data, None, num_threads=torch.get_num_threads())
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir), tokenizer, corpus, torch.device("cpu"))
        batches = iter(trainer.batcher.epoch_batches(0))
        totals = {1: [0.0, 0], args.workers: [0.0, 0]}
        for round_ in range(args.rounds):
            for workers in totals:
                trainer.workers, trainer.threads_per_worker = workers, max(1, trainer.threads // workers)
                with trainer.data_parallel():
                    for _ in range(2):
                        trainer.train_step(next(batches))
                    started, tokens = time.perf_counter(), 0
                    for _ in range(args.steps):
                        tokens += trainer.train_step(next(batches))[1]
                    seconds = time.perf_counter() - started
                totals[workers][0] += seconds
                totals[workers][1] += tokens
                print(f"round {round_ + 1}, workers {workers}: {tokens / seconds:,.0f} target tokens/s", flush=True)
    rates = {workers: tokens / seconds for workers, (seconds, tokens) in totals.items()}
    for workers, rate in rates.items():
        print(f"workers {workers}: {rate:,.0f} target tokens/s")
    print(f"workers {args.workers} / workers 1: {rates[args.workers] / rates[1]:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
