"""nmt-train -m and scripts/sweep_report.py: a multirun's jobs grouped by setting, seeds pooled."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import script_module, toy_cli_overrides


def write_job(sweep: Path, number: int, overrides: list[str]) -> Path:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {line}\n" for line in overrides))
    return job


def test_jobs_are_labelled_by_the_overrides_that_differ_seed_aside(tmp_path):
    common = ["train=quick", "data.source=/corpus"]
    jobs = [
        write_job(tmp_path, 0, [*common, "cell=lstm", "model.attention=none", "train.seed=1"]),
        write_job(tmp_path, 1, [*common, "cell=lstm", "model.attention=none", "train.seed=2"]),
        write_job(tmp_path, 2, [*common, "cell=gru", "model.attention=none", "train.seed=1"]),
        write_job(tmp_path, 3, [*common, "cell=gru", "model.attention=none", "train.seed=2"]),
    ]
    labels = script_module("sweep_report").settings(jobs)
    assert [labels[job] for job in jobs] == ["cell=lstm"] * 2 + ["cell=gru"] * 2


def test_a_directory_without_finished_jobs_is_refused(tmp_path):
    write_job(tmp_path, 0, ["train.seed=1"])
    with pytest.raises(SystemExit, match="no finished jobs"):
        script_module("sweep_report").find_jobs(tmp_path)


@pytest.mark.slow
def test_a_multirun_trains_every_combination_and_the_report_pools_its_seeds(text_corpus, tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "nmt.cli.train", "-m", *toy_cli_overrides(text_corpus)]
    command += ["train.max_steps=4", "train.validate_every=2", "train.processes=1"]
    command += ["cell=lstm,rnn", "train.seed=1,2", f"hydra.sweep.dir={sweep}"]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    plot = tmp_path / "curves.png"
    assert script_module("sweep_report").main([str(sweep), "--beam", "2", "--plot", str(plot)]) == 0
    jobs = json.loads((sweep / "sweep.json").read_text())["jobs"]
    assert sorted((job["setting"], job["seed"]) for job in jobs) == [
        ("cell=lstm", "1"),
        ("cell=lstm", "2"),
        ("cell=rnn", "1"),
        ("cell=rnn", "2"),
    ]
    assert all(job["steps"] == 4 for job in jobs)
    report = script_module("sweep_report")
    for job in jobs:  # the perplexity training logged at one of its validations
        assert job["val_ppl"] in {round(point[3], 2) for point in report.curve(Path(job["job"]))}
    table = (sweep / "sweep.md").read_text()
    assert "| cell=lstm | 2 | 4 ± 0 |" in table and "| cell=rnn | 2 | 4 ± 0 |" in table
    assert plot.stat().st_size > 0
