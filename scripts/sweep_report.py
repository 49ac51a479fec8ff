"""Tabulate and plot a Hydra multirun of nmt-train: BLEU per setting, mean ± sd over its seeds.

    nmt-train -m train=quick cell=lstm,gru,rnn model.attention=none,bahdanau train.seed=1,2 \
        hydra.sweep.dir=runs/sweeps/cells
    python scripts/sweep_report.py runs/sweeps/cells --plot docs/cells_attention.png

The jobs are grouped by the overrides that differ between them, train.seed aside. Each job's best
checkpoint is scored on the validation and test splits of its corpus (cased sacrebleu BLEU, beam
--beam) beside the validation perplexity training measured at that checkpoint (steadier between
seeds than BLEU); each group gets mean ± standard deviation over its seeds. The plot draws every job's
validation BLEU (greedy, as training measured it) against its minutes of training: one colour per
setting, one line per seed. Writes SWEEP/sweep.md and SWEEP/sweep.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import datasets
import yaml
from curve import curve
from seeds import mean_sd, score

from nmt.checkpoint import LAST, Checkpoint, resolve_checkpoint

SEED_KEY = "train.seed"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="the multirun's directory (hydra.sweep.dir)")
    parser.add_argument("--beam", type=int, default=5, help="beam size of the scoring (default: 5)")
    parser.add_argument("--plot", type=Path, help="write the validation curves here (PNG)")
    return parser.parse_args(argv)


def job_overrides(job: Path) -> dict[str, str]:
    lines = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
    return dict(line.split("=", 1) for line in lines if "=" in line)


def find_jobs(sweep: Path) -> list[Path]:
    jobs = [path.parent.parent for path in sweep.glob("*/checkpoints/" + LAST)]
    if not jobs:
        raise SystemExit(
            f"{sweep}: no finished jobs (*/checkpoints/{LAST}); is it the directory of an nmt-train -m run?"
        )
    return sorted(jobs, key=lambda job: int(job.name) if job.name.isdigit() else job.name)


def settings(jobs: list[Path]) -> dict[Path, str]:
    """Each job's label: the overrides, train.seed aside, whose values differ between the jobs."""
    overrides = {job: job_overrides(job) for job in jobs}
    keys = sorted({key for values in overrides.values() for key in values} - {SEED_KEY})
    varying = [key for key in keys if len({values.get(key) for values in overrides.values()}) > 1]
    return {
        job: " ".join(f"{key}={values.get(key, '-')}" for key in varying) or "(one setting)"
        for job, values in overrides.items()
    }


def plot(rows: list[dict], curves: dict[str, list[tuple]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(row["setting"] for row in rows))
    colours = {label: plt.get_cmap("tab10")(i % 10) for i, label in enumerate(labels)}
    figure, axes = plt.subplots(figsize=(8, 5))
    named = set()
    for row in rows:
        points = curves[row["job"]]
        label = None if row["setting"] in named else row["setting"]  # one legend entry per setting
        named.add(row["setting"])
        axes.plot([p[1] for p in points], [p[4] for p in points], color=colours[row["setting"]], label=label)
    axes.set_xlabel("minutes of training")
    axes.set_ylabel("validation BLEU (greedy)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    datasets.disable_progress_bars()  # one bar per split and map drowns the table
    jobs = find_jobs(args.sweep)
    labels = settings(jobs)
    rows, curves = [], {}
    for job in jobs:
        progress = Checkpoint.load(job / "checkpoints" / LAST).progress
        scored_step = Checkpoint.load(resolve_checkpoint(job)).progress.step
        curves[str(job)] = curve(job)
        ppl_at_step = {point[0]: point[3] for point in curves[str(job)]}
        row = {
            "job": str(job),
            "setting": labels[job],
            "seed": job_overrides(job).get(SEED_KEY, "-"),
            "steps": progress.step,
            "train_minutes": round(progress.train_seconds / 60, 1),
            "val_ppl": round(ppl_at_step[scored_step], 2),
            "val_bleu": score(job, "validation", args.beam),
            "test_bleu": score(job, "test", args.beam),
        }
        rows.append(row)
        print(
            f"{job.name}: {row['setting']} seed {row['seed']}: validation {row['val_bleu']:.2f}, test {row['test_bleu']:.2f}",
            flush=True,
        )
    lines = [
        f"{args.sweep}: best checkpoint of each job, beam {args.beam}, cased sacrebleu BLEU, mean ± sd over the seeds",
        "",
        "| setting | seeds | updates | minutes of training | validation ppl | validation BLEU | test BLEU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label in dict.fromkeys(row["setting"] for row in rows):
        group = [row for row in rows if row["setting"] == label]
        lines.append(
            f"| {label} | {len(group)} | {mean_sd([r['steps'] for r in group], 0)} "
            f"| {mean_sd([r['train_minutes'] for r in group], 1)} | {mean_sd([r['val_ppl'] for r in group])} "
            f"| {mean_sd([r['val_bleu'] for r in group])} | {mean_sd([r['test_bleu'] for r in group])} |"
        )
    table = "\n".join(lines)
    (args.sweep / "sweep.md").write_text(table + "\n")
    (args.sweep / "sweep.json").write_text(json.dumps({"beam": args.beam, "jobs": rows}, indent=2) + "\n")
    if args.plot:
        plot(rows, curves, args.plot)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
