"""Training end to end: a run directory, exact resume, overfitting, and clean errors."""

import io
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import PAIRS, tiny_config, toy_cli_overrides, write_lines

from nmt.checkpoint import Checkpoint
from nmt.config import TrainConfig
from nmt.data.store import prepare_store
from nmt.options import ConfigError
from nmt.training.run import resume_point, run_training
from nmt.training.stopping import StopSignals
from nmt.training.trainer import Trainer

BIN = Path(sys.executable).parent


def test_a_run_directory_holds_checkpoints_tensorboard_and_tokenizer(text_corpus, tmp_path):
    run = tmp_path / "run"
    progress = run_training(tiny_config(text_corpus), run)
    assert progress.step == 12
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "tokenizer" / "joint.model").is_file()
    last = Checkpoint.load(run / "checkpoints" / "last.pt")
    assert last.training is not None and last.training.optimizer["state"] and "torch" in last.training.rng
    assert last.progress.step == 12


def test_resume_continues_exactly_where_the_run_stopped(text_corpus, tmp_path):
    straight = tmp_path / "straight"
    run_training(tiny_config(text_corpus, max_steps=12), straight)
    interrupted = tmp_path / "interrupted"
    run_training(tiny_config(text_corpus, max_steps=6), interrupted)
    progress = run_training(tiny_config(text_corpus, max_steps=12, resume=str(interrupted)), interrupted)
    assert progress.step == 12
    a = Checkpoint.load(straight / "checkpoints" / "last.pt")
    b = Checkpoint.load(interrupted / "checkpoints" / "last.pt")
    assert a.progress.batch_in_epoch == b.progress.batch_in_epoch
    for name, weight in a.model.items():
        torch.testing.assert_close(weight, b.model[name], msg=name)


def sampled_config(text_corpus, **train):
    config = tiny_config(text_corpus, **train)
    config.data.tokenizer.sampling_alpha = 0.3
    return config


def test_subword_sampling_segments_each_epoch_anew_and_repeatably(text_corpus, tmp_path):
    store = prepare_store(sampled_config(text_corpus).data)
    trainer = Trainer(sampled_config(text_corpus), tmp_path / "epochs", store, torch.device("cpu"))
    best = store.train.src.rows(), store.train.tgt.rows()
    segmentations = []
    for epoch in (0, 1, 0):
        trainer.epoch_batches(epoch)
        segmentations.append((trainer.train_pairs.src.rows(), trainer.train_pairs.tgt.rows()))
        assert store.tokenizer.decode_tgt(segmentations[-1][1]) == store.train_texts[1].texts()
    assert segmentations[0] != best and segmentations[0] != segmentations[1]
    assert segmentations[2] == segmentations[0]  # (seed, epoch) alone decide: resumable


@pytest.mark.slow  # make test stays under 6 minutes on a slower 2-core machine
def test_a_sampled_run_stopped_mid_epoch_resumes_onto_the_uninterrupted_weights(text_corpus, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_training(sampled_config(text_corpus, max_steps=14), straight)
    run_training(sampled_config(text_corpus, max_steps=5), interrupted)
    run_training(sampled_config(text_corpus, max_steps=14, resume=str(interrupted)), interrupted)
    a = Checkpoint.load(straight / "checkpoints" / "last.pt")
    b = Checkpoint.load(interrupted / "checkpoints" / "last.pt")
    position = ("step", "epoch", "batch_in_epoch")
    assert a.progress.epoch >= 1
    assert [getattr(a.progress, key) for key in position] == [getattr(b.progress, key) for key in position]
    for name, weight in a.model.items():
        torch.testing.assert_close(weight, b.model[name], msg=name)


@pytest.mark.slow  # make test stays under 6 minutes on a slower 2-core machine
def test_a_checkpoint_of_the_unfused_optimizer_resumes_into_the_fused_one(text_corpus, tmp_path):
    """Checkpoints from before fused Adam (2026-11-22) say fused=False in their optimizer groups;
    the resumed run must go on with the fused update and land where a fused run does."""
    straight = tmp_path / "straight"
    run_training(tiny_config(text_corpus, max_steps=12), straight)
    interrupted = tmp_path / "interrupted"
    run_training(tiny_config(text_corpus, max_steps=6), interrupted)
    last = interrupted / "checkpoints" / "last.pt"
    checkpoint = Checkpoint.load(last)
    assert checkpoint.training.optimizer["param_groups"][0]["fused"] is True
    for group in checkpoint.training.optimizer["param_groups"]:
        group["fused"] = False
    checkpoint.save(last)
    run_training(tiny_config(text_corpus, max_steps=12, resume=str(interrupted)), interrupted)
    a = Checkpoint.load(straight / "checkpoints" / "last.pt")
    b = Checkpoint.load(last)
    assert b.training.optimizer["param_groups"][0]["fused"] is True
    for name, weight in a.model.items():
        assert torch.equal(weight, b.model[name]), name


def test_a_constant_learning_rate_and_gateless_cells_train_and_resume(text_corpus, tmp_path):
    """lr_decay_factor=1.0 (the peers preset) once crashed at start (torch's plateau scheduler
    refuses factor 1), and rnn cells crashed the first validation's gate plots."""
    config = tiny_config(text_corpus, max_steps=6, lr_decay_factor=1.0, precision="bf16")
    config.model.encoder.cell = config.model.decoder.cell = "rnn"
    run = tmp_path / "run"
    run_training(config, run)
    config.train.max_steps = 8
    config.train.resume = str(run)
    progress = run_training(config, run)
    assert progress.step == 8
    last = Checkpoint.load(run / "checkpoints" / "last.pt")
    assert last.training.scheduler is None and last.training.optimizer["param_groups"][0]["lr"] == 0.003


@pytest.mark.slow  # make test stays under 6 minutes on a slower 2-core machine
def test_resume_keeps_the_runs_model_config_and_train_settings(text_corpus, tmp_path):
    """The run's model is continued whatever the command line says of the model; of the train
    settings, those the command line gives change and the rest are the run's own: what `nmt-train
    train.resume=RUN train.max_steps=8` composes (the defaults) goes on with RUN's rate and batches.
    A recipe or train preset named on the command line gives them all."""
    run = tmp_path / "run"
    run_training(tiny_config(text_corpus, max_steps=4, lr=0.003), run)
    changed = tiny_config(text_corpus)
    changed.model.embed_dim = 64  # ignored: the checkpoint's model is continued
    changed.train = TrainConfig(resume=str(run), max_steps=8)
    resumed, _ = resume_point(changed, run, [f"train.resume={run}", "train.max_steps=8", f"hydra.run.dir={run}"])
    assert (resumed.train.lr, resumed.train.batch_tokens, resumed.train.max_steps) == (0.003, 300, 8)
    assert resumed.model.embed_dim == 16
    given_all, _ = resume_point(changed, run, [f"train.resume={run}", "experiment=multi30k_de_en"])
    assert given_all.train == changed.train
    assert run_training(resumed, run).step == 8
    assert Checkpoint.load(run / "checkpoints" / "last.pt").config.model.embed_dim == 16


@pytest.mark.slow  # the same through the command, two runs of it: ~23 s
def test_resume_goes_on_with_the_runs_train_settings_but_those_given(text_corpus, tmp_path):
    """`nmt-train train.resume=RUN`, as a stopped run's log says to resume it, continues RUN's
    schedule (a recipe's budget, rate and batches), not the defaults; train keys given change."""
    run = tmp_path / "run"
    started = nmt_train(
        *toy_cli_overrides(text_corpus), "train.max_steps=3", "train.lr=0.003", f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert started.wait(timeout=300) == 0, started.communicate()[0]
    resumed = nmt_train(f"train.resume={run}", "train.max_steps=5", cwd=tmp_path)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert "resuming with the run's own train settings (" in output
    train = Checkpoint.load(run / "checkpoints" / "last.pt").config.train
    assert (train.lr, train.batch_tokens, train.max_steps) == (0.003, 300, 5)


class FakeClock:
    """Every reading is half a second after the last: training time without waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 0.5
        return self.now


@pytest.mark.slow  # make test stays under 6 minutes on a slower 2-core machine
def test_max_minutes_stops_after_that_much_training_time(text_corpus, tmp_path, monkeypatch):
    import nmt.training.trainer

    monkeypatch.setattr(nmt.training.trainer, "time", FakeClock())
    config = tiny_config(text_corpus, max_steps=0, max_minutes=0.5, validate_every=0)
    progress = run_training(config, tmp_path / "run")
    assert 30 <= progress.train_seconds < 35
    assert Checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt").progress.step == progress.step


def nmt_train(*overrides: str, cwd: Path, env_extra: dict | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(
        [str(BIN / "nmt-train"), *overrides],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_overfit_a_few_pairs_and_translate_them_back(tmp_path):
    """A small model memorises 8 pairs; nmt-translate (a subprocess) reproduces the targets."""
    pairs = PAIRS[::19][:8]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for prefix in ("train", "val", "test"):
        write_lines(corpus / f"{prefix}.de", [de for de, _ in pairs])
        write_lines(corpus / f"{prefix}.en", [en for _, en in pairs])
    run = tmp_path / "run"
    process = nmt_train(
        f"data.source={corpus}",
        "data.name=overfit",
        "data.tokenizer.vocab_size=60",
        "model.embed_dim=32",
        "model.encoder.hidden_size=32",
        "model.encoder.num_layers=1",
        "model.decoder.hidden_size=64",
        "model.decoder.num_layers=1",
        "model.dropout=0.0",
        "train.lr=0.01",
        "train.label_smoothing=0",
        "train.max_epochs=0",
        "train.max_steps=200",  # BLEU 100 from the first validation (step 100) on
        "train.validate_every=100",
        "train.log_every=100",
        "train.batch_tokens=1000",
        "train.num_threads=1",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    assert "BLEU 100.00" in output
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    translated = subprocess.run(
        [str(BIN / "nmt-translate"), str(run)],
        input="\n".join(de for de, _ in pairs) + "\n\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert translated.returncode == 0, translated.stderr
    assert translated.stdout.split("\n")[:-1] == [en for _, en in pairs] + [""]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_finishes(text_corpus, tmp_path):
    run = tmp_path / "run"
    common = (
        *toy_cli_overrides(text_corpus),
        "train.max_steps=400",
        "train.save_every=5",
        "train.validate_every=200",
    )
    process = nmt_train(*common, f"hydra.run.dir={run}", cwd=tmp_path)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    killed_at = Checkpoint.load(last).progress.step
    assert 0 < killed_at < 400
    resumed = nmt_train(*common, f"train.resume={run}", cwd=tmp_path)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output
    assert f"resumed at step {killed_at}" in output
    assert Checkpoint.load(last).progress.step == 400
    assert (run / ".hydra" / "config.yaml").is_file()  # the original config is kept
    assert list((run / ".hydra").glob("resumed_*/config.yaml"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.source=/no/such/corpus", "data source directory '/no/such/corpus' does not exist"),
        pytest.param("model.attention=luong", "model.attention='luong' is not valid", marks=pytest.mark.slow),
        ("train.lr_rate=0.1", "unknown key train.lr_rate (did you mean train.lr_patience?); train has: seed,"),
        pytest.param("model.encoder.hiden_size=3", "did you mean model.encoder.hidden_size?", marks=pytest.mark.slow),
    ],
)
def test_user_errors_end_in_one_clear_message(tmp_path, override, message):
    process = nmt_train(override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0
    assert message in output
    assert "Traceback" not in output
    assert "training in" not in output  # refused before any training process starts


def test_unreachable_hub_names_the_override(tmp_path):
    env = {"NMT_DATA": "", "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens on port 9
    process = nmt_train(
        "data.source=bentrevett/multi30k", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env_extra=env
    )
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "data.source=PATH" in output and "NMT_DATA" in output
    assert "Traceback" not in output
    assert "training in" not in output


@pytest.mark.slow  # make test stays under 6 minutes on a slower 2-core machine
def test_weight_averaging_saves_the_average_for_translation_and_resumes_exactly(text_corpus, tmp_path):
    """train.average_decay: best.pt and last.pt's "model" hold the moving average (what
    nmt-translate loads), last.pt also the trained weights, and a resumed run continues both."""
    straight = tmp_path / "straight"
    run_training(tiny_config(text_corpus, max_steps=12, average_decay=0.9), straight)
    last = Checkpoint.load(straight / "checkpoints" / "last.pt")
    averaged, trained = last.model, last.training.trained_model
    differs = [name for name in trained if not torch.equal(averaged[name], trained[name])]
    assert differs, "the average equals the trained weights: it was never applied"
    best = Checkpoint.load(straight / "checkpoints" / "best.pt")
    assert best.training is None and set(best.model) == set(trained)

    interrupted = tmp_path / "interrupted"
    run_training(tiny_config(text_corpus, max_steps=6, average_decay=0.9), interrupted)
    run_training(tiny_config(text_corpus, max_steps=12, average_decay=0.9, resume=str(interrupted)), interrupted)
    resumed = Checkpoint.load(interrupted / "checkpoints" / "last.pt")
    for key, weights, resumed_weights in [
        ("model", last.model, resumed.model),
        ("trained_model", last.training.trained_model, resumed.training.trained_model),
    ]:
        for name, weight in weights.items():
            torch.testing.assert_close(weight, resumed_weights[name], msg=f"{key}.{name}")


def test_the_average_follows_its_formula():
    from nmt.training.averaging import WeightAverage

    model = torch.nn.Linear(3, 2)
    start = [p.detach().clone() for p in model.parameters()]
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    average.update(model)  # decay min(0.5, 1/10) = 0.1: average = 0.1 * start + 0.9 * (start + 1)
    for avg, s in zip(average.averages, start):
        torch.testing.assert_close(avg, s + 0.9)
    trained = [p.detach().clone() for p in model.parameters()]
    with average.applied(model):
        for p, s in zip(model.parameters(), start):
            torch.testing.assert_close(p.detach(), s + 0.9)
    for p, t in zip(model.parameters(), trained):
        assert torch.equal(p.detach(), t)


@pytest.mark.slow  # 9 s; tests/test_schedule.py holds the schedule itself
def test_an_annealed_rate_falls_to_min_lr_and_resumes_on_the_same_fall(text_corpus, tmp_path, monkeypatch):
    options = dict(max_steps=12, lr_decay_factor=1.0, lr_anneal=0.5, min_lr=1e-4)
    straight = tmp_path / "straight"
    run_training(tiny_config(text_corpus, **options), straight)
    last = Checkpoint.load(straight / "checkpoints" / "last.pt")
    # The 12th update ran with 11/12 of the budget spent: 5/6 of the way down from 0.003 to 1e-4.
    assert last.training.optimizer["param_groups"][0]["lr"] == pytest.approx(0.003 + (1e-4 - 0.003) * 5 / 6)

    interrupted = tmp_path / "interrupted"
    with monkeypatch.context() as patch:  # a run that stops after its 7th update, mid-fall
        patch.setattr(Trainer, "limit_reached", lambda self: self.progress.step >= 7)
        run_training(tiny_config(text_corpus, **options), interrupted)
    progress = run_training(tiny_config(text_corpus, **options, resume=str(interrupted)), interrupted)
    assert progress.step == 12
    resumed = Checkpoint.load(interrupted / "checkpoints" / "last.pt")
    for name, weight in last.model.items():
        torch.testing.assert_close(weight, resumed.model[name], msg=name)


def test_annealing_and_plateau_decay_together_are_refused():
    with pytest.raises(ConfigError, match=r"lr_decay_factor=1.0"):
        TrainConfig(lr_anneal=0.3, lr_decay_factor=0.5)


# Three trainings per signal (~27 s on a slow 2-core machine): the stop handler itself is tested fast below.
@pytest.mark.slow
@pytest.mark.parametrize("stop_signal, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_training_after_a_step_and_the_resumed_run_equals_an_uninterrupted_one(
    text_corpus, tmp_path, stop_signal, exit_code
):
    common = (
        *toy_cli_overrides(text_corpus),
        "train.save_every=100000",
        "train.validate_every=100000",
        "train.processes=1",
    )
    run = tmp_path / "run"
    process = nmt_train(*common, "train.max_steps=100000", "train.log_every=1", f"hydra.run.dir={run}", cwd=tmp_path)
    # Signal once the first update is logged (training under way, no checkpoint written yet): a
    # fixed sleep raced the setup on a busy machine, and the signal then found no handler.
    # The timer bounds the wait: a run that hangs before its first update is killed, readline
    # then returns "" and the exit code assertion fails with the output so far.
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    started = ""
    while " - step 1 " not in started and (line := process.stdout.readline()):
        started += line
    watchdog.cancel()
    process.send_signal(stop_signal)
    output = started + process.communicate(timeout=120)[0]
    assert process.returncode == exit_code, output
    step = Checkpoint.load(run / "checkpoints" / "last.pt").progress.step
    assert f"stopped at step {step} by {stop_signal.name}" in output and "Traceback" not in output
    resumed = nmt_train(*common, f"train.max_steps={step + 6}", f"train.resume={run}", cwd=tmp_path)
    assert resumed.communicate(timeout=300)[0].count(f"resumed at step {step}") == 1
    straight = tmp_path / "straight"
    assert nmt_train(*common, f"train.max_steps={step + 6}", f"hydra.run.dir={straight}", cwd=tmp_path).wait(300) == 0
    a = Checkpoint.load(run / "checkpoints" / "last.pt")
    b = Checkpoint.load(straight / "checkpoints" / "last.pt")
    assert a.progress.step == b.progress.step == step + 6
    for name, weight in b.model.items():
        assert torch.equal(a.model[name], weight), name


class InterruptedStream(io.StringIO):
    """A log stream whose write of the line "step 7" is interrupted by a SIGTERM, as a write to a
    full stdout pipe is; it records how deeply writes nest."""

    depth = deepest = 0

    def write(self, text: str) -> int:
        self.depth += 1
        self.deepest = max(self.deepest, self.depth)
        try:
            if "step 7" in text:
                os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler inside this write
            return super().write(text)
        finally:
            self.depth -= 1


def test_a_stop_signal_inside_a_log_write_is_announced_without_writing_into_that_write():
    """The stop handler's own log line, written inside the interrupted write, raised "reentrant
    call" (a "--- Logging error ---" traceback in the run's output) or recursed."""
    stream = InterruptedStream()
    handler = logging.StreamHandler(stream)
    trainer_log = logging.getLogger("nmt.training.stopping")
    trainer_log.addHandler(handler)
    stop_signals = StopSignals()
    try:
        with stop_signals.catching():
            trainer_log.warning("step 7")
            deadline = time.monotonic() + 10
            while "stopping after this step" not in stream.getvalue() and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        trainer_log.removeHandler(handler)
    assert stop_signals.received == signal.SIGTERM
    assert "SIGTERM: stopping after this step" in stream.getvalue()
    assert stream.deepest == 1


def test_a_nan_loss_skips_its_update_and_too_many_in_a_row_stop_training(text_corpus, tmp_path, monkeypatch):
    import nmt.training.loss
    from nmt.training.stopping import TrainingDiverged

    real_loss = nmt.training.loss.sequence_loss
    calls = {"n": 0}

    def poisoned(logits, targets, label_smoothing=0.0):
        calls["n"] += 1
        loss, nll = real_loss(logits, targets, label_smoothing)
        return (loss * float("nan"), nll) if calls["n"] in (3, 4) else (loss, nll)

    monkeypatch.setattr(nmt.training.loss, "sequence_loss", poisoned)
    config = tiny_config(text_corpus, max_steps=8, validate_every=8)
    progress = run_training(config, tmp_path / "run")
    assert progress.step == 8 and progress.nonfinite_total == 2 and progress.nonfinite_in_a_row == 0
    last = Checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(weight).all() for weight in last.model.values())

    monkeypatch.setattr(
        nmt.training.loss, "sequence_loss", lambda *a, **k: [x * float("nan") for x in real_loss(*a, **k)]
    )
    with pytest.raises(TrainingDiverged, match="3 updates in a row had a NaN or inf gradient"):
        run_training(tiny_config(text_corpus, max_steps=8, max_nonfinite_steps=3), tmp_path / "diverged")


def test_a_long_epoch_validates_every_so_many_steps_on_a_fixed_sample(text_corpus, tmp_path, monkeypatch, caplog):
    """validate_every=0 means every epoch, unless an epoch is longer than LONG_EPOCH_STEPS (a
    large corpus): then that often. BLEU decodes a fixed sample of a large validation split."""
    from nmt.training import trainer as trainer_module
    from nmt.training.validation import bleu_sample

    monkeypatch.setattr(trainer_module, "LONG_EPOCH_STEPS", 3)
    config = tiny_config(text_corpus, max_steps=7, validate_every=0, valid_attention_plots=0, valid_gate_plots=False)
    with caplog.at_level(logging.INFO, logger="nmt.training.trainer"):
        run_training(config, tmp_path / "run")
    assert [int(step) for step in re.findall(r"validation at step (\d+)", caplog.text)] == [3, 6, 7]
    assert bleu_sample(100, 0) == list(range(100))
    sample = bleu_sample(5000, 0)
    assert len(sample) == len(set(sample)) == 2000 and sample == sorted(sample) and sample[-1] > 4000
    assert bleu_sample(5000, 0) == sample and bleu_sample(5000, 30) == bleu_sample(5000, 30) != sample[:30]
