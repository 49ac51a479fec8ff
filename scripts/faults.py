"""Fault injection (`make faults`): kill training with SIGKILL again and again, resume each time,
and compare the final weights with a run that was never interrupted.

    python scripts/faults.py [--kills 10] [--seed 0] [--processes 1] [--data DIR] [--out DIR]

A small deterministic config (dropout on, Adam, a save every 23 steps, a validation every 100) trains once to the
end, then again under fire: each attempt starts `nmt-train` (the first fresh, the others with
`train.resume`), waits for a moment drawn from the seed, and kills the whole process group with
SIGKILL. The moments aim at three places: inside a checkpoint write (a temporary `.last.pt.*.tmp`
is on disk), inside a validation (just after the log shows a step that validates) and anywhere in
a step (a random delay). After the kills, a last resume trains to the end. The script prints a
Markdown table of the attempts and whether the final weights are bit-identical (`torch.equal`) to
the uninterrupted run's; with `--processes 2` the largest difference is reported as well.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nmt.checkpoint import Checkpoint  # noqa: E402

STEPS = 1500  # long enough that every kill lands before the end
VALIDATE_EVERY = 100
CONFIG = [
    "train=smoke",  # a small model: 1-layer biLSTM 32, decoder 64
    "data.train_limit=2000",
    "model.dropout=0.2",
    "train.max_epochs=0",
    f"train.max_steps={STEPS}",
    "train.batch_tokens=1200",
    "train.save_every=23",
    f"train.validate_every={VALIDATE_EVERY}",
    "train.log_every=1",
    "train.valid_bleu_sentences=200",
    "train.valid_attention_plots=0",
    "train.valid_gate_plots=false",
]
STEP_LINE = re.compile(r"step (\d+) epoch")
KINDS = ("checkpoint write", "validation", "random moment")


def command(run: Path, processes: int, data: str, resume: bool) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "nmt-train"), *CONFIG, f"data.source={data}"]
    cmd += [f"train.processes={processes}", f"hydra.run.dir={run}"]
    return cmd + ([f"train.resume={run}"] if resume else [])


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def last_step(log: Path) -> int:
    steps = STEP_LINE.findall(log.read_text(errors="replace")) if log.exists() else []
    return int(steps[-1]) if steps else 0


def wait_for_target(
    process: subprocess.Popen, run: Path, log: Path, kind: str, rng: random.Random, stale: set[Path]
) -> str:
    """Wait for the moment of this kind, drawn from the seed so that the kills spread over the
    run: the k-th checkpoint write of this attempt (k in 1..4), the k-th validation (k in 1..2),
    or a delay after the first logged step; returns what was seen ('ended' if the run finished)."""
    checkpoints = run / "checkpoints"
    deadline = time.monotonic() + 600
    started_at = last_step(log)
    nth_write, nth_validation, delay = rng.randint(1, 4), rng.randint(1, 2), rng.uniform(0.5, 8.0)
    writes: set[Path] = set()
    validations: set[int] = set()
    first_step_at = None
    while process.poll() is None and time.monotonic() < deadline:
        if kind == "checkpoint write" and checkpoints.is_dir():
            writes |= set(checkpoints.glob(".*.tmp")) - stale  # a killed write's file is stale
            if len(writes) >= nth_write:
                return f"checkpoint write {nth_write} of this attempt under way"
        step = last_step(log)
        if kind == "validation" and step > started_at and step % VALIDATE_EVERY == 0:
            validations.add(step)
            if len(validations) >= nth_validation:
                time.sleep(0.05)
                return f"validation of step {step}"
        if kind == "random moment":
            if first_step_at is None and step > started_at:
                first_step_at = time.monotonic()
            if first_step_at is not None and time.monotonic() - first_step_at > delay:
                return f"{delay:.2f} s into training"
        time.sleep(0.001)
    return "ended"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--data", default=os.environ.get("NMT_DATA", str(ROOT.parent / "shared/data/multi30k/hub")))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "faults")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    out = args.out / f"processes{args.processes}"
    out.mkdir(parents=True, exist_ok=True)

    straight = out / "straight"
    if not (straight / "checkpoints" / "last.pt").exists():
        start(command(straight, args.processes, args.data, False), out / "straight.log").wait()
    run = out / "killed"
    subprocess.run(["rm", "-rf", str(run)], check=True)
    rows = []
    for attempt in range(args.kills):
        kind = KINDS[attempt % len(KINDS)]
        log = out / f"attempt{attempt}.log"
        resume = (run / "checkpoints" / "last.pt").exists()
        stale = set((run / "checkpoints").glob(".*.tmp"))
        process = start(command(run, args.processes, args.data, resume), log)
        seen = wait_for_target(process, run, log, kind, rng, stale)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        last = run / "checkpoints" / "last.pt"
        saved = Checkpoint.load(last).progress.step if last.exists() else 0
        rows.append((attempt + 1, kind, seen, last_step(log), saved))
        print(f"kill {attempt + 1}: {kind}: {seen}; last logged step {last_step(log)}, last.pt at {saved}", flush=True)
    final = start(command(run, args.processes, args.data, True), out / "final.log").wait()
    a = Checkpoint.load(straight / "checkpoints" / "last.pt")
    b = Checkpoint.load(run / "checkpoints" / "last.pt")
    identical = all(torch.equal(a.model[name], b.model[name]) for name in a.model)
    largest = max(float((a.model[name] - b.model[name]).abs().max()) for name in a.model)
    table = [
        f"SIGKILL x {args.kills}, train.processes={args.processes}, seed {args.seed}, {STEPS} steps",
        "",
        "| kill | aimed at | seen when killed | last logged step | last.pt step |",
        "| ---: | --- | --- | ---: | ---: |",
        *(f"| {n} | {kind} | {seen} | {logged} | {saved} |" for n, kind, seen, logged, saved in rows),
        "",
        f"final resume exit status {final}; steps {b.progress.step} vs {a.progress.step}; "
        f"weights bit-identical: {identical}; largest difference {largest:.3g}",
    ]
    (out / "faults.md").write_text("\n".join(table) + "\n")
    (out / "faults.json").write_text(json.dumps({"rows": rows, "identical": identical, "largest": largest}) + "\n")
    print("\n".join(table))
    return 0 if final == 0 and b.progress.step == a.progress.step else 1


if __name__ == "__main__":
    sys.exit(main())
