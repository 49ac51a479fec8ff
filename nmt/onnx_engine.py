"""A model directory's ONNX graphs (`nmt.onnx_graphs`) as a model of the decoding protocol, run
by ONNX Runtime: greedy, beam and sampling search, n-best and ensembles search it as they search
the torch model.

The decoder state is the torch model's own `DecoderState` over tensors that share memory with
ONNX Runtime's outputs, so beam search's row moves (`reorder_beams`, `select_sentences`, `join`)
are the same code; only `encode` and `step` run a graph.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nmt.model.decoder import DecoderState
from nmt.model.encoder import RecurrentState
from nmt.model_directory import CONFIG

INT8_SUFFIX = ".int8"  # encoder.int8.onnx, decoder_step.int8.onnx: the graphs quantized


class EngineError(ValueError):
    """A model that ONNX Runtime cannot run as asked, said in one line."""


@dataclass
class OnnxEncoding:
    """The encoder graph's outputs for one batch of sources."""

    memory: torch.Tensor  # (batch, src_len, memory_size)
    keys: torch.Tensor | None  # (batch, src_len, key_size); None without attention
    src_mask: torch.Tensor  # (batch, src_len) bool
    hidden: RecurrentState  # the bridged decoder state, (layers, batch, hidden) each
    attentional: torch.Tensor | None  # (batch, attentional_size) zeros with input feeding, else None


class OnnxModel:
    """The encoder and decoder-step graphs of one model directory, in ONNX Runtime sessions.

    Sessions are made in the process that runs them, on first use: a forked worker (nmt.workers)
    makes its own, with as many threads as torch has there (one)."""

    def __init__(self, directory: Path, description: dict, int8: bool = False, threads: int | None = None) -> None:
        self.directory, self.int8 = directory, int8
        self.threads = threads  # per session; None: as many as torch has in the process
        self.step_inputs: list[str] = description["step_inputs"]
        self.step_outputs: list[str] = description["step_outputs"]
        self.encoder_outputs: list[str] = description["encoder_outputs"]
        suffix = INT8_SUFFIX if int8 else ""
        self.paths = [directory / _with_suffix(description[kind], suffix) for kind in ("encoder", "decoder_step")]
        missing = [path.name for path in self.paths if not path.is_file()]
        if missing:
            flag = " --quantize int8" if int8 else ""
            raise EngineError(
                f"{directory} has no {' or '.join(missing)}: export it with `nmt-export ... --onnx{flag}`"
            )
        self._sessions: tuple[int, object, object] | None = None  # (pid, encoder, step)

    @classmethod
    def load(cls, directory: Path, int8: bool = False, threads: int | None = None) -> OnnxModel:
        """The graphs of the model directory `directory` (written by `nmt-export --onnx`).

        `threads=1` for a process that forks workers after it has searched: a session with a
        pool of threads in the parent makes a forked child's sessions hang."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise EngineError("--engine onnxruntime needs ONNX Runtime: pip install 'nmt[export]'") from None
        if not directory.is_dir():
            raise EngineError(
                f"{directory} is a checkpoint: ONNX Runtime runs a model directory with graphs, "
                f"`nmt-export {directory} DIR --onnx`"
            )
        description = json.loads((directory / CONFIG).read_text(encoding="utf-8")).get("onnx")
        if not description:
            raise EngineError(f"{directory} has no ONNX graphs: export it with `nmt-export RUN {directory} --onnx`")
        return cls(directory, description, int8, threads)

    def sessions(self):
        """(encoder, step) sessions of this process."""
        if self._sessions is None or self._sessions[0] != os.getpid():
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.threads or torch.get_num_threads()
            options.inter_op_num_threads = 1
            options.log_severity_level = 3  # errors only: its warnings are about its own internals
            made = [
                onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for path in self.paths
            ]
            self._sessions = (os.getpid(), *made)
        return self._sessions[1:]

    # --- the decoding protocol -----------------------------------------------------------------
    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> OnnxEncoding:
        encoder, _ = self.sessions()
        feeds = {"src": _array(src), "src_lengths": _array(src_lengths)}
        named = dict(zip(self.encoder_outputs, map(torch.from_numpy, encoder.run(self.encoder_outputs, feeds))))
        hidden = RecurrentState(named["h"], named.get("c"))
        return OnnxEncoding(named["memory"], named.get("keys"), named["src_mask"], hidden, named.get("attentional"))

    def init_decoder(self, encoding: OnnxEncoding) -> DecoderState:
        return DecoderState(encoding.hidden, encoding.memory, encoding.keys, encoding.src_mask, encoding.attentional)

    def step(self, prev_tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        _, step = self.sessions()
        values = {
            "prev_tokens": prev_tokens,
            "h": state.hidden.h,
            "c": state.hidden.c,
            "attentional": state.attentional,
            "memory": state.memory,
            "keys": state.keys,
            "src_mask": state.src_mask,
        }
        feeds = {name: _array(values[name]) for name in self.step_inputs}
        named = dict(zip(self.step_outputs, map(torch.from_numpy, step.run(self.step_outputs, feeds))))
        state = DecoderState(
            hidden=RecurrentState(named["h_out"], named.get("c_out")),
            memory=state.memory,
            keys=state.keys,
            src_mask=state.src_mask,
            attentional=named.get("attentional_out"),
            attention_weights=named.get("attention_weights"),
            beams=state.beams,
        )
        return named["log_probs"], state


def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().numpy())


def _with_suffix(name: str, suffix: str) -> str:
    path = Path(name)
    return path.stem + suffix + path.suffix
