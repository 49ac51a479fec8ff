"""A large corpus through OpenNMT-py and through nmt, side by side in one run: the time from the
command's start to the first training step, and memory, with the reference model.

    python scripts/corpus_peers.py CORPUS [--steps 100] [--peers ../shared/peers] [--out DIR]

CORPUS is a directory of text files (`train.de`, `train.en`, `val.*`, as scripts/make_corpus.py
writes). Run in this order, one after the other (2 cores: nothing else runs meanwhile):
1. OpenNMT-py's pipeline: SentencePiece trained on a sample of 1,000,000 sentences of the corpus
   (joint unigram, 8,000 pieces: what nmt trains), `onmt_build_vocab -n_sample -1` with its
   `sentencepiece` transform on 2 threads, then `onmt_train` (OpenNMT-py 3.5.1, the peers' config
   of the reference model with the transform applied on the fly) to `--steps`;
2. `nmt-train model=reference train=peers` on the same corpus to `--steps`, with an empty store
   cache, then once more with the store prepared.
Each command's time to its first step (OpenNMT-py: its `Step 1/` line; nmt: `step 1 epoch`) and
the peak resident memory of each of its processes (scripts/corpus_scale.py's sampler). The
OpenNMT-py environment is ../shared/peers' (`bash ../shared/peers/setup.sh` first). Writes
`OUT/corpus_peers.md` and `.json`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from corpus_scale import TreeSampler  # scripts/

ROOT = Path(__file__).resolve().parent.parent
ONMT_STEP = re.compile(r"\[(?P<time>[\d\-: ,]+) INFO\] Step\s+(?P<step>\d+)/")
NMT_STEP = re.compile(r"^\[(?P<time>[\d\-: ,]+)\].* - step (?P<step>\d+) epoch")


@dataclass
class Stage:
    label: str
    command: str
    wall_seconds: float
    first_step_seconds: float | None = None  # from the command's start
    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    exit_code: int = 0


def run(label: str, command: list[str], log: Path, step_line: re.Pattern | None, env: dict | None = None) -> Stage:
    started, wall_start = time.monotonic(), time.time()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or os.environ.copy())
        sampler = TreeSampler(process.pid)
        code = process.wait()
    stage = Stage(label, " ".join(command), time.monotonic() - started, exit_code=code)
    stage.peak_rss_mib = {kind: mib for kind, mib in sampler.stop().items() if kind != "gone"}
    if step_line is not None:
        for line in log.read_text(errors="replace").splitlines():
            match = step_line.search(line)
            if match:
                moment = datetime.datetime.strptime(match["time"].strip(), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                stage.first_step_seconds = moment - wall_start
                break
    print(json.dumps(asdict(stage)), file=sys.stderr, flush=True)
    return stage


def onmt_config(peers: Path, work: Path, corpus: Path, spm: Path, steps: int) -> Path:
    """The peers' OpenNMT-py config of the reference model, on CORPUS with SentencePiece applied
    on the fly (the peers' own runs read pre-tokenized pieces)."""
    text = (peers / "configs" / "onmt_lstm.yaml").read_text()
    text = text.replace("@ROOT@/onmt/", f"{work}/").replace("@WORK@", str(work))
    data = f"""data:
    corpus_1:
        path_src: {corpus}/train.de
        path_tgt: {corpus}/train.en
        transforms: [sentencepiece, filtertoolong]
    valid:
        path_src: {corpus}/val.de
        path_tgt: {corpus}/val.en
        transforms: [sentencepiece]
src_subword_model: {spm}
tgt_subword_model: {spm}
"""
    text = re.sub(r"^data:\n(?:    .*\n)+", data, text, flags=re.MULTILINE)
    text = re.sub(r"^report_every: \d+", "report_every: 1", text, flags=re.MULTILINE)
    text = re.sub(r"^train_steps: \d+", f"train_steps: {steps}", text, flags=re.MULTILINE)
    text = re.sub(r"^valid_steps: \d+", f"valid_steps: {steps * 10}", text, flags=re.MULTILINE)
    path = work / "config.yaml"
    path.write_text(text)
    return path


SPM_TRAIN = """
import sys, sentencepiece as spm
spm.SentencePieceTrainer.train(
    input=sys.argv[1], model_prefix=sys.argv[2], vocab_size=8000, model_type="unigram",
    character_coverage=1.0, input_sentence_size=1000000, shuffle_input_sentence=True, num_threads=2,
)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--peers", type=Path, default=ROOT.parent / "shared" / "peers")
    parser.add_argument("--peers-root", type=Path, default=Path(os.environ.get("PEERS_ROOT", "/tmp/nmt-peers")))
    parser.add_argument("--out", type=Path, default=Path("corpus_peers"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.corpus.resolve()
    onmt_bin, tools = args.peers_root / "venv-onmt" / "bin", args.peers_root / "venv-tools" / "bin" / "python"
    stages = []
    with tempfile.TemporaryDirectory(prefix="nmt-corpus-peers-", dir=args.out) as scratch:
        work = Path(scratch)
        joint = work / "train.joint"
        with open(joint, "wb") as out:  # SentencePiece reads one file: both sides
            for side in ("de", "en"):
                out.write((corpus / f"train.{side}").read_bytes())
        spm_code = ["-c", SPM_TRAIN, str(joint), str(work / "spm")]
        stages.append(run("OpenNMT-py: SentencePiece (1M sentences)", [str(tools), *spm_code], work / "spm.log", None))
        joint.unlink()
        config = onmt_config(args.peers, work, corpus, work / "spm.model", args.steps)
        env = {**os.environ, "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
        vocab = [str(onmt_bin / "onmt_build_vocab"), "-config", str(config), "-n_sample", "-1", "-num_threads", "2"]
        stages.append(run("OpenNMT-py: onmt_build_vocab", vocab, args.out / "onmt_vocab.log", None, env))
        train = [str(onmt_bin / "onmt_train"), "-config", str(config)]
        stages.append(
            run(f"OpenNMT-py: onmt_train to step {args.steps}", train, args.out / "onmt_train.log", ONMT_STEP, env)
        )
        nmt = [
            str(Path(sys.executable).parent / "nmt-train"),
            "model=reference",
            "train=peers",
            f"data.source={corpus}",
            "data.train_limit=0",
            f"data.cache_dir={work / 'nmt-cache'}",
            f"train.max_steps={args.steps}",
            "train.max_minutes=0",
            "train.log_every=1",
        ]
        for label in ("nmt: prepare and train", "nmt: again, store prepared"):
            run_dir = work / f"nmt-run-{len(stages)}"
            log = args.out / f"nmt_{len(stages)}.log"
            stages.append(run(f"{label} to step {args.steps}", [*nmt, f"hydra.run.dir={run_dir}"], log, NMT_STEP))
    lines = ["| command | first step (s) | wall (s) | peak RSS per process (MiB) |", "| --- | ---: | ---: | --- |"]
    for stage in stages:
        first = f"{stage.first_step_seconds:.1f}" if stage.first_step_seconds is not None else "-"
        memory = ", ".join(f"{kind} {mib:.0f}" for kind, mib in sorted(stage.peak_rss_mib.items()))
        lines.append(f"| {stage.label} | {first} | {stage.wall_seconds:.1f} | {memory} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "corpus_peers.md").write_text(table + "\n")
    (args.out / "corpus_peers.json").write_text(json.dumps([asdict(s) for s in stages], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
