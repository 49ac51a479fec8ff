#!/usr/bin/env python
"""Training speed of every cell kind against torch.nn.LSTM, on the same encoder shape, in one run.

    python scripts/cell_speed.py [--batch 64] [--length 25] [--rounds 7]

Each variant runs forward + backward over the same padded batch (lengths spread over the batch);
variants take turns round by round, so machine noise hits all of them alike, and the table gives
each one's median tokens/s as a ratio to torch.nn.LSTM's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from nmt.model.rnn import RecurrentStack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=25)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=5, help="forward+backward passes per round")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.length, args.input)
    lengths = torch.randint(args.length // 2, args.length + 1, (args.batch,))
    lengths[0] = args.length
    tokens = int(lengths.sum())

    baseline = nn.LSTM(args.input, args.hidden, args.layers, batch_first=True, bidirectional=True)

    def run_baseline() -> None:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = baseline(packed)
        nn.utils.rnn.pad_packed_sequence(out, batch_first=True)[0].sum().backward()

    def stack_runner(kind: str, explicit: bool):
        stack = RecurrentStack(kind, args.input, args.hidden, args.layers, bidirectional=True)
        return lambda: stack(x, lengths, explicit=explicit).outputs.sum().backward()

    variants = {"torch.nn.LSTM": run_baseline}
    for kind, explicit in [
        ("lstm", False),
        ("lstm", True),
        ("peephole", True),
        ("cifg", True),
        ("gru", False),
        ("gru", True),
        ("rnn", False),
        ("rnn", True),
    ]:
        variants[f"{kind} ({'explicit' if explicit else 'fused'})"] = stack_runner(kind, explicit)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for run in variants.values():
        run()  # warm-up
    for _ in range(args.rounds):
        for name, run in variants.items():
            started = time.perf_counter()
            for _ in range(args.iterations):
                run()
            seconds[name].append((time.perf_counter() - started) / args.iterations)
    base = statistics.median(seconds["torch.nn.LSTM"])
    print(
        f"encoder shape: {args.layers} bidirectional layers of {args.hidden}, input {args.input}, "
        f"batch {args.batch} x up to {args.length} steps ({tokens} tokens), {torch.get_num_threads()} threads, "
        f"median of {args.rounds} rounds\n"
    )
    print("| cell (path) | tokens/s relative to torch.nn.LSTM |")
    print("| --- | ---: |")
    for name in variants:
        print(f"| {name} | {base / statistics.median(seconds[name]):.2f} |")


if __name__ == "__main__":
    main()
