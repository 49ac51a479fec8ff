#!/usr/bin/env python
"""Long-range dependencies: which cells remember a symbol seen L steps earlier?

The task: a sequence starts with one of K symbols, then L distractor tokens follow; after the
last one, the network must name the first symbol from its final hidden state (chance: 1/K).
Each cell kind (nmt.model.cells) is trained on fresh random sequences for several lags L, and its
accuracy on held-out sequences is reported as a markdown table, a JSON file and a PNG plot.

    python scripts/long_range.py --out results/long_range [--lags 5 10 20 50 100] [--steps 1500]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from nmt.model.cells import CELL_KINDS, set_forget_bias
from nmt.model.rnn import RecurrentStack

log = logging.getLogger("long_range")


class Recall(nn.Module):
    def __init__(self, kind: str, vocab_size: int, num_symbols: int, hidden_size: int, forget_bias: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 16)
        self.rnn = RecurrentStack(kind, 16, hidden_size)
        for cell in self.rnn.cells:
            set_forget_bias(cell, forget_bias)
        self.classify = nn.Linear(hidden_size, num_symbols)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (batch, lag + 1) -> logits (batch, num_symbols), from the final hidden state."""
        return self.classify(self.rnn(self.embed(tokens)).h[-1])


def batch(lag: int, size: int, num_symbols: int, num_distractors: int, generator: torch.Generator):
    """Symbols are ids 0..K-1, distractors K..K+D-1; the answer is the first token."""
    first = torch.randint(0, num_symbols, (size, 1), generator=generator)
    rest = torch.randint(num_symbols, num_symbols + num_distractors, (size, lag), generator=generator)
    return torch.cat([first, rest], dim=1), first.squeeze(1)


def run(kind: str, lag: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model = Recall(kind, args.symbols + args.distractors, args.symbols, args.hidden, args.forget_bias)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, fused=True)
    test_tokens, test_answers = batch(lag, 1000, args.symbols, args.distractors, torch.Generator().manual_seed(999))
    started, accuracy, step = time.perf_counter(), 0.0, 0
    for step in range(1, args.steps + 1):
        tokens, answers = batch(lag, args.batch_size, args.symbols, args.distractors, generator)
        loss = nn.functional.cross_entropy(model(tokens), answers)
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                accuracy = (model(test_tokens).argmax(-1) == test_answers).float().mean().item()
            if accuracy >= 0.99:
                break  # solved; more steps would change nothing
    seconds = time.perf_counter() - started
    log.info("%-8s lag %4d: accuracy %.3f after %d steps (%.0f s)", kind, lag, accuracy, step, seconds)
    return {"kind": kind, "lag": lag, "accuracy": accuracy, "steps": step, "seconds": seconds}


def plot(results: list[dict], chance: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for kind in dict.fromkeys(r["kind"] for r in results):
        rows = [r for r in results if r["kind"] == kind]
        axes.plot([r["lag"] for r in rows], [r["accuracy"] for r in rows], marker="o", label=kind)
    axes.axhline(chance, color="grey", linestyle="--", label="chance")
    axes.set_xscale("log")
    axes.set_xlabel("lag L (distractors between the symbol and the question)")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1.02)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/long_range"))
    parser.add_argument("--kinds", nargs="+", default=list(CELL_KINDS), choices=CELL_KINDS)
    parser.add_argument("--lags", nargs="+", type=int, default=[5, 10, 20, 50, 100, 200])
    parser.add_argument("--steps", type=int, default=2000, help="training steps at most, per kind and lag")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--symbols", type=int, default=4)
    parser.add_argument("--distractors", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--forget-bias", type=float, default=3.0, help="initial forget (gru: update) gate bias")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run(kind, lag, args) for kind in args.kinds for lag in args.lags]
    chance = 1.0 / args.symbols
    (args.out / "long_range.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2) + "\n"
    )
    plot(results, chance, args.out / "long_range.png")
    print(f"| kind | {' | '.join(f'L={lag}' for lag in args.lags)} |")
    print(f"| --- |{' ---: |' * len(args.lags)}")
    for kind in args.kinds:
        row = {r["lag"]: r["accuracy"] for r in results if r["kind"] == kind}
        print(f"| {kind} | {' | '.join(f'{row[lag]:.2f}' for lag in args.lags)} |")
    print(f"\nchance = {chance:.2f}; {args.out / 'long_range.png'}")


if __name__ == "__main__":
    main()
