"""The prepared store: prepared once, reused while nothing it depends on changes, shared by the
processes that need it, and the same pairs and ids as the corpus it came from."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PAIRS, SPLITS, tiny_config, toy_cli_overrides, write_lines

from nmt.config import CorpusConfig, DataConfig, TokenizerConfig
from nmt.data.corpus import DataError
from nmt.data.mixing import epoch_pairs, shares
from nmt.data.preparation import sample_pairs
from nmt.data.store import cache_root, fingerprint, prepare_store, store_key
from nmt.training.trainer import Trainer

BIN = Path(sys.executable).parent


def data_config(corpus: Path, **changes) -> DataConfig:
    return DataConfig(name="toy", source=str(corpus), tokenizer=TokenizerConfig(vocab_size=80), **changes)


def store_dir(config: DataConfig) -> Path:
    return cache_root(config) / "stores" / fingerprint(store_key(config))


def test_the_store_holds_the_cleaned_pairs_their_ids_and_the_validation_split(text_corpus):
    train_de = [de for de, _ in SPLITS["train"]]
    train_de[3] = " "  # an empty side: dropped
    train_de[5] = " ".join(["lang"] * 80)  # too long for max_len 50: dropped
    write_lines(text_corpus / "train.de", train_de)
    store = prepare_store(data_config(text_corpus, max_len=50))
    kept = [pair for i, pair in enumerate(SPLITS["train"]) if i not in (3, 5)]
    assert len(store.train) == len(kept) == store.meta["train"]["pairs"]
    assert store.meta["train"]["dropped_too_long"] == 1
    assert store.train_texts[0].texts() == [de for de, _ in kept]
    assert store.train.src.rows() == store.tokenizer.encode_src([de for de, _ in kept])
    assert store.train.tgt.rows() == store.tokenizer.encode_tgt([en for _, en in kept])
    assert store.train.src[0].dtype == np.uint16
    assert store.validation.tgt_texts == [en for _, en in SPLITS["val"]]
    assert store.validation.src_ids == store.tokenizer.encode_src([de for de, _ in SPLITS["val"]])


def test_the_same_data_reuses_the_store_and_any_change_prepares_another(text_corpus, caplog):
    base = data_config(text_corpus)
    first = prepare_store(base)
    with caplog.at_level(logging.INFO, logger="nmt.data.store"):
        again = prepare_store(data_config(text_corpus))
    assert again.directory == first.directory and "preparing" not in caplog.text
    changed = {
        "filter": data_config(text_corpus, max_len=30),
        "limit": data_config(text_corpus, train_limit=50),
        "tokenizer": DataConfig(name="toy", source=str(text_corpus), tokenizer=TokenizerConfig(vocab_size=90)),
        "languages": data_config(text_corpus, src_lang="en", tgt_lang="de"),
    }
    directories = {name: prepare_store(config).directory for name, config in changed.items()}
    assert len({first.directory, *directories.values()}) == 1 + len(changed)
    time.sleep(0.01)
    write_lines(text_corpus / "train.en", [en.upper() for _, en in SPLITS["train"]])  # the source
    edited = prepare_store(data_config(text_corpus))
    assert edited.directory != first.directory
    assert edited.train_texts[1].texts()[0] == SPLITS["train"][0][1].upper()


def test_a_reused_tokenizer_is_used_as_it_is(text_corpus, tmp_path):
    trained = prepare_store(data_config(text_corpus)).tokenizer
    trained.save(tmp_path / "run" / "tokenizer")  # a run directory's tokenizer, output pieces and all
    config = data_config(text_corpus)
    config.tokenizer.model = str(tmp_path / "run")
    store = prepare_store(config)
    assert store.tokenizer.fingerprint == trained.fingerprint
    assert store.train.tgt.rows() == trained.encode_tgt([en for _, en in SPLITS["train"]])
    (tmp_path / "joint.model").write_bytes(trained.src_model_bytes)  # a bare SentencePiece model
    config.tokenizer.model = str(tmp_path / "joint.model")
    bare = prepare_store(config).tokenizer
    assert bare.src_model_bytes == trained.src_model_bytes and bare.output_pieces is None
    config.tokenizer.model = str(tmp_path / "nothing.model")
    with pytest.raises(DataError, match=r"nothing\.model: no such file"):
        prepare_store(config)


def test_the_tokenizer_trains_on_a_fixed_sample_and_a_small_corpus_whole():
    chunks = [([f"s{i}" for i in range(j, j + 10)], [f"t{i}" for i in range(j, j + 10)]) for j in range(0, 100, 10)]
    assert sample_pairs(iter(chunks), 0, seed=0)[0] == [f"s{i}" for i in range(100)]
    assert sample_pairs(iter(chunks), 500, seed=0)[1] == [f"t{i}" for i in range(100)]  # all, in order
    src, tgt = sample_pairs(iter(chunks), 30, seed=0)
    assert len(src) == 30 and [s[1:] for s in src] == [t[1:] for t in tgt]  # pairs stay pairs
    assert (src, tgt) == sample_pairs(iter(chunks), 30, seed=0)
    assert src != sample_pairs(iter(chunks), 30, seed=1)[0]
    many = [sample_pairs(iter(chunks), 30, seed=seed)[0] for seed in range(200)]
    late = sum(int(s[1:]) >= 50 for sample in many for s in sample) / (30 * 200)
    assert 0.45 < late < 0.55  # uniform over the corpus, not its start


def test_weighted_corpora_give_every_epoch_their_shares(tmp_path):
    assert shares([100, 900], [1.0, 1.0]) == [500, 500]
    assert shares([10, 20, 30], [1.0, 2.0, 0.5]) == [17, 34, 9]
    spans = [(0, 100), (100, 1000)]
    pairs = epoch_pairs(spans, [3.0, 1.0], seed=5, epoch=0)
    counts = np.bincount(pairs < 100, minlength=2)
    assert counts[1] == 750 and counts[0] == 250  # 3 : 1 of an epoch of 1,000 pairs
    small = pairs[pairs < 100]
    assert np.bincount(small, minlength=100).min() >= 7  # the small corpus upsampled: each pair 7-8 times
    big = pairs[pairs >= 100]
    assert len(np.unique(big)) == len(big)  # the big one sampled without repeats
    assert np.array_equal(pairs, epoch_pairs(spans, [3.0, 1.0], seed=5, epoch=0))  # fixed by (seed, epoch)
    assert not np.array_equal(pairs, epoch_pairs(spans, [3.0, 1.0], seed=5, epoch=1))
    assert epoch_pairs([(0, 100)], [1.0], seed=5, epoch=0) is None  # one corpus: every pair once


def test_a_mixed_training_draws_each_corpus_by_its_weight(text_corpus, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    write_lines(other / "train.de", [de for de, _ in PAIRS[:40]])
    write_lines(other / "train.en", [en.upper() for _, en in PAIRS[:40]])
    config = tiny_config(text_corpus, max_steps=4, valid_attention_plots=0, valid_gate_plots=False)
    config.data.corpora = {
        "main": CorpusConfig(source=str(text_corpus), weight=1.0),
        "other": CorpusConfig(source=str(other), weight=3.0),
    }
    store = prepare_store(config.data)
    assert [name for name, _, _ in store.corpora] == ["main", "other"]
    assert [stop - start for _, start, stop in store.corpora] == [len(SPLITS["train"]), 40]
    trainer = Trainer(config, tmp_path / "run", store, torch.device("cpu"))
    dealt = np.concatenate(list(trainer.epoch_batches(0)))
    assert len(dealt) == len(SPLITS["train"]) + 40
    assert np.sum(dealt >= len(SPLITS["train"])) == 135  # 3/4 of 180 pairs from the 40 of `other`
    assert trainer.train().step == 4


# --- several processes ----------------------------------------------------------------------------------
def _prepare_in_process(corpus: str, log_file: str) -> None:
    logging.basicConfig(filename=log_file, level=logging.INFO, format="%(message)s", force=True)
    store = prepare_store(data_config(Path(corpus)), workers=1)
    logging.getLogger("test").info("opened %s %d", store.directory, len(store.train))


def test_processes_started_together_prepare_one_store_and_read_it(text_corpus, tmp_path):
    write_lines(text_corpus / "train.de", [de for de, _ in SPLITS["train"]] * 200)
    write_lines(text_corpus / "train.en", [en for _, en in SPLITS["train"]] * 200)
    context = multiprocessing.get_context("fork")  # as the ranks of one machine, without their start-up
    logs = [tmp_path / f"process{n}.log" for n in range(3)]
    processes = [context.Process(target=_prepare_in_process, args=(str(text_corpus), str(log))) for log in logs]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    assert [process.exitcode for process in processes] == [0, 0, 0]
    texts = [log.read_text() for log in logs]
    assert sum("preparing the corpus into" in text for text in texts) == 1
    opened = {line for text in texts for line in text.splitlines() if line.startswith("opened")}
    assert len(opened) == 1 and opened.pop().endswith(f" {len(SPLITS['train']) * 200}")


def _run_train(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # waits out a timeout
def test_ranks_waiting_for_a_long_preparation_do_not_time_out(text_corpus, tmp_path):
    """The ranks wait on the store's lock, outside any collective: a preparation that takes
    longer than train.process_timeout_s (here: another process holding the lock) is no error."""
    config = tiny_config(text_corpus).data
    lock = store_dir(config).with_name(store_dir(config).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    run = tmp_path / "run"
    command = [
        str(BIN / "nmt-train"),
        *toy_cli_overrides(text_corpus),
        "train.processes=2",
        "train.max_steps=4",
        "train.process_timeout_s=2",
        "train.valid_gate_plots=false",
        "train.valid_attention_plots=0",
        f"hydra.run.dir={run}",
    ]
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result: list = []
        training = threading.Thread(target=lambda: result.append(_run_train(command, tmp_path)))
        training.start()
        time.sleep(6)  # three times the ranks' timeout
        fcntl.flock(held, fcntl.LOCK_UN)
    training.join()
    assert result[0].returncode == 0, result[0].stdout + result[0].stderr
    assert (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow  # 12 s: two ranks
def test_a_failed_preparation_ends_the_job_with_one_line_naming_the_cause(text_corpus, tmp_path):
    lines = (text_corpus / "train.de").read_bytes().split(b"\n")
    lines[40] = b"Der Hund \xff l\xe4uft."
    (text_corpus / "train.de").write_bytes(b"\n".join(lines))
    command = [
        str(BIN / "nmt-train"),
        *toy_cli_overrides(text_corpus),
        "train.processes=2",
        "train.max_steps=4",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = _run_train(command, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.count("is not valid UTF-8") == 1, output
    assert "train.de:41 is not valid UTF-8" in output and "Traceback" not in output
    assert not list(cache_root(tiny_config(text_corpus).data).glob("stores/*.tmp-*"))  # nothing half-written


def _preparations(pid: int) -> list[int]:
    """The preparation processes `pid` has started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid and b"nmt.data.store" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
    return found


def test_a_killed_preparation_leaves_no_store_and_the_next_run_prepares_it(text_corpus, tmp_path):
    config = data_config(text_corpus)
    outcome: list = []

    def prepare() -> None:
        try:
            outcome.append(prepare_store(config))
        except DataError as error:
            outcome.append(error)

    preparing = threading.Thread(target=prepare)
    preparing.start()
    deadline = time.monotonic() + 60
    while not (children := _preparations(os.getpid())) and preparing.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    for child in children:  # killed from outside, as the kernel's OOM killer would
        os.kill(child, signal.SIGKILL)
    preparing.join()
    assert children and isinstance(outcome[0], DataError) and "stopped by SIGKILL" in str(outcome[0])
    assert not store_dir(config).exists()
    assert len(prepare_store(config).train) == len(SPLITS["train"])


def test_preparing_in_a_process_that_has_run_torch_threads_finishes(text_corpus):
    """A fork of a process whose OpenMP pool had run (a benchmark, a notebook) hung in
    SentencePiece's training: the preparation runs in a fresh interpreter."""
    code = (
        "import torch, sys\n"
        "from nmt.config import DataConfig\n"
        "from nmt.data.store import prepare_store\n"
        "torch.set_num_threads(2); a = torch.randn(1024, 1024); (a @ a).sum()\n"
        "from nmt.config import TokenizerConfig\n"
        f"config = DataConfig(name='toy', source={str(text_corpus)!r}, tokenizer=TokenizerConfig(vocab_size=80))\n"
        "store = prepare_store(config)\n"
        "print(len(store.train))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == str(len(SPLITS["train"])), result.stderr


def test_a_resume_finds_its_store_or_prepares_one_with_the_checkpoint_s_tokenizer(text_corpus, tmp_path):
    from nmt.checkpoint import Checkpoint
    from nmt.training.run import run_training

    def config(steps: int, resume: str | None = None):
        return tiny_config(text_corpus, max_steps=steps, resume=resume, valid_attention_plots=0, valid_gate_plots=False)

    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    run_training(config(8), straight)
    run_training(config(4), interrupted)
    shutil.rmtree(cache_root(config(4).data) / "stores")  # the cache was cleared in between
    run_training(config(8, str(interrupted)), interrupted)
    a = Checkpoint.load(straight / "checkpoints" / "last.pt").model
    b = Checkpoint.load(interrupted / "checkpoints" / "last.pt").model
    for name, weight in a.items():
        assert torch.equal(weight, b[name]), name
