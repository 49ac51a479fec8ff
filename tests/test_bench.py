"""scripts/bench.py's training rates, read from trainings' logs (here a stand-in trainer that logs
at a set pace), as `make bench` computes them."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from helpers import script_module

# Logs `step N ... R target tokens/s` every 25 steps, every PACE seconds; the pace depends on the
# seed, as for two trainings side by side on different batches. The slower one speeds up tenfold
# after 1.7 s, as a training left alone on the machine would.
STAND_IN_TRAINER = """\
    import datetime, sys, time
    seed = int(next(a for a in sys.argv if a.startswith("train.seed="))[len("train.seed="):])
    pace, rate, alone_rate = {1: (0.1, 100, 100), 2: (0.2, 50, 500)}[seed]
    started = time.monotonic()
    for step in range(25, 2000, 25):
        time.sleep(pace)
        now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        logged = rate if time.monotonic() - started < 1.7 else alone_rate
        print(f"[{now}][nmt.training.trainer][INFO] - step {step} epoch 1: loss 5.0, lr 0.001, "
              f"{logged} target tokens/s, 0.1 min", flush=True)
"""


def stand_in_python(tmp_path: Path) -> str:
    """An interpreter in name only: bench calls `PYTHON -c CODE OVERRIDES...`; this one ignores
    the code and logs as a training of the seed among the overrides would."""
    trainer = tmp_path / "trainer.py"
    trainer.write_text(textwrap.dedent(STAND_IN_TRAINER))
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{trainer}" "$@"\n')
    python.chmod(0o755)
    return str(python)


def test_side_by_side_trainings_are_counted_only_while_all_of_them_run(tmp_path):
    """The --independent arm sums the rates of trainings run at once. Once the faster one has
    finished its window (steps 50-300 here, at ~1.2 s), the slower one runs alone, faster, and
    must not be counted on from then (nor kept running to its own window's end at ~2.4 s)."""
    result = script_module("bench").run_independent(
        "side by side", [], 2400, (25, 150), "unused", stand_in_python(tmp_path), 2
    )
    assert result.tokens_per_s == 150.0  # 100 + 50: each rate from what it logged while both ran
