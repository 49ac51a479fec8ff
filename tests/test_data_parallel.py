"""Data-parallel training (train.workers): forked helpers train on shards of every batch, and the
result is the one-process update, resumable, with failures reported instead of hanging."""

import multiprocessing
import os
import signal

import pytest
import torch
from helpers import tiny_config

from nmt.checkpoint import load_checkpoint
from nmt.data.corpus import prepare_data
from nmt.training.data_parallel import GradientExchange, split_batch
from nmt.training.trainer import Trainer, run_training
from nmt.workers import WorkerError


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


def _exchange_worker(exchange: GradientExchange, parameters, rank: int, results) -> None:
    exchange.attach(rank)
    for step in range(3):
        exchange.zero(rank)
        for number, parameter in enumerate(parameters):
            parameter.grad += (rank + 1) * (number + 1) + step
        total_loss = exchange.all_sum(rank, float(rank + 10 * step))
        # Lists, not tensors: a queued tensor's shared memory would vanish with the process that sent it.
        results.put((rank, step, total_loss, [parameter.grad.tolist() for parameter in parameters]))


def test_the_exchange_gives_every_process_the_sum_of_all_gradients():
    context = multiprocessing.get_context("fork")
    parameters = [torch.nn.Parameter(torch.zeros(shape)) for shape in [(3, 5), (7,), (2, 2, 2)]]
    exchange = GradientExchange(parameters, 3, context)
    results = context.Queue()
    processes = [
        context.Process(target=_exchange_worker, args=(exchange, parameters, rank, results)) for rank in (1, 2)
    ]
    for process in processes:
        process.start()
    _exchange_worker(exchange, parameters, 0, results)
    got = [results.get(timeout=30) for _ in range(9)]
    for process in processes:
        process.join(timeout=30)
    for _rank, step, total_loss, gradients in got:
        assert total_loss == 0 + 1 + 2 + 30 * step
        for number, (gradient, parameter) in enumerate(zip(gradients, parameters)):
            # ranks 0, 1, 2 added (rank + 1) * (number + 1) + step each
            expected = torch.full(parameter.shape, 6.0 * (number + 1) + 3 * step)
            torch.testing.assert_close(torch.tensor(gradient), expected)


def _first_step_gradients(config, run_dir) -> tuple[float, list[torch.Tensor]]:
    tokenizer, corpus = prepare_data(config.data, None, num_threads=1)
    trainer = Trainer(config, run_dir, tokenizer, corpus, torch.device("cpu"))
    with trainer.data_parallel():
        loss_sum, _ = trainer.train_step(trainer.batcher.epoch_batches(0)[0])
        return loss_sum, [parameter.grad.clone() for parameter in trainer.model.parameters()]


def test_the_shards_gradients_add_up_to_the_whole_batchs(text_corpus, tmp_path):
    """Adam and clipping hide a gradient's scale, so the gradient itself is compared: each share's
    loss must be divided by the whole batch's tokens, not its own."""
    config = tiny_config(text_corpus, clip_norm=0.0, workers=1)
    config.model.dropout = 0.0
    loss_one, gradients_one = _first_step_gradients(config, tmp_path / "one")
    config.train.workers = 3
    loss_three, gradients_three = _first_step_gradients(config, tmp_path / "three")
    assert loss_three == pytest.approx(loss_one, rel=1e-5)
    for one, three in zip(gradients_one, gradients_three, strict=True):
        torch.testing.assert_close(three, one, rtol=1e-4, atol=1e-6)


def test_two_workers_make_the_one_process_update(text_corpus, tmp_path):
    """Without dropout, the shards' summed gradients are the whole batch's: the weights match a
    one-process run's (up to the order in which floats are added)."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    config = tiny_config(text_corpus, max_steps=6, validate_every=6, workers=1)
    config.model.dropout = 0.0
    run_training(config, one)
    config.train.workers = 2
    run_training(config, two)
    a = load_checkpoint(one / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(two / "checkpoints" / "last.pt")["model"]
    for name, weight in a.items():
        torch.testing.assert_close(weight, b[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_data_parallel_run_resumes_exactly(text_corpus, tmp_path):
    """The helpers' dropout draws depend on the step, not on when the run started."""
    straight = tmp_path / "straight"
    run_training(tiny_config(text_corpus, max_steps=12, workers=2), straight)
    interrupted = tmp_path / "interrupted"
    run_training(tiny_config(text_corpus, max_steps=6, workers=2), interrupted)
    run_training(tiny_config(text_corpus, max_steps=12, workers=2, resume=str(interrupted)), interrupted)
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(interrupted / "checkpoints" / "last.pt")["model"]
    for name, weight in a.items():
        torch.testing.assert_close(weight, b[name], rtol=0, atol=0, msg=name)


def _fail_in_helpers(monkeypatch, failure) -> None:
    trainer_pid = os.getpid()
    original = Trainer.shard_backward

    def shard_backward(self, indices, batch_tokens):
        if os.getpid() != trainer_pid:
            failure()
        return original(self, indices, batch_tokens)

    monkeypatch.setattr(Trainer, "shard_backward", shard_backward)


def test_a_failing_helper_stops_training_with_its_traceback(text_corpus, tmp_path, monkeypatch):
    def failure():
        raise RuntimeError("out of something")

    _fail_in_helpers(monkeypatch, failure)
    with pytest.raises(WorkerError, match=r"(?s)a training worker failed.*RuntimeError: out of something"):
        run_training(tiny_config(text_corpus, workers=2), tmp_path / "run")


def test_a_killed_helper_stops_training_instead_of_hanging(text_corpus, tmp_path, monkeypatch):
    _fail_in_helpers(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(WorkerError, match="died with exit code -9"):
        run_training(tiny_config(text_corpus, workers=2), tmp_path / "run")
