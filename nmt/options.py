"""Options of search and inference, and the checks every config value goes through.

`SearchOptions` and `InferenceOptions` are shared by validation, the Python API, the command
lines and the service, whose flags and request fields are generated from their fields
(`nmt.cli.options`, `nmt.service.schemas`): the `help`, `flags` and `choices` of each field's
metadata. A bad value is a ConfigError whose one line names the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "auto")
QUANTIZE_KINDS = ("none", "int8")
ENGINES = ("torch", "onnxruntime")
LENGTH_PENALTIES = ("none", "average", "gnmt")
STOPPING_RULES = ("early", "exact")
HARD_MAX_LEN = 512  # no output is longer, whatever max_len_a and max_len_b say


class ConfigError(ValueError):
    """A configuration value a user gave is invalid; the message names the key and the fix."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    check(value in choices, f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def check_positive(key: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    check(ok, f"{key}={value} must be {'>= 0' if allow_zero else '> 0'}")


def option(default: Any, help: str, flags: tuple[str, ...] = (), choices: tuple[str, ...] = ()) -> Any:
    """A field that the command lines offer as a flag (named after the field unless `flags`)."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices})


def internal(default: Any) -> Any:
    """A field of the Python API that no command line offers."""
    return field(default=default, metadata={"cli": False})


@dataclass
class SearchOptions:
    """How hypotheses are searched: one set of options for validation, `Translator`,
    `nmt-translate` and `nmt-evaluate`."""

    beam_size: int = option(
        5,
        "beam size (1: greedy); with --sample and no --samples, the samples drawn per input",
        ("--beam", "--beam-size"),
    )
    nbest: int = option(1, "keep the N best hypotheses per input (N <= beam size, or samples)")
    # Without a length penalty, beam search prefers short outputs (docs/experiments.md).
    length_penalty: str = option(
        "average", "rank by log-prob (none), log-prob / length (average) or GNMT's penalty", choices=LENGTH_PENALTIES
    )
    alpha: float = option(0.6, "alpha of the gnmt length penalty")
    # "early": a sentence stops once its nbest-th finished hypothesis scores at least as well as
    # every live beam would if it ended at the next step (fairseq's rule); "exact": once no live
    # beam could win at any length up to the limit.
    stopping: str = option("early", "beam search: when a sentence stops", choices=STOPPING_RULES)
    min_len: int = option(0, "no eos before this many pieces")
    max_len_a: float = option(1.5, "output length limit: a * source length + b pieces")
    max_len_b: int = option(10, "output length limit: a * source length + b pieces")
    no_repeat_ngram: int = option(0, "never repeat an n-gram of this size within a hypothesis (0: off)")
    sample: bool = option(False, "draw every piece at random from the model's distribution instead of searching")
    samples: int = option(0, "sampling: the samples drawn per input (0: the beam size)")
    temperature: float = option(1.0, "sampling: divide the logits by this (< 1: sharper, > 1: flatter)")
    top_k: int = option(0, "sampling: draw among the k most probable pieces only (0: all)")
    top_p: float = option(1.0, "sampling: draw among the most probable pieces that hold this much probability")
    seed: int = option(0, "sampling: the seed; the same seed, input and batches give the same samples")
    max_len_cap: int = internal(HARD_MAX_LEN)
    return_attention: bool = internal(False)  # each hypothesis carries its attention weights

    def __post_init__(self) -> None:
        check(self.beam_size >= 1, f"beam_size={self.beam_size} must be >= 1")
        check_positive("samples", self.samples, allow_zero=True)
        hypotheses = ("samples", self.sample_count) if self.sample else ("the beam size", self.beam_size)
        check(
            1 <= self.nbest <= hypotheses[1],
            f"nbest={self.nbest} must be between 1 and {hypotheses[0]} ({hypotheses[1]})",
        )
        check_choice("length_penalty", self.length_penalty, LENGTH_PENALTIES)
        check_choice("stopping", self.stopping, STOPPING_RULES)
        for key in ("min_len", "max_len_b", "no_repeat_ngram", "top_k", "alpha"):
            check_positive(key, getattr(self, key), allow_zero=True)
        check_positive("max_len_a", self.max_len_a, allow_zero=True)
        check(self.max_len_cap >= 1, f"max_len_cap={self.max_len_cap} must be >= 1")
        check(self.no_repeat_ngram != 1, "no_repeat_ngram=1 would forbid every repeated piece; use 2 or more (0: off)")
        check(self.temperature > 0, f"temperature={self.temperature} must be > 0")
        check(0.0 < self.top_p <= 1.0, f"top_p={self.top_p} must be in (0, 1]")
        sampling_only = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "samples": 0}
        changed = [key for key, neutral in sampling_only.items() if getattr(self, key) != neutral]
        check(self.sample or not changed, f"{', '.join(changed)} only apply with sample=true (--sample)")

    @property
    def sample_count(self) -> int:
        """Samples drawn per input when sampling: `samples`, or the beam size (the older flags)."""
        return self.samples or self.beam_size


@dataclass
class InferenceOptions:
    """Where and how a Translator runs: device, precision, batches and processes."""

    device: str = option("auto", "auto (CUDA when present), cpu or cuda", choices=DEVICES)
    # bf16: matrix products in bfloat16 under autocast; fast only where the hardware has native
    # bf16 products (nmt.model.device); auto: bf16 there, else fp32.
    precision: str = option(
        "fp32", "bf16: matrix products in bfloat16 (autocast); auto: bf16 where native", choices=PRECISIONS
    )
    quantize: str = option("none", "int8: dynamic int8 LSTM and linear layers (CPU)", choices=QUANTIZE_KINDS)
    # onnxruntime: the ONNX graphs of a model directory (`nmt-export --onnx`), CPU, float32 or int8.
    engine: str = option(
        "torch", "onnxruntime: the model directory's ONNX graphs (nmt-export --onnx), CPU", choices=ENGINES
    )
    batch_tokens: int = option(2000, "padded source tokens per batch")
    # Forked CPU processes that search batches side by side, the cores split between them
    # (nmt.workers); 0: one per core on Linux, else 1.
    workers: int = option(0, "CPU processes searching side by side (0: one per core on Linux; 1: one process)")
    # A line of a megabyte would make the attention read ~10^5 positions at every step.
    max_src_len: int = option(1024, "source pieces translated per line; a longer line is cut there (0: no limit)")

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("quantize", self.quantize, QUANTIZE_KINDS)
        check_choice("engine", self.engine, ENGINES)
        if self.engine == "onnxruntime":
            check(self.device in ("auto", "cpu"), "engine=onnxruntime runs on the CPU; use device cpu (or auto)")
            check(self.precision != "bf16", "engine=onnxruntime runs float32 or int8 graphs; use precision fp32")
        check_positive("batch_tokens", self.batch_tokens)
        check_positive("workers", self.workers, allow_zero=True)
        check_positive("max_src_len", self.max_src_len, allow_zero=True)
