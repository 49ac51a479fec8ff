"""Train one configuration with several seeds; validation and test BLEU as mean ± standard deviation.

    make seeds ARGS="train=quick N=3"
    python scripts/seeds.py train=quick model.attention=none N=3 --out runs/seeds/quick-none --beam 5

Everything but N=, --out and --beam is a Hydra override of `nmt-train`. Seed k trains with
`train.seed=k` into OUT/seed<k>/ (a run directory that `nmt-evaluate` and `nmt-translate` take;
one already finished is reused), then its best checkpoint is scored on the validation and test
splits of its corpus (cased sacrebleu BLEU, the beam given). Writes OUT/seeds.md and
OUT/seeds.json and prints the table. A time budget (train.max_minutes) makes the seeds' step
counts depend on the machine's load: give a step budget (train.max_steps) for figures that
another machine can repeat.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from nmt.checkpoint import Checkpoint, resolve_checkpoint
from nmt.evaluation import corpus_split
from nmt.scoring import bleu
from nmt.translation import Translator


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str], int]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where the runs go (default: runs/seeds/<time>)")
    parser.add_argument("--beam", type=int, default=5, help="beam size of the scoring (default: 5)")
    args, rest = parser.parse_known_args(argv)
    seeds = [item for item in rest if item.startswith("N=")]
    overrides = [item for item in rest if not item.startswith("N=")]
    count = int(seeds[-1][2:]) if seeds else 3
    if count < 2:
        parser.error("N must be at least 2 for a standard deviation")
    if any(item.startswith(("train.seed=", "hydra.run.dir=")) for item in overrides):
        parser.error("train.seed and hydra.run.dir are set per seed by this script")
    args.out = args.out or Path("runs/seeds") / time.strftime("%Y-%m-%d_%H-%M-%S")
    return args, overrides, count


def train(run_dir: Path, overrides: list[str], seed: int) -> float | None:
    """Train seed `seed` into run_dir unless it is there already -> the wall seconds its training
    took (None when not known: reused from a run that did not record them)."""
    done = run_dir / ".done"
    if done.exists():
        recorded = done.read_text().strip()
        return float(recorded) if recorded.replace(".", "", 1).isdigit() else None
    started = time.monotonic()
    command = [sys.executable, "-m", "nmt.cli.train", *overrides, f"train.seed={seed}"]
    if (run_dir / "checkpoints" / "last.pt").exists():  # interrupted: go on from its last checkpoint
        command.append(f"train.resume={run_dir}")
    else:
        command.append(f"hydra.run.dir={run_dir}")
    subprocess.run(command, check=True)
    seconds = time.monotonic() - started
    done.write_text(f"{seconds:.0f}\n")
    return seconds


def score(run_dir: Path, split: str, beam: int) -> float:
    checkpoint = resolve_checkpoint(run_dir)
    sources, references = corpus_split(checkpoint, split, None)
    return bleu(Translator.load(checkpoint, beam_size=beam).translate(sources), references).score


def mean_sd(values: list[float], digits: int = 2) -> str:
    """ "mean ± standard deviation"; a single value as it is."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args, overrides, count = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(1, count + 1):
        run_dir = args.out / f"seed{seed}"
        seconds = train(run_dir, overrides, seed)
        step = Checkpoint.load(resolve_checkpoint(run_dir)).progress.step
        val, test = score(run_dir, "validation", args.beam), score(run_dir, "test", args.beam)
        train_s = None if seconds is None else round(seconds)
        rows.append({"seed": seed, "step": step, "train_s": train_s, "val_bleu": val, "test_bleu": test})
        print(f"seed {seed}: step {step}, validation {val:.2f}, test {test:.2f}", flush=True)
    lines = [
        f"`nmt-train {' '.join(overrides)}`, {count} seeds, best checkpoint, beam {args.beam}, cased sacrebleu BLEU",
        "",
        "| seed | best checkpoint's step | training s | validation BLEU | test BLEU |",
        "| ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['seed']} | {r['step']} | {r['train_s'] if r['train_s'] is not None else '-'} "
            f"| {r['val_bleu']:.2f} | {r['test_bleu']:.2f} |"
            for r in rows
        ),
        f"| mean ± sd | | | {mean_sd([r['val_bleu'] for r in rows])} | {mean_sd([r['test_bleu'] for r in rows])} |",
    ]
    table = "\n".join(lines)
    (args.out / "seeds.md").write_text(table + "\n")
    (args.out / "seeds.json").write_text(
        json.dumps({"overrides": overrides, "beam": args.beam, "seeds": rows}, indent=2)
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
