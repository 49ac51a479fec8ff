"""Training on several processes (torch.distributed, DDP): every rank trains on its share of every
batch, the update is the one-process update, runs resume across world sizes, and a rank that dies
ends the job with one message."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import free_port, tiny_config, toy_cli_overrides

from nmt.checkpoint import Checkpoint
from nmt.data.batching import collate
from nmt.data.store import prepare_store
from nmt.data.tokenizer import Tokenizer
from nmt.training.distributed import Ranks, process_group, split_batch
from nmt.training.loss import TeacherForcedLoss
from nmt.training.run import run_training
from nmt.training.trainer import Trainer

BIN = Path(sys.executable).parent
CPU = torch.device("cpu")


def test_split_batch_deals_every_pair_once_in_shares_of_nearly_equal_cost():
    costs = [30, 5, 12, 12, 7, 40, 3, 18, 22, 9]
    indices = [9, 2, 5, 0, 7, 3, 1, 8]
    shares = split_batch(indices, costs, 3)
    assert sorted(i for share in shares for i in share) == sorted(indices)
    loads = [sum(costs[i] for i in share) for share in shares]
    assert max(loads) - min(loads) <= max(costs[i] for i in indices) // 2
    for share in shares:  # the batch's own order within each share
        assert share == [i for i in indices if i in share]
    assert split_batch([4], costs, 2) == [[4], []]


# --- ranks as processes of their own, as torchrun would start them ----------------------------------
def _as_rank(function, rank: int, world_size: int, port: int, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    function(rank, *args)


def run_ranks(function, *args, world_size: int = 2, timeout: float = 180) -> None:
    """`function(rank, *args)` in `world_size` fresh processes with torchrun's environment.
    Spawned, not forked: a fork of this test process inherits its threads and their locks."""
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [
        context.Process(target=_as_rank, args=(function, rank, world_size, port, args)) for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
    codes = [process.exitcode for process in processes]
    for process in processes:
        if process.is_alive():
            process.kill()
    assert codes == [0] * world_size, f"ranks exited with {codes}"


def _gradients(rank: int, config, tokenizer_state: dict, out: Path) -> None:
    ranks = Ranks.from_environment()
    store = prepare_store(config.data, Tokenizer.from_state(tokenizer_state))
    with process_group(ranks, CPU, timeout_s=60):
        trainer = Trainer(config, out / f"run{ranks.world_size}", store, CPU, ranks)
        batch = trainer.batcher.epoch_batches(0)[0]
        tokens = int(trainer.tgt_lengths[batch].sum()) + len(batch)
        loss_sum = trainer.backward(batch, tokens)
        grads = [parameter.grad.clone() for parameter in trainer.model.parameters()]
        torch.save((loss_sum, grads), out / f"rank{rank}_of{ranks.world_size}.pt")


def _train(rank: int, config, run_dir: Path) -> None:
    run_training(config, run_dir)


def test_two_ranks_sum_to_the_one_process_gradient(text_corpus, tmp_path):
    """Without dropout, DDP's sum of the ranks' shares is the whole batch's gradient, and each
    share's loss is divided by the whole batch's tokens, not its own."""
    config = tiny_config(text_corpus, clip_norm=0.0)
    config.model.dropout = 0.0
    tokenizer = prepare_store(config.data).tokenizer
    _gradients(0, config, tokenizer.state(), tmp_path)
    run_ranks(_gradients, config, tokenizer.state(), tmp_path)
    loss_one, grads_one = torch.load(tmp_path / "rank0_of1.pt")
    shares = [torch.load(tmp_path / f"rank{rank}_of2.pt") for rank in range(2)]
    assert sum(loss for loss, _ in shares) == pytest.approx(loss_one, rel=1e-5)
    assert 0 < shares[0][0] < loss_one  # each rank had a real share
    for rank in range(2):
        for one, two in zip(grads_one, shares[rank][1], strict=True):
            torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-5)


def _mean_loss(checkpoint: Path, config) -> float:
    """The teacher-forced loss per target token of a checkpoint's weights on the first batches."""
    loaded = Checkpoint.load(checkpoint)
    store = prepare_store(config.data, loaded.tokenizer)
    model = loaded.build_model()
    src, tgt = [store.train.src[i] for i in range(64)], [store.train.tgt[i] for i in range(64)]
    with torch.no_grad():
        batch = collate(src, tgt)
        _, nll = TeacherForcedLoss(model, "fp32", CPU)(batch)
    return float(nll) / batch.num_tgt_tokens


@pytest.mark.slow  # 18 s; test_two_ranks_sum_to_the_one_process_gradient holds the same in one step
@pytest.mark.parametrize("sampling_alpha", [0.0, 0.3])  # with subword sampling, ranks segment alike
def test_a_two_rank_run_trains_the_one_process_model(text_corpus, tmp_path, sampling_alpha):
    config = tiny_config(text_corpus, max_steps=50, validate_every=50, save_every=50)
    config.model.dropout = 0.0
    config.data.tokenizer.sampling_alpha = sampling_alpha
    run_training(config, tmp_path / "one")
    run_ranks(_train, config, tmp_path / "two")
    one, two = (tmp_path / name / "checkpoints" / "last.pt" for name in ("one", "two"))
    assert Checkpoint.load(two).progress.step == 50
    assert _mean_loss(two, config) == pytest.approx(_mean_loss(one, config), abs=1e-4)


@pytest.mark.slow
def test_ranks_resume_exactly_with_their_dropout(text_corpus, tmp_path):
    """A rank's dropout draws depend on the step, not on when the run started."""
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_ranks(_train, tiny_config(text_corpus, max_steps=12), straight)
    run_ranks(_train, tiny_config(text_corpus, max_steps=6), interrupted)
    run_ranks(_train, tiny_config(text_corpus, max_steps=12, resume=str(interrupted)), interrupted)
    a = Checkpoint.load(straight / "checkpoints" / "last.pt").model
    b = Checkpoint.load(interrupted / "checkpoints" / "last.pt").model
    for name, weight in a.items():
        torch.testing.assert_close(weight, b[name], rtol=0, atol=0, msg=name)


# --- the command line: train.processes, torchrun, faults ----------------------------------------
def toy_overrides(corpus: Path, run: Path, *extra: str) -> list[str]:
    return [
        *toy_cli_overrides(corpus),
        "model.dropout=0.0",
        "train.valid_attention_plots=0",
        "train.valid_gate_plots=false",
        f"hydra.run.dir={run}",
        *extra,
    ]


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, to kill the launcher with its ranks
    )


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def test_train_processes_starts_ranks_that_write_one_run(text_corpus, tmp_path):
    run = tmp_path / "run"
    output = finish(
        start(
            [str(BIN / "nmt-train"), *toy_overrides(text_corpus, run, "train.processes=2", "train.max_steps=20")],
            tmp_path,
        )
    )
    assert "training in 2 processes" in output and "2 training processes" in output
    assert output.count("validation at step 20") == 1  # rank 0 speaks for the job
    assert Checkpoint.load(run / "checkpoints" / "last.pt").progress.step == 20
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "tokenizer").is_dir()
    assert "processes: 2" in (run / ".hydra" / "config.yaml").read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run", "text"]  # no run of another rank


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_on_one_and_on_two_ranks(text_corpus, tmp_path):
    steps = ["train.max_steps=60", "train.save_every=10", "train.validate_every=60"]
    straight = tmp_path / "straight"
    finish(
        start([str(BIN / "nmt-train"), *toy_overrides(text_corpus, straight, "train.processes=2", *steps)], tmp_path)
    )

    killed = tmp_path / "killed"
    process = start(
        [str(BIN / "nmt-train"), *toy_overrides(text_corpus, killed, "train.processes=2", *steps)], tmp_path
    )
    wait_for(killed / "checkpoints" / "last.pt")
    os.killpg(process.pid, signal.SIGKILL)  # the launcher and both ranks, as a lost machine
    process.communicate()
    killed_at = Checkpoint.load(killed / "checkpoints" / "last.pt").progress.step
    assert 0 < killed_at < 60

    config = tiny_config(text_corpus)
    config.model.dropout = 0.0
    expected = _mean_loss(straight / "checkpoints" / "last.pt", config)
    for processes in (1, 2):
        run = tmp_path / f"resumed_on_{processes}"
        shutil.copytree(killed, run)
        output = finish(
            start(
                [
                    str(BIN / "nmt-train"),
                    *toy_overrides(text_corpus, run, f"train.processes={processes}", *steps, f"train.resume={run}"),
                ],
                tmp_path,
            )
        )
        assert f"resumed at step {killed_at}" in output
        last = run / "checkpoints" / "last.pt"
        assert Checkpoint.load(last).progress.step == 60
        assert _mean_loss(last, config) == pytest.approx(expected, abs=1e-4)


def _rank_pid(launcher: int, rank: int) -> int:
    """The pid of the process the launcher started as `rank` (from its environment)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    raise AssertionError(f"no rank {rank} under {launcher}")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_rank_ends_the_job_with_one_message_naming_it(text_corpus, tmp_path):
    run = tmp_path / "run"
    command = [
        str(BIN / "nmt-train"),
        *toy_overrides(text_corpus, run, "train.processes=2", "train.max_steps=100000", "train.save_every=5"),
    ]
    process = start(command, tmp_path)
    wait_for(run / "checkpoints" / "last.pt")
    os.kill(_rank_pid(process.pid, 1), signal.SIGKILL)
    killed = time.monotonic()
    output, _ = process.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    assert process.returncode == 1, output
    assert "training process rank 1 was killed by SIGKILL" in output
    assert "Traceback" not in output
    assert Checkpoint.load(run / "checkpoints" / "last.pt").progress.step > 0


@pytest.mark.slow  # 13 s: two torchrun launchers and their rendezvous
def test_two_torchrun_nodes_train_one_run_together(text_corpus, tmp_path):
    """Two `torchrun --nnodes 2` commands (here on one machine) rendezvous and train one run."""
    run, port = tmp_path / "run", free_port()
    nodes = [
        start(
            [
                sys.executable,  # torchrun is this module's console script
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "nmt-test",
                "-m",
                "nmt.cli.train",
                *toy_overrides(text_corpus, run, "train.max_steps=20"),
            ],
            tmp_path,
        )
        for node in (0, 1)
    ]
    outputs = [finish(node) for node in nodes]
    assert sum("2 training processes" in output for output in outputs) == 1
    assert Checkpoint.load(run / "checkpoints" / "last.pt").progress.step == 20


def test_the_launcher_names_the_rank_that_failed_first_not_the_ranks_that_lost_it():
    from types import SimpleNamespace

    from nmt.training.distributed import LOST_PEER_EXIT, describe_failures

    def failure(exitcode: int, timestamp: int = 0):
        return SimpleNamespace(exitcode=exitcode, timestamp=timestamp)

    killed = {0: failure(LOST_PEER_EXIT), 1: failure(-int(signal.SIGKILL), 5), 2: failure(-int(signal.SIGTERM))}
    assert describe_failures(killed) == ("training process rank 1 was killed by SIGKILL", 1)
    raised = {0: failure(LOST_PEER_EXIT), 3: failure(1, 7)}
    assert describe_failures(raised) == ("training process rank 3 failed with exit status 1 (its error is above)", 1)
    assert describe_failures({0: failure(2), 1: failure(2)})[1] == 2  # a user error every rank has reported
    # A user error one rank reported before the other reached it: that rank lost its peer, or the
    # launcher stopped it. Still the user's error: exit 2 (this raced in a test of empty data).
    assert describe_failures({0: failure(2), 1: failure(-int(signal.SIGTERM))})[1] == 2
    assert describe_failures({0: failure(2), 1: failure(LOST_PEER_EXIT)})[1] == 2
    assert describe_failures({0: failure(2), 1: failure(-int(signal.SIGKILL))})[1] == 1  # killed from outside


@pytest.mark.parametrize(
    # 24 s each; test_train's signal test holds the one-process path in `make test`
    "stop_signal, exit_code",
    [
        pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow),
        pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow),
    ],
)
def test_a_signal_stops_every_rank_after_the_same_step_and_the_run_resumes(
    text_corpus, tmp_path, stop_signal, exit_code
):
    """SIGTERM to the launcher (a scheduler), or Ctrl-C (SIGINT to the terminal's process group):
    the ranks finish their step together, rank 0 writes last.pt, and the run goes on from it."""
    run = tmp_path / "run"
    steps = ["train.max_steps=100000", "train.save_every=100000", "train.validate_every=100000"]
    process = start([str(BIN / "nmt-train"), *toy_overrides(text_corpus, run, "train.processes=2", *steps)], tmp_path)
    wait_for(run / "tokenizer")
    time.sleep(3)  # some steps in
    os.killpg(process.pid, stop_signal) if stop_signal == signal.SIGINT else process.send_signal(stop_signal)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == exit_code, output
    assert "Traceback" not in output and "resume with `nmt-train train.resume=" in output
    step = Checkpoint.load(run / "checkpoints" / "last.pt").progress.step
    assert step > 0
    resumed = finish(
        start(
            [
                str(BIN / "nmt-train"),
                *toy_overrides(
                    text_corpus, run, "train.processes=2", f"train.max_steps={step + 4}", f"train.resume={run}"
                ),
            ],
            tmp_path,
        )
    )
    assert f"resumed at step {step}" in resumed
