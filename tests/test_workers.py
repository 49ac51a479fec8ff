"""Translation spread over forked worker processes (nmt/workers.py): same results, clear failures."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import PAIRS

from nmt.options import ConfigError, InferenceOptions, SearchOptions
from nmt.translation import Translator
from nmt.workers import WorkerError, can_fork, map_in_workers

pytestmark = pytest.mark.skipif(not can_fork(), reason="workers need fork")
SOURCES = [de for de, _ in PAIRS]


def test_every_task_is_done_once_and_its_result_comes_back_with_its_index():
    weights = torch.randn(8, 8)  # reaches the workers through the fork, not a pickle
    tasks = [torch.full((3, 8), float(k)) for k in range(9)]
    finished = dict(map_in_workers(lambda x: (os.getpid(), x @ weights), tasks, workers=2))
    assert sorted(finished) == list(range(9))
    for k, (_, product) in finished.items():
        assert torch.equal(product, tasks[k] @ weights)
    assert os.getpid() not in {pid for pid, _ in finished.values()}  # the parent only collects


def test_thousands_of_small_tasks_and_none_at_all():
    # More task numbers than a pipe's buffer holds: the workers must not wait on a full queue.
    assert sorted(result for _, result in map_in_workers(lambda k: 2 * k, list(range(6000)), workers=2)) == [
        2 * k for k in range(6000)
    ]
    assert list(map_in_workers(lambda k: k, [], workers=2)) == []


def test_a_failing_task_raises_in_the_parent_with_the_workers_traceback():
    def fails_on_three(k: int) -> int:
        if k == 3:
            raise ValueError("task three is broken")
        return k

    with pytest.raises(WorkerError, match=r"(?s)task 3.*ValueError: task three is broken"):
        list(map_in_workers(fails_on_three, list(range(6)), workers=2))


def test_a_killed_worker_is_reported_instead_of_waited_for():
    def killed_on_two(k: int) -> int:
        if k == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
        return k

    with pytest.raises(WorkerError, match="a worker died before finishing its tasks"):
        list(map_in_workers(killed_on_two, list(range(4)), workers=2))


def test_workers_translate_exactly_what_one_process_translates(trained_run):
    options = SearchOptions(beam_size=3, nbest=2, return_attention=True)
    lines = [SOURCES[k % len(SOURCES)] + (" ." * (k % 4)) for k in range(60)] + [""]
    # A small budget makes many batches, so both workers get several.
    one = Translator.load(trained_run, options, device="cpu", batch_tokens=80, workers=1)
    two = Translator.load(trained_run, options, device="cpu", batch_tokens=80, workers=2)
    expected, got = one.translate_lines(lines), two.translate_lines(lines)
    assert [t.texts for t in got] == [t.texts for t in expected]
    assert [t.source for t in got] == lines
    for mine, theirs in zip(got, expected):
        for a, b in zip(mine.hypotheses, theirs.hypotheses):
            assert a.tokens == b.tokens and a.score == pytest.approx(b.score, abs=1e-5)
            torch.testing.assert_close(a.attention, b.attention)


def test_a_negative_worker_count_is_refused_and_zero_means_one_per_core():
    with pytest.raises(ConfigError, match="workers=-2 must be >= 0"):
        InferenceOptions(workers=-2)
    assert InferenceOptions().workers == 0


def test_a_worker_killed_mid_file_ends_the_command_with_one_line_and_keeps_the_old_output(
    trained_run, tmp_path, monkeypatch, capsys
):
    import nmt.cli.translate
    import nmt.translation

    real_search = nmt.translation.search

    def dies_on_long_batches(model, src, src_lengths, options):
        if src.size(1) > 8:  # some batches, not all: the other worker carries on meanwhile
            os.kill(os.getpid(), signal.SIGKILL)
        return real_search(model, src, src_lengths, options)

    monkeypatch.setattr(nmt.translation, "search", dies_on_long_batches)  # the forked workers inherit it
    source, old = tmp_path / "in.de", tmp_path / "out.en"
    source.write_text("".join(f"{SOURCES[k % len(SOURCES)]}\n" for k in range(40)), encoding="utf-8")
    old.write_text("precious\n")
    argv = [
        str(trained_run),
        "-i",
        str(source),
        "-o",
        str(old),
        "--workers",
        "2",
        "--batch-tokens",
        "60",
        "--no-progress",
    ]
    assert nmt.cli.translate.main(argv) == 1
    error = capsys.readouterr().err
    assert "nmt-translate: a worker died before finishing its tasks" in error and "Traceback" not in error
    assert old.read_text() == "precious\n" and not list(tmp_path.glob(".out.en.partial"))


def test_workers_fewer_than_the_threads_do_not_hang_after_the_parent_used_them():
    """A forked child that runs more than one OpenMP thread after its parent has used them
    hangs; the workers must run one thread each whatever the parent's count."""
    script = (
        "import torch\n"
        "from nmt.workers import map_in_workers\n"
        "torch.set_num_threads(4)\n"
        "a = torch.randn(256, 256); (a @ a).sum()\n"
        "tasks = [torch.randn(256, 256) for _ in range(4)]\n"
        "done = dict(map_in_workers(lambda x: float((x @ x).sum()), tasks, workers=2))\n"
        "print(sorted(done))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[0, 1, 2, 3]", result.stderr
