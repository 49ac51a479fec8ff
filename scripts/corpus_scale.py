"""What a corpus' size costs `nmt-train`: time to the first training step and memory, process by
process, for one or more corpora (e.g. those of scripts/make_corpus.py).

    python scripts/corpus_scale.py CORPUS [CORPUS ...] [--runs first,again,resume] [--out FILE]
        [--nmt-train PATH] [-- OVERRIDES ...]

For each corpus, `nmt-train train=smoke data.train_limit=0 train.max_steps=30 train.log_every=1`
(plus OVERRIDES; `--train-preset` for another train preset) runs
- `first`: with an empty store cache (its own `data.cache_dir`), so the corpus is prepared;
- `again`: a new run on the same data and cache, which finds the store prepared;
- `resume`: `train.resume` of the first run, to step 60.
Every 0.2 s the process tree is read from /proc: each process' own peak resident memory (VmHWM,
kept per process and classed by its command line as launcher, rank N or preparation), and the
tree's summed resident and proportional memory (PSS counts a page shared by k processes 1/k
times in each, so the summed PSS shows whether the ranks share the store's pages). The time to
the first step is from the command's start to the first `step N epoch` line of the log.
With `--tokens-window 30,130` the runs train `model=reference` (with `train=smoke`, whose sizes win,
the smoke model; `--train-preset peers` for the reference model's recipe) and report the target
tokens/s between those steps instead (the log's rate x interval, as scripts/bench.py reads it).
Prints a Markdown table and writes the figures as JSON (`--out`). Run nothing else heavy meanwhile.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from process_memory import process_tree, pss_kib, status_kib  # scripts/

STEP_LINE = re.compile(r"^\[(?P<time>[\d\-: ,]+)\].* - step (?P<step>\d+) epoch .*?(?P<rate>[\d.]+) target tokens/s")
RUNS = ("first", "again", "resume")


@dataclass
class Measurement:
    corpus: str
    run: str
    seconds_to_first_step: float | None = None
    wall_seconds: float = 0.0
    exit_code: int = 0
    peak_rss_mib: dict[str, float] = field(default_factory=dict)  # per process class
    tree_rss_peak_mib: float = 0.0
    tree_pss_peak_mib: float = 0.0
    tokens_per_s: float | None = None


def _process_class(pid: int) -> str:
    """launcher, rank N (from the environment torch's launcher sets), preparation, or another
    program's name."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    env = dict(item.decode(errors="replace").split("=", 1) for item in environ if b"=" in item)
    name = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}/comm").exists() else ""
    if "RANK" in env and "nmt.cli.train" in cmdline:
        return "preparation" if name.startswith("nmt-prepare") else f"rank {env['RANK']}"
    if name.startswith("nmt-prepare") or "nmt.data.store" in cmdline:  # named once its imports are done
        return "preparation"
    if "nmt-train" in cmdline or "nmt.cli.train" in cmdline:
        return "launcher"
    script = cmdline.split(" ")[1] if name.startswith("python") and " " in cmdline else name
    return name if script.startswith("-") else Path(script).name or "other"


class TreeSampler:
    """Per-process peak RSS (by class) and the tree's peak summed RSS and PSS, in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.tree_rss = self.tree_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss = pss = 0
            for pid in process_tree(self.pid):
                hwm = status_kib(pid, "VmHWM")
                kind = self._class_of(pid)
                self.peaks[pid] = (kind, max(hwm, self.peaks.get(pid, (kind, 0))[1]))
                rss += status_kib(pid, "VmRSS")
                pss += pss_kib(pid)
            self.tree_rss, self.tree_pss = max(self.tree_rss, rss), max(self.tree_pss, pss)

    def _class_of(self, pid: int) -> str:
        known = self.peaks.get(pid)
        if known and known[0] not in ("rank 0", "other"):
            return known[0]
        # A forked preparation names itself after the fork: look again until it does.
        now = _process_class(pid)
        return known[0] if known and now == "gone" else now

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        by_class: dict[str, float] = {}
        for kind, kib in self.peaks.values():
            by_class[kind] = max(by_class.get(kind, 0.0), kib / 1024)
        return by_class


def run_command(command: list[str], log_path: Path, window: tuple[int, int] | None) -> Measurement:
    started = time.monotonic()
    wall_start = time.time()
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
        sampler = TreeSampler(process.pid)
        measurement = Measurement("", "")
        stamps: list[tuple[int, float, float]] = []
        assert process.stdout is not None
        for line in process.stdout:
            log_file.write(line)
            match = STEP_LINE.match(line)
            if not match:
                continue
            moment = datetime.datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if measurement.seconds_to_first_step is None:
                measurement.seconds_to_first_step = moment - wall_start
            stamps.append((int(match["step"]), moment, float(match["rate"])))
            if window and int(match["step"]) >= window[1]:
                os.killpg(process.pid, signal.SIGTERM)
        measurement.exit_code = process.wait()
    measurement.wall_seconds = time.monotonic() - started
    measurement.peak_rss_mib = sampler.stop()
    measurement.tree_rss_peak_mib = sampler.tree_rss / 1024
    measurement.tree_pss_peak_mib = sampler.tree_pss / 1024
    if window:
        inside = [(a, b) for a, b in itertools.pairwise(stamps) if a[0] >= window[0] and b[0] <= window[1]]
        seconds = sum(b[1] - a[1] for a, b in inside)
        measurement.tokens_per_s = sum(b[2] * (b[1] - a[1]) for a, b in inside) / seconds if seconds else None
    return measurement


def measure_corpus(corpus: str, args: argparse.Namespace, overrides: list[str]) -> list[Measurement]:
    results = []
    with tempfile.TemporaryDirectory(prefix="nmt-scale-", dir=args.scratch) as scratch:
        cache, first_run = Path(args.cache or Path(scratch) / "cache"), Path(scratch) / "first"
        base = [
            args.nmt_train,
            f"train={args.train_preset}",
            "data.train_limit=0",
            f"data.source={corpus}",
            *([f"data.cache_dir={cache}"] if not args.no_cache_dir else []),
        ]
        if args.tokens_window:
            base += ["model=reference", f"train.max_steps={args.tokens_window[1] + 1}", "train.log_every=10"]
        else:
            base += ["train.max_steps=30", "train.log_every=1"]
        for run in args.runs:
            if run == "first":
                command = [*base, *overrides, f"hydra.run.dir={first_run}"]
            elif run == "again":
                command = [*base, *overrides, f"hydra.run.dir={Path(scratch) / 'again'}"]
            else:
                resumed = [arg for arg in base if not arg.startswith("train.max_steps=")]
                command = [
                    *resumed,
                    *overrides,
                    f"train.resume={first_run}",
                    "train.max_steps=60",
                    f"hydra.run.dir={first_run}",
                ]
            log_path = Path(args.logs) / f"{Path(corpus).name}.{run}.log"
            print(f"# {corpus} {run}: {' '.join(command)}", file=sys.stderr, flush=True)
            measurement = run_command(command, log_path, args.tokens_window)
            measurement.corpus, measurement.run = corpus, run
            print(json.dumps(asdict(measurement)), file=sys.stderr, flush=True)
            results.append(measurement)
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def table(results: list[Measurement]) -> str:
    classes = sorted({kind for m in results for kind in m.peak_rss_mib if kind not in ("gone", "other")})
    head = "| corpus | run | to first step (s) | wall (s) | " + " | ".join(f"peak RSS {c} (MiB)" for c in classes)
    head += " | tree RSS peak (MiB) | tree PSS peak (MiB) | tokens/s |"
    lines = [head, "|" + " --- |" * (6 + len(classes) + 2)]
    for m in results:
        first = f"{m.seconds_to_first_step:.1f}" if m.seconds_to_first_step is not None else "-"
        peaks = " | ".join(f"{m.peak_rss_mib.get(c, 0):.0f}" for c in classes)
        rate = f"{m.tokens_per_s:.0f}" if m.tokens_per_s else "-"
        lines.append(
            f"| {Path(m.corpus).name} | {m.run} | {first} | {m.wall_seconds:.1f} | {peaks} | "
            f"{m.tree_rss_peak_mib:.0f} | {m.tree_pss_peak_mib:.0f} | {rate} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpora", nargs="+")
    parser.add_argument("--runs", default=",".join(RUNS), help="which of first,again,resume")
    parser.add_argument("--nmt-train", default=str(Path(sys.executable).parent / "nmt-train"))
    parser.add_argument("--tokens-window", type=lambda s: tuple(int(x) for x in s.split(",")), default=None)
    parser.add_argument("--train-preset", default="smoke", help="the train preset (peers: the reference recipe)")
    parser.add_argument("--no-cache-dir", action="store_true", help="for revisions without data.cache_dir")
    parser.add_argument("--scratch", default=None, help="where runs and stores go (default: the temp dir)")
    parser.add_argument("--cache", default=None, help="a store cache to keep and reuse (default: a new one per corpus)")
    parser.add_argument("--logs", default=".", help="where each run's output is kept")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.runs = [r for r in args.runs.split(",") if r]
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    results = [m for corpus in args.corpora for m in measure_corpus(corpus, args, overrides)]
    print(table(results))
    if args.out:
        args.out.write_text(json.dumps([asdict(m) for m in results], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
