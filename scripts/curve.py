#!/usr/bin/env python
"""Print a run's validation curve (from its TensorBoard events) as a markdown table.

    python scripts/curve.py RUN_DIR [RUN_DIR ...]

Columns: step, minutes of training, validation loss, perplexity and BLEU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def curve(run_dir: Path) -> list[tuple[int, float, float, float, float]]:
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    if "valid/bleu" not in tags:
        raise SystemExit(f"{run_dir}: no validation scalars in {run_dir / 'tensorboard'}")
    loss = {e.step: e.value for e in events.Scalars("valid/loss")}
    ppl = {e.step: e.value for e in events.Scalars("valid/ppl")}
    if "valid/train_minutes" in tags:
        minutes = {e.step: e.value for e in events.Scalars("valid/train_minutes")}
    else:  # older runs: wall-clock minutes since the first event
        start = min(e.wall_time for tag in tags for e in events.Scalars(tag))
        minutes = {e.step: (e.wall_time - start) / 60 for e in events.Scalars("valid/bleu")}
    return [(e.step, minutes[e.step], loss[e.step], ppl[e.step], e.value) for e in events.Scalars("valid/bleu")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    for run_dir in args.runs:
        print(f"\n{run_dir}\n")
        print("| step | minutes | valid loss | valid ppl | valid BLEU |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for step, minutes, loss, ppl, bleu in curve(run_dir):
            print(f"| {step} | {minutes:.1f} | {loss:.3f} | {ppl:.2f} | {bleu:.2f} |")


if __name__ == "__main__":
    main()
