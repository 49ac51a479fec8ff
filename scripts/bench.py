"""`make bench`: one run, one table — how fast this toolkit trains and translates the reference
model on this machine, against the machine's own ceiling, an older revision and the peers.

Rows (each measured in this run, never copied from an earlier one):
- the machine: fp32 and bf16 matrix-product peaks (2048 x 2048, torch's threads);
- training: target tokens/s of `model=reference` (2-layer biLSTM 256/dir encoder, 2-layer LSTM
  512 decoder, Bahdanau attention, input feeding, joint SentencePiece 8k) over a steady window of
  steps (the peers' protocol: logging intervals between two steps, start-up left out), with the
  process's peak resident memory, in fp32 and bf16, and the share of the matmul peak reached;
- translation (with `--run RUN`, a trained reference model): the whole `nmt-translate` command on
  the 1,000 test2016 sentences, greedy and beam 5, fp32 / bf16 / int8, sentences/s and BLEU;
- `--baseline REV`: the same training and translation rows for a git revision (its own worktree), run alternately
  with ours, so a change's speed-up is a ratio from one run;
- `--also 'OVERRIDES'`: the working tree once more with these training overrides (e.g.
  `train.processes=1`), as one more alternated arm;
- `--independent`: one more arm of as many one-thread trainings as cores, side by side, each on
  its share of the batch size and exchanging nothing: their summed rate is the most that as many
  ranks could reach if the gradient exchange and the ranks' waiting for each other cost nothing
  (each counted until the first of them reaches the window's end);
- `--peers`: ../shared/peers' JoeyNMT and OpenNMT-py throughput checks, in the same run.

Writes BENCH_DIR/bench.md and bench.json (default runs/bench/<time>/). Run nothing else heavy
meanwhile: the figures are wall-clock on a shared machine.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from process_memory import PeakSampler  # scripts/

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT.parent / "shared" / "peers"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "multi30k"
log = logging.getLogger("bench")

# The reference model, spelled with keys every revision knows (model=reference is an alias).
REFERENCE = [
    "model=lstm_attention",
    "model.embed_dim=256",
    "model.encoder.hidden_size=256",
    "model.encoder.num_layers=2",
    "model.encoder.bidirectional=true",
    "model.decoder.hidden_size=512",
    "model.decoder.num_layers=2",
    "model.attention=bahdanau",
    "model.input_feeding=true",
    "model.dropout=0.3",
    "data.tokenizer.vocab_size=8000",
]
# Padded tokens (batch x longer side) that give about 2,000 real target tokens per batch, the
# peers' batches (describe_model prints the real count).
REFERENCE_BATCH_TOKENS = 2400
LOG_LINE = re.compile(
    r"^\[(?P<time>[\d\-: ,]+)\]\[nmt\.train(?:ing\.trainer)?\]\[INFO\] - step (?P<step>\d+) .*?(?P<rate>[\d.]+) target tokens/s"
)


@dataclass
class TrainResult:
    label: str
    tokens_per_s: float
    peak_rss_gib: float
    steps: tuple[int, int]
    real_tgt_tokens_per_batch: float | None = None
    matmul_share: float | None = None  # of the peak of the precision used


@dataclass
class TranslateResult:
    label: str
    seconds: float
    sentences_per_s: float
    bleu: float | None
    peak_rss_mib: float


@dataclass
class Bench:
    machine: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    train: list[TrainResult] = field(default_factory=list)
    translate: list[TranslateResult] = field(default_factory=list)
    peers: dict = field(default_factory=dict)


# --- the machine ---------------------------------------------------------------------------------
def matmul_peaks(size: int = 2048, seconds: float = 3.0) -> dict[str, float]:
    """GFLOP/s of one size x size product, fp32 and bf16, best of repeated timings. A dtype the
    CPU only emulates (bf16 without AVX-512 BF16 / AMX) is measured at 512 (2048 would take
    minutes); `*_size` says which size each figure is for."""
    import torch

    peaks: dict[str, float] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        probe = torch.randn(512, 512, dtype=dtype)
        started = time.perf_counter()
        probe @ probe
        n = size if time.perf_counter() - started < 0.05 else 512
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b  # warm-up: thread pool and kernel selection
        best, deadline = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        peaks[name] = 2 * n**3 / best / 1e9
        peaks[f"{name}_size"] = n
    return peaks


# --- the model's cost ----------------------------------------------------------------------------
def flops_per_target_token(
    src_per_tgt: float,
    src_len: float,
    vocab: int = 8000,
    embed: int = 256,
    enc_hidden: int = 256,
    enc_layers: int = 2,
    dec_hidden: int = 512,
    dec_layers: int = 2,
    training: bool = True,
) -> float:
    """Matrix-product FLOPs (multiply + add = 2) per target token of the reference model;
    training counts forward + backward as 3 forwards. `src_len`: mean source length (attention
    reads every source position at every target step)."""
    encoder = 0.0
    size_in = embed
    for _ in range(enc_layers):
        encoder += 2 * (2 * (size_in + enc_hidden) * 4 * enc_hidden)  # two directions
        size_in = 2 * enc_hidden
    memory = 2 * enc_hidden
    decoder = 2 * (embed + dec_hidden + dec_hidden) * 4 * dec_hidden  # [y; feed] and h
    decoder += (dec_layers - 1) * 2 * (2 * dec_hidden) * 4 * dec_hidden
    attention = 2 * dec_hidden * dec_hidden + src_len * 2 * (dec_hidden + memory)  # query, scores, context
    keys = 2 * memory * dec_hidden  # per source token
    combine = 2 * (dec_hidden + memory) * dec_hidden
    output = 2 * dec_hidden * vocab
    forward = (encoder + keys) * src_per_tgt + decoder + attention + combine + output
    return forward * (3 if training else 1)


def describe_model(data: str, batch_tokens: int, batching: str = "length") -> dict:
    """Parameters, mean lengths, real target tokens per batch and FLOPs of the reference model
    on this corpus (tokenizer trained here as the training runs train theirs)."""
    import torch

    from nmt.config import DataConfig, ModelConfig
    from nmt.data.batching import make_batcher
    from nmt.data.store import prepare_store
    from nmt.model.seq2seq import build_model, count_parameters

    store = prepare_store(DataConfig(source=data), workers=torch.get_num_threads())
    tokenizer = store.tokenizer
    src = store.train.src.lengths().astype(int) + 1  # + eos
    tgt = store.train.tgt.lengths().astype(int) + 1
    batches = make_batcher(batching, src - 1, tgt - 1, batch_tokens, seed=1234).epoch_batches(0)
    real_per_batch = int(tgt.sum()) / len(batches)
    src_len, src_per_tgt = float(src.mean()), float(src.sum() / tgt.sum())
    model = build_model(ModelConfig(), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    vocab = tokenizer.tgt_vocab_size
    return {
        "parameters": count_parameters(model),
        "mean_src_len": src_len,
        "src_tokens_per_tgt_token": src_per_tgt,
        "batch_tokens": batch_tokens,
        "batching": batching,
        "real_tgt_tokens_per_batch": real_per_batch,
        "train_mflops_per_tgt_token": flops_per_target_token(src_per_tgt, src_len, vocab) / 1e6,
        "translate_mflops_per_hyp_token": flops_per_target_token(0.0, src_len, vocab, training=False) / 1e6,
    }


# --- training --------------------------------------------------------------------------------------
@dataclass
class SideBySide:
    """Trainings run at once: the moment the first of them logged its window's last step. After
    it, the others would train on an emptier machine, faster, so their rates stop there."""

    first_done: float = math.inf

    def finish(self, moment: float) -> None:
        self.first_done = min(self.first_done, moment)


def run_training(
    tree: Path,
    label: str,
    overrides: list[str],
    window: tuple[int, int],
    data: str,
    python: str,
    side_by_side: SideBySide | None = None,
) -> TrainResult:
    """Train in a subprocess until the window's last step is logged (or, side by side with
    others, until one of them logged theirs), then stop it. Tokens/s: sum of (logged rate x
    interval) / sum of intervals, over the logging intervals inside the window (and before the
    first side-by-side training finished), timed by the log's own timestamps (as
    ../shared/peers/parse_logs.py does)."""
    together = side_by_side or SideBySide()
    first, last = window
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as run_dir:
        command = [
            python,
            "-c",
            f"from {entry_module(tree, 'train')} import main; main()",
            *config_path(tree),
            *REFERENCE,
            *overrides,
            f"data.source={data}",
            f"train.max_steps={last + 1}",
            "train.max_epochs=0",
            "train.log_every=25",
            "train.validate_every=0",
            "train.save_every=0",
            f"hydra.run.dir={run_dir}",
        ]
        env = {**os.environ, "PYTHONPATH": str(tree), "TQDM_DISABLE": "1"}
        # Its own session: the kill below must reach every training process it starts.
        process = subprocess.Popen(
            command,
            cwd=tree,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        stamps: list[tuple[int, float, float]] = []
        memory = PeakSampler(process.pid)  # the trainer and any helpers it forks
        assert process.stdout is not None
        output = []
        for line in process.stdout:
            output.append(line)
            match = LOG_LINE.match(line)
            if not match:
                continue
            moment = datetime.datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            stamps.append((int(match["step"]), moment, float(match["rate"])))
            if int(match["step"]) >= last:
                together.finish(moment)
            if moment >= together.first_done:
                break
        peak_kib = memory.stop()
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    pairs = [
        (start, end)
        for start, end in itertools.pairwise(stamps)
        if start[0] >= first and end[0] <= last and end[1] <= together.first_done
    ]
    if not pairs:
        raise RuntimeError(f"{label}: no log lines in steps {first}-{last}; its output ends:\n{''.join(output[-20:])}")
    seconds = sum(end[1] - start[1] for start, end in pairs)
    tokens = sum(end[2] * (end[1] - start[1]) for start, end in pairs)  # the rate logged at an interval's end
    return TrainResult(label, tokens / seconds, peak_kib / 2**20, window)


def run_independent(
    label: str, overrides: list[str], batch_tokens: int, window: tuple[int, int], data: str, python: str, processes: int
) -> TrainResult:
    """`processes` one-thread trainings of the working tree at once, each on batches of
    1/processes of `batch_tokens` and with no gradient exchange: their summed target tokens/s (each
    over the steps that cover the window's batches) and summed peak memory."""
    share = [o for o in overrides if not o.startswith("train.batch_tokens=")]  # Hydra refuses a key twice
    share += [f"train.batch_tokens={batch_tokens // processes}", "train.processes=1", "train.num_threads=1"]
    steps = (window[0] * processes, window[1] * processes)

    together = SideBySide()

    def train(n: int) -> TrainResult:
        return run_training(ROOT, f"{label} {n}", [*share, f"train.seed={n + 1}"], steps, data, python, together)

    with ThreadPoolExecutor(processes) as pool:
        results = list(pool.map(train, range(processes)))
    return TrainResult(label, sum(r.tokens_per_s for r in results), sum(r.peak_rss_gib for r in results), window)


# --- translation -----------------------------------------------------------------------------------
def run_translation(
    tree: Path, run: Path, label: str, options: list[str], source: Path, reference: Path, python: str
) -> TranslateResult:
    """The whole `nmt-translate` command of the tree (start-up and model loading included), as the
    peers time theirs."""
    with tempfile.TemporaryDirectory(prefix="nmt-bench-") as tmp:
        output = Path(tmp) / "hyp"
        command = [
            python,
            "-m",
            entry_module(tree, "translate"),
            str(run),
            "-i",
            str(source),
            "-o",
            str(output),
            "--no-progress",
            *options,
        ]
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(tree)}
        result = subprocess.run(
            ["/usr/bin/time", "-f", "%M", *command], cwd=tree, env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"{label}: nmt-translate failed:\n{result.stderr[-2000:]}")
        peak_kib = int(result.stderr.strip().splitlines()[-1])
        hypotheses = output.read_text(encoding="utf-8").splitlines()
    references = reference.read_text(encoding="utf-8").splitlines()
    import sacrebleu

    score = sacrebleu.corpus_bleu(hypotheses, [references]).score
    return TranslateResult(label, seconds, len(hypotheses) / seconds, score, peak_kib / 1024)


# --- peers ------------------------------------------------------------------------------------------
def run_peers() -> dict[str, float]:
    """../shared/peers' quick throughput checks (installs their venvs first when missing)."""
    rates = {}
    subprocess.run(["bash", str(PEERS / "setup.sh")], check=True, cwd=PEERS)
    subprocess.run(["bash", str(PEERS / "prepare.sh")], check=True, cwd=PEERS)
    for name in ("joey", "onmt"):
        result = subprocess.run(
            ["bash", str(PEERS / f"run_{name}.sh"), "throughput"], cwd=PEERS, capture_output=True, text=True
        )
        match = re.search(rf"{name} train_tok_s=([\d.]+)", result.stdout + result.stderr)
        if result.returncode != 0 or not match:
            raise RuntimeError(f"peer {name} failed:\n{(result.stdout + result.stderr)[-2000:]}")
        rates[name] = float(match.group(1))
    return rates


def worktree(revision: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="nmt-baseline-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), revision], cwd=ROOT, check=True, capture_output=True
    )
    return path


def entry_module(tree: Path, command: str) -> str:
    """The module that runs nmt-train / nmt-translate in this revision's layout."""
    if (tree / "nmt" / "cli").is_dir():
        return f"nmt.cli.{command}"
    return f"nmt.{command}"


def config_path(tree: Path) -> list[str]:
    """A revision whose configs ship as the package nmt.conf finds them through the installed
    package, i.e. this checkout's conf/: point Hydra at the revision's own."""
    if (tree / "nmt" / "cli").is_dir() and tree != ROOT:
        return ["--config-path", str(tree / "conf")]
    return []


def supports_precision(tree: Path) -> bool:
    return "precision" in (tree / "nmt" / "config.py").read_text()


def supports_batching(tree: Path) -> bool:
    return "batching" in (tree / "nmt" / "config.py").read_text()


# --- report -----------------------------------------------------------------------------------------
def markdown(bench: Bench) -> str:
    m = bench.machine
    lines = [
        f"machine: {m['cores']} cores, {m['cpu_capability']}, native bf16: {m['native_bf16']}; torch {m['torch']}, "
        f"{m['threads']} threads; matmul peak {m['peak_gflops']['fp32']:.0f} GFLOP/s fp32 "
        f"({m['peak_gflops']['fp32_size']}^3), {m['peak_gflops']['bf16']:.1f} GFLOP/s bf16 ({m['peak_gflops']['bf16_size']}^3)",
        f"reference model: {bench.model['parameters']:,} parameters; {bench.model['train_mflops_per_tgt_token']:.1f} "
        f"MFLOP per target token to train, {bench.model['translate_mflops_per_hyp_token']:.1f} to translate; "
        f"batches of {bench.model['real_tgt_tokens_per_batch']:,.0f} real target tokens (train.batch_tokens="
        f"{bench.model['batch_tokens']}, train.batching={bench.model.get('batching', 'length')})",
    ]
    if bench.train or bench.peers:
        lines += [
            "",
            "| training (reference model) | target tok/s | vs first row | peak RSS | share of matmul peak |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
    base = bench.train[0].tokens_per_s if bench.train else 1.0
    for row in bench.train:
        share = f"{100 * row.matmul_share:.1f} %" if row.matmul_share is not None else ""
        lines.append(
            f"| {row.label} | {row.tokens_per_s:,.0f} | {row.tokens_per_s / base:.2f} | {row.peak_rss_gib:.2f} GiB | {share} |"
        )
    for name, rate in bench.peers.items():
        lines.append(f"| peer: {name} (steps 50-300) | {rate:,.0f} | {rate / base:.2f} | | |")
    if bench.translate:
        lines += [
            "",
            "| translate 1,000 test sentences (whole command) | seconds | sentences/s | BLEU | peak RSS |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for row in bench.translate:
            lines.append(
                f"| {row.label} | {row.seconds:.2f} | {row.sentences_per_s:.1f} | {row.bleu:.2f} | {row.peak_rss_mib:.0f} MiB |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=os.environ.get("NMT_DATA", str(DEFAULT_DATA / "hub")), help="Multi30k source")
    parser.add_argument("--raw", default=str(DEFAULT_DATA / "raw"), help="directory with test_2016_flickr.{de,en}.gz")
    parser.add_argument("--window", type=int, nargs=2, default=(50, 200), metavar=("FIRST", "LAST"))
    parser.add_argument("--batch-tokens", type=int, default=None, help="train.batch_tokens (default: the preset's)")
    parser.add_argument(
        "--batching",
        choices=["length", "source", "random"],
        default="length",
        help="train.batching (a baseline revision without the option batches by length)",
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16"],
        help="default: fp32, and bf16 where the CPU has it natively",
    )
    parser.add_argument("--baseline", metavar="REV", help="also measure this git revision, alternating with ours")
    parser.add_argument("--rounds", type=int, default=1, help="alternations of ours and the baseline")
    parser.add_argument("--run", type=Path, help="a trained reference run: also time translation")
    parser.add_argument("--translate", nargs="+", help="default: greedy, beam5, their int8 and (where native) bf16")
    parser.add_argument("--peers", action="store_true", help="run ../shared/peers' throughput checks too")
    parser.add_argument("--no-train", action="store_true", help="translation rows only")
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="also train the working tree with these space-separated overrides, e.g. 'train.processes=1'",
    )
    parser.add_argument(
        "--independent",
        action="store_true",
        help="also one-thread trainings side by side, one per core on its share of the batch, exchanging nothing",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    args = parser.parse_args()

    import torch

    from nmt.model.device import native_bf16

    bf16 = native_bf16(torch.device("cpu"))
    args.precisions = args.precisions or (["fp32", "bf16"] if bf16 else ["fp32"])
    args.translate = args.translate or (
        ["greedy", "beam5", "greedy-int8", "beam5-int8"] + (["greedy-bf16", "beam5-bf16"] if bf16 else [])
    )
    python = sys.executable
    bench = Bench()
    bench.machine = {
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bf16,
        "peak_gflops": matmul_peaks(),
    }
    log.info("matmul peak: %s", bench.machine["peak_gflops"])
    batch_tokens = args.batch_tokens or REFERENCE_BATCH_TOKENS
    bench.model = describe_model(args.data, batch_tokens, args.batching)
    log.info("model: %s", bench.model)
    extra = [f"train.batch_tokens={batch_tokens}"]
    trees = [("ours", ROOT)]
    if args.baseline:
        trees.append((f"baseline {args.baseline}", worktree(args.baseline)))
    # (label, tree, overrides of that arm, whether it is the --independent arm)
    arms = [(name, tree, [], False) for name, tree in trees]
    arms[1:1] = [(f"ours, {also}", ROOT, also.split(), False) for also in args.also]
    cores = os.cpu_count() or 1
    if args.independent:
        label = f"ours, {cores} independent one-thread processes on 1/{cores} batches"
        arms.insert(1 + len(args.also), (label, ROOT, [], True))
    if not args.no_train:
        for _ in range(args.rounds):
            for name, tree, arm_overrides, independent in arms:
                for precision in args.precisions:
                    if precision != "fp32" and not supports_precision(tree):
                        continue
                    overrides = extra + arm_overrides
                    overrides += [f"train.precision={precision}"] if supports_precision(tree) else []
                    if args.batching != "length" and supports_batching(tree):
                        overrides.append(f"train.batching={args.batching}")
                    label, window = f"{name}, {precision}", tuple(args.window)
                    if independent:
                        result = run_independent(label, overrides, batch_tokens, window, args.data, python, cores)
                    else:
                        result = run_training(tree, label, overrides, window, args.data, python)
                    peak = bench.machine["peak_gflops"][precision] * 1e9
                    result.matmul_share = result.tokens_per_s * bench.model["train_mflops_per_tgt_token"] * 1e6 / peak
                    log.info("%s", result)
                    bench.train.append(result)
    if args.peers:
        bench.peers = run_peers()
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            source, reference = Path(tmp) / "test.de", Path(tmp) / "test.en"
            for path, lang in ((source, "de"), (reference, "en")):
                import gzip

                path.write_bytes(gzip.decompress((Path(args.raw) / f"test_2016_flickr.{lang}.gz").read_bytes()))
            settings = {
                "greedy": ["--beam", "1"],
                "beam5": ["--beam", "5"],
                "greedy-bf16": ["--beam", "1", "--precision", "bf16"],
                "beam5-bf16": ["--beam", "5", "--precision", "bf16"],
                "greedy-int8": ["--beam", "1", "--quantize", "int8"],
                "beam5-int8": ["--beam", "5", "--quantize", "int8"],
            }
            for name in args.translate:  # ours and the baseline alternately, setting by setting
                for _ in range(args.rounds):
                    for tree_name, tree in trees:
                        label = name if tree == ROOT else f"{name}, {tree_name}"
                        result = run_translation(
                            tree, args.run.resolve(), label, settings[name], source, reference, python
                        )
                        log.info("%s", result)
                        bench.translate.append(result)
    if args.baseline:  # the baseline's worktree is the bench's own: remove it
        subprocess.run(["git", "worktree", "remove", "--force", str(trees[1][1])], cwd=ROOT, capture_output=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(asdict(bench), indent=2) + "\n")
    table = markdown(bench)
    (args.out / "bench.md").write_text(table)
    sys.stdout.write(table)
    log.info("wrote %s/bench.{md,json}", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
