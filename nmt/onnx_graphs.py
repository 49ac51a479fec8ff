"""A model as two ONNX graphs, for ONNX Runtime or any other ONNX engine (`nmt-export --onnx`).

    encoder.onnx       src (batch, src_len) int64, src_lengths (batch,) int64 ->
                       memory (batch, src_len, memory_size), [keys (batch, src_len, key_size)],
                       src_mask (batch, src_len) bool, h (decoder_layers, batch, hidden), [c],
                       [attentional (batch, attentional_size): zeros, the first step's]
    decoder_step.onnx  prev_tokens (rows,) int64, h, [c], [attentional (rows, attentional_size)],
                       [memory, keys, src_mask] (sentences, src_len, ...) ->
                       log_probs (rows, tgt_vocab), h_out, [c_out], [attentional_out],
                       [attention_weights (rows, src_len)]

The encoder graph holds the bridge and the attention's key projection, so a search runs the
encoder once per batch and the step once per target piece; the rows of a step are `beams`
consecutive rows per sentence of the memory (rows = sentences * beams), as in
`nmt.model.decoder.DecoderState`. Inputs in brackets are there when the model has them (a cell
state, input feeding, attention). Batch, rows, sentences and source length are dynamic.

The graphs come from torch's exporter (`torch.onnx.export(dynamo=True)`) over the model's own
modules, so they compute what the model computes. The encoder's stack runs as one ONNX LSTM or
GRU node per layer (`nmt.onnx_kernels`: torch's kernel, or an exact identity of it for
peephole, cifg and rnn cells), handed each sentence's length (`sequence_lens`) as a packed sequence hands
it to torch: padding never reaches a state, and the backward direction starts at each
sentence's last token. A decoder step is plain tensor algebra, for every cell.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nmt.data.special import EOS_ID, PAD_ID
from nmt.model.decoder import DecoderState
from nmt.model.encoder import EncoderOutput, RecurrentState
from nmt.model.seq2seq import Seq2Seq
from nmt.onnx_engine import INT8_SUFFIX, OnnxModel
from nmt.onnx_kernels import ExportError, complete_recurrent_nodes, export_kernel

log = logging.getLogger(__name__)

ENCODER, DECODER_STEP = "encoder.onnx", "decoder_step.onnx"
OPSET = 18


@dataclass(frozen=True)
class GraphSignature:
    """Which optional tensors a model's graphs carry."""

    cell_state: bool  # the decoder's c
    input_feeding: bool  # attentional in and out of the step
    attention: bool  # keys in the encoding, memory, keys and mask into the step

    @classmethod
    def of(cls, model: Seq2Seq) -> GraphSignature:
        decoder = model.decoder
        return cls(decoder.rnn.has_cell_state, decoder.input_feeding, decoder.attention is not None)

    @property
    def encoder_outputs(self) -> list[str]:
        return [
            "memory",
            *(["keys"] if self.attention else []),
            "src_mask",
            "h",
            *(["c"] if self.cell_state else []),
            *(["attentional"] if self.input_feeding else []),
        ]

    @property
    def step_inputs(self) -> list[str]:
        return [
            "prev_tokens",
            "h",
            *(["c"] if self.cell_state else []),
            *(["attentional"] if self.input_feeding else []),
            *(["memory", "keys", "src_mask"] if self.attention else []),
        ]

    @property
    def step_outputs(self) -> list[str]:
        return [
            "log_probs",
            "h_out",
            *(["c_out"] if self.cell_state else []),
            *(["attentional_out"] if self.input_feeding else []),
            *(["attention_weights"] if self.attention else []),
        ]


class EncoderGraph(nn.Module):
    """The encoder, the bridge and the key projection, with the stack as one fused kernel."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.model = model
        self.kernel, self.peepholes = export_kernel(model.encoder.rnn)
        self.signature = GraphSignature.of(model)

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor):
        encoder = self.model.encoder
        embedded = encoder.embed(src)  # (batch, src_len, embed_dim)
        # Lengths reach the kernel by `sequence_lens`, set on the exported graph
        # (complete_recurrent_nodes).
        memory, final = self.kernel(embedded)  # (batch, src_len, output_size)
        h, c = final if encoder.rnn.has_cell_state else (final, None)
        c = None if c is None else encoder._join_directions(c)
        encoded = EncoderOutput(memory, src != PAD_ID, RecurrentState(encoder._join_directions(h), c))
        state = self.model.init_decoder(encoded)  # the bridge, the keys, the first attentional zeros
        named = {
            "memory": state.memory,
            "keys": state.keys,
            "src_mask": state.src_mask,
            "h": state.hidden.h,
            "c": state.hidden.c,
            "attentional": state.attentional,
        }
        return tuple(named[name] for name in self.signature.encoder_outputs)


class StepGraph(nn.Module):
    """One decoder step over rows of hypotheses, `beams` rows per sentence of the memory."""

    def __init__(self, model: Seq2Seq) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.signature = GraphSignature.of(model)

    def forward(self, *inputs: torch.Tensor):
        named = dict(zip(self.signature.step_inputs, inputs))
        state = DecoderState(
            hidden=RecurrentState(named["h"], named.get("c")),
            memory=named.get("memory"),
            keys=named.get("keys"),
            src_mask=named.get("src_mask"),
            attentional=named.get("attentional"),
        )
        log_probs, state = self.decoder.step(named["prev_tokens"], state)
        outputs = {
            "log_probs": log_probs,
            "h_out": state.hidden.h,
            "c_out": state.hidden.c,
            "attentional_out": state.attentional,
            "attention_weights": state.attention_weights,
        }
        return tuple(outputs[name] for name in self.signature.step_outputs)


def example_encoder_inputs(batch: int, src_len: int, vocab_size: int, generator: torch.Generator):
    """Random sources with eos and padding, longest first not required -> (src, src_lengths)."""
    src_lengths = torch.randint(1, src_len + 1, (batch,), generator=generator)
    src_lengths[0] = src_len  # the batch is as long as its longest sentence
    src = torch.randint(EOS_ID + 1, vocab_size, (batch, src_len), generator=generator)
    positions = torch.arange(src_len)
    src[positions.unsqueeze(0) == (src_lengths - 1).unsqueeze(1)] = EOS_ID
    src[positions.unsqueeze(0) >= src_lengths.unsqueeze(1)] = PAD_ID
    return src, src_lengths


def example_step_inputs(model: Seq2Seq, sentences: int, beams: int, src_len: int, generator: torch.Generator):
    """A random decoder state of `sentences * beams` rows, as the step graph takes it."""
    signature, decoder = GraphSignature.of(model), model.decoder
    rows, layers, hidden = sentences * beams, decoder.rnn.num_layers, decoder.rnn.hidden_size
    src, src_lengths = example_encoder_inputs(sentences, src_len, model.encoder.embed.num_embeddings, generator)
    encoded = model.encode(src, src_lengths)
    memory = encoded.memory
    tensors = {
        "prev_tokens": torch.randint(EOS_ID + 1, decoder.embed.num_embeddings, (rows,), generator=generator),
        "h": torch.randn(layers, rows, hidden, generator=generator) * 0.5,
        "c": torch.randn(layers, rows, hidden, generator=generator),
        "attentional": torch.rand(rows, decoder.attentional_size, generator=generator) * 2 - 1,
        "memory": memory,
        "keys": decoder.attention.project_keys(memory) if decoder.attention is not None else None,
        "src_mask": encoded.mask,
    }
    return tuple(tensors[name] for name in signature.step_inputs)


def export_graphs(model: Seq2Seq, directory: Path) -> dict:
    """Write encoder.onnx and decoder_step.onnx of `model` (float32, eval mode) into `directory`
    -> their description for config.json."""
    import onnx

    model = model.float().eval()
    signature = GraphSignature.of(model)
    generator = torch.Generator().manual_seed(0)
    encoder_graph, step_graph = EncoderGraph(model).eval(), StepGraph(model).eval()
    batch, src_len = torch.export.Dim("batch"), torch.export.Dim("src_len")
    rows, sentences = torch.export.Dim("rows"), torch.export.Dim("sentences")
    with torch.no_grad():
        encoder_args = example_encoder_inputs(3, 7, model.encoder.embed.num_embeddings, generator)
        step_args = example_step_inputs(model, 3, 2, 7, generator)
    step_axes = {
        "prev_tokens": {0: rows},
        "h": {1: rows},
        "c": {1: rows},
        "attentional": {0: rows},
        "memory": {0: sentences, 1: src_len},
        "keys": {0: sentences, 1: src_len},
        "src_mask": {0: sentences, 1: src_len},
    }
    _export(
        encoder_graph,
        encoder_args,
        ({0: batch, 1: src_len}, {0: batch}),
        ["src", "src_lengths"],
        signature.encoder_outputs,
        directory / ENCODER,
    )
    # forward(*inputs): the varargs' shapes are one entry
    _export(
        step_graph,
        step_args,
        (tuple(step_axes[name] for name in signature.step_inputs),),
        signature.step_inputs,
        signature.step_outputs,
        directory / DECODER_STEP,
    )
    encoder_proto = onnx.load(str(directory / ENCODER))
    complete_recurrent_nodes(encoder_proto, encoder_graph.peepholes)
    onnx.save(encoder_proto, str(directory / ENCODER))
    for path in (directory / ENCODER, directory / DECODER_STEP):
        onnx.checker.check_model(str(path), full_check=True)
    return {
        "encoder": ENCODER,
        "decoder_step": DECODER_STEP,
        "opset": OPSET,
        "encoder_inputs": ["src", "src_lengths"],
        "encoder_outputs": signature.encoder_outputs,
        "step_inputs": signature.step_inputs,
        "step_outputs": signature.step_outputs,
    }


def _export(module: nn.Module, args, dynamic_shapes, input_names, output_names, path: Path) -> None:
    # Exported with gradients on (no parameter wants them): the in-place shortcuts that search
    # takes without autograd are then left out, and the graph holds the plain equations.
    wanted = {parameter: parameter.requires_grad for parameter in module.parameters()}
    for parameter in wanted:
        parameter.requires_grad_(False)
    try:
        _run_exporter(module, args, dynamic_shapes, input_names, output_names, path)
    finally:
        for parameter, requires_grad in wanted.items():
            parameter.requires_grad_(requires_grad)


def _run_exporter(module: nn.Module, args, dynamic_shapes, input_names, output_names, path: Path) -> None:
    with torch.enable_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=OPSET,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
            external_data=False,
            verbose=False,
        )


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter prints each of its stages and ONNX Runtime's quantizer logs advice on the
    root logger; a command line that exports says what it did once."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")] + [logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def compare_with_torch(model: Seq2Seq, graphs: OnnxModel, batches: int = 100, steps: int = 3, seed: int = 0) -> float:
    """The largest absolute difference of next-piece log-probabilities between the graphs and
    the torch `model`, over `batches` random batches (1-8 sentences of 1-40 pieces, 1-5 beams),
    each decoded `steps` steps from random pieces with random beam moves."""
    generator = torch.Generator().manual_seed(seed)
    largest = 0.0
    model = model.eval()
    vocab = model.decoder.embed.num_embeddings
    for _ in range(batches):
        sentences, beams, src_len = (
            int(torch.randint(low, high, (), generator=generator)) for low, high in ((1, 9), (1, 6), (1, 41))
        )
        src, src_lengths = example_encoder_inputs(sentences, src_len, model.encoder.embed.num_embeddings, generator)
        expand = torch.arange(sentences).repeat_interleave(beams)
        with torch.inference_mode():
            states = [
                searcher.init_decoder(searcher.encode(src, src_lengths)).reorder_beams(expand)
                for searcher in (model, graphs)
            ]
            for _ in range(steps):
                tokens = torch.randint(EOS_ID + 1, vocab, (sentences * beams,), generator=generator)
                results = [searcher.step(tokens, state) for searcher, state in zip((model, graphs), states)]
                difference = (results[0][0] - results[1][0]).abs().max()
                largest = max(largest, float(difference))
                parents = expand * beams + torch.randint(0, beams, (sentences * beams,), generator=generator)
                states = [state.reorder_beams(parents) for _, state in results]
    return largest


# The largest log-probability difference a float32 export may show against torch: float sums in
# another order differ by ~1e-5; a wrong graph differs by whole units.
TOLERANCE = 1e-3


def write_graphs(model: Seq2Seq, directory: Path, int8: bool = False, check_batches: int = 100) -> dict:
    """Export `model`'s graphs into `directory` (with int8 copies, `quantize_dynamic`, if asked),
    check them against torch on `check_batches` random batches -> their description for
    config.json, the check's figures included."""
    description = export_graphs(model, directory)  # leaves the model float32, in eval mode
    difference = compare_with_torch(model, OnnxModel(directory, description), check_batches)
    if difference > TOLERANCE:
        raise ExportError(
            f"the exported graphs differ from the torch model by {difference:.3g} in a log-probability "
            f"(more than {TOLERANCE}); this is a bug of the export, please report it"
        )
    description["check"] = {"random_batches": check_batches, "max_abs_log_prob_difference": difference}
    log.info(
        "ONNX graphs against torch on %d random batches: largest log-probability difference %.3g",
        check_batches,
        difference,
    )
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for name in (ENCODER, DECODER_STEP):
            path = directory / name
            with _quiet_exporter():
                quantize_dynamic(
                    path, path.with_name(path.stem + INT8_SUFFIX + path.suffix), weight_type=QuantType.QInt8
                )
        quantized = compare_with_torch(model, OnnxModel(directory, description, int8=True), check_batches)
        description["int8"] = {"max_abs_log_prob_difference": quantized}
        log.info("int8 graphs: largest log-probability difference %.3g (quantization's own error)", quantized)
    return description
