"""How the cost grows (issue 5): four measurements, four PNGs under --out (default docs/), and a
JSON of the numbers.

1. training target tokens/s of the reference model against batch size (target tokens per batch,
   sentences of 15 pieces) and
2. against sentence length (batches of ~2,000 target tokens, sentences of 5 ... 80 pieces):
   random ids, so the shapes alone decide; one optimizer step each, after warm-up steps;
3. translation time against the number of sentences (the test set repeated; whole
   `nmt-translate` command): should be a straight line;
4. peak memory against input size (the same command on 1k ... 16k lines; the proportional set
   sizes of the command and its workers, summed): should stay flat, as input is read and
   translated in chunks.

    python scripts/scaling.py --run RUN [--precision bf16] [--skip-translate]
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RAW = ROOT.parent / "shared" / "data" / "multi30k" / "raw"
sys.path.insert(0, str(ROOT))

from process_memory import tree_pss_kib  # noqa: E402  (scripts/)

from nmt.config import ModelConfig  # noqa: E402
from nmt.model.device import autocast  # noqa: E402
from nmt.model.seq2seq import build_model  # noqa: E402
from nmt.training.loss import sequence_loss  # noqa: E402

VOCAB = 8000


def train_rate(model, optimizer, batch: int, length: int, precision: str, steps: int = 4) -> float:
    """Target tokens/s of full optimizer steps on random (batch, length) pairs."""
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(4, VOCAB, (batch, length), generator=generator)
    tgt = torch.randint(4, model.decoder.output.out_features, (batch, length + 1), generator=generator)
    lengths = torch.full((batch,), length)
    device = torch.device("cpu")

    def step() -> None:
        with autocast(precision, device):
            logits = model(src, lengths, tgt[:, :-1])
        loss, _ = sequence_loss(logits, tgt[:, 1:])
        optimizer.zero_grad()
        (loss / tgt[:, 1:].numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    step()  # warm-up: kernel selection, allocator
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * length / (time.perf_counter() - started)


def translate_seconds(run: Path, lines: list[str], options: list[str]) -> tuple[float, float]:
    """Wall seconds of the whole nmt-translate command over these lines, and its peak memory in
    MiB: the largest sum over the command and its worker processes of their proportional set
    sizes (pages they share, such as the forked workers' model, counted once), sampled."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.de"
        source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        command = [
            sys.executable,
            "-m",
            "nmt.cli.translate",
            str(run),
            "-i",
            str(source),
            "-o",
            str(Path(tmp) / "out"),
            "--no-progress",
            *options,
        ]
        started = time.perf_counter()
        log_path = Path(tmp) / "stderr"
        # stderr to a file, not a pipe: nobody reads a pipe while we poll, and a full one would stall the command.
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log_file)
        peak_kib = 0
        while process.poll() is None:
            peak_kib = max(peak_kib, tree_pss_kib(process.pid))
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(f"nmt-translate failed:\n{log_path.read_text()[-2000:]}")
        return seconds, peak_kib / 1024


def plot(x, ys: dict[str, list[float]], xlabel: str, ylabel: str, title: str, path: Path, logx=False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    for label, values in ys.items():
        axes.plot(x, values, marker="o", label=label)
    if logx:
        axes.set_xscale("log", base=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    if len(ys) > 1:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run, for the translation measurements")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-translate", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # A partial run (--skip-train / --skip-translate) keeps the other half's earlier figures.
    earlier = args.out / "scaling.json"
    results: dict = json.loads(earlier.read_text()) if earlier.exists() else {}
    results["precision"] = args.precision

    if not args.skip_train:
        torch.manual_seed(0)
        model = build_model(ModelConfig(), VOCAB, 4200).train()  # ~4,200 target pieces (docs/performance.md)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as the trainer
        budgets = [250, 500, 1000, 2000, 4000, 8000]
        by_batch = [train_rate(model, optimizer, max(1, n // 15), 15, args.precision) for n in budgets]
        lengths = [5, 10, 20, 40, 80]
        by_length = [train_rate(model, optimizer, max(1, 2000 // n), n, args.precision) for n in lengths]
        results["train_by_batch_tokens"] = dict(zip(budgets, by_batch))
        results["train_by_length"] = dict(zip(lengths, by_length))
        print(json.dumps(results, indent=1), flush=True)
        plot(
            budgets,
            {args.precision: by_batch},
            "target tokens per batch (sentences of 15)",
            "target tokens/s",
            "training speed vs batch size",
            args.out / "scaling_batch.png",
            logx=True,
        )
        plot(
            lengths,
            {args.precision: by_length},
            "sentence length (pieces), ~2,000 tokens per batch",
            "target tokens/s",
            "training speed vs sentence length",
            args.out / "scaling_length.png",
            logx=True,
        )

    if not args.skip_translate and args.run:
        test = gzip.decompress((RAW / "test_2016_flickr.de.gz").read_bytes()).decode("utf-8").splitlines()
        counts = [125, 250, 500, 1000, 2000, 4000]
        seconds = [translate_seconds(args.run, (test * 4)[:n], ["--precision", args.precision])[0] for n in counts]
        results["translate_seconds_by_sentences"] = dict(zip(counts, seconds))
        plot(
            counts,
            {"greedy": seconds},
            "sentences",
            "seconds (whole command)",
            "translation time vs input size",
            args.out / "scaling_translate.png",
        )
        sizes = [1000, 4000, 16000]
        memory = [translate_seconds(args.run, (test * 64)[:n], ["--precision", args.precision])[1] for n in sizes]
        results.pop("translate_peak_rss_mib_by_lines", None)  # the largest process's, before workers
        results["translate_peak_pss_mib_by_lines"] = dict(zip(sizes, memory))
        plot(
            sizes,
            {"greedy": memory},
            "input lines",
            "peak memory, all processes (PSS, MiB)",
            "translation memory vs input size",
            args.out / "scaling_memory.png",
            logx=True,
        )
    (args.out / "scaling.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
