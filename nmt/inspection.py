"""The gate inspector: what the gates of every encoder and decoder layer do on one sentence.

`inspect_sentence` translates the sentence (greedy), replays the encoder and the decoder over it
with the explicit cells, and returns every layer's (and direction's) gates, hidden and cell
states per step; `write_inspection` writes per layer a PNG with one heatmap per gate (time x
units, the pieces on the time axis) and the cell-state norm per step (the hidden state's for gru
and rnn), plus `gates.json` with the numbers. Used by `nmt-inspect`, `nmt-translate --gates` and
training's TensorBoard figures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.data.batching import collate_src
from nmt.data.special import BOS_ID
from nmt.data.tokenizer import Tokenizer
from nmt.model.cells import Gates
from nmt.options import SearchOptions
from nmt.search import greedy_search


@dataclass
class LayerGates:
    side: str  # encoder | decoder
    layer: int
    direction: str  # forward | backward
    pieces: list[str]  # the time axis
    gates: dict[str, torch.Tensor]  # gate name -> (time, hidden); "cell" and "hidden": the states

    @property
    def name(self) -> str:
        return f"{self.side}_layer{self.layer}_{self.direction}"

    @property
    def cell_norm(self) -> torch.Tensor | None:
        return self.gates["cell"].norm(dim=-1) if "cell" in self.gates else None  # (time,)

    @property
    def hidden_norm(self) -> torch.Tensor | None:
        return self.gates["hidden"].norm(dim=-1) if "hidden" in self.gates else None  # (time,)


@torch.no_grad()
def inspect_sentence(model, tokenizer: Tokenizer, sentence: str, device: torch.device) -> tuple[str, list[LayerGates]]:
    """The greedy translation of `sentence` and the gates of every layer on it."""
    was_training = model.training
    model.eval()
    src_ids = tokenizer.encode_src([sentence.strip()])[0]
    src, src_lengths = collate_src([src_ids])
    src = src.to(device)
    hypothesis = greedy_search(model, src, src_lengths, SearchOptions(beam_size=1))[0][0]
    encoded = model.encoder(src, src_lengths, record_gates=True)
    state = model.init_decoder(encoded)
    tgt_in = torch.tensor([[BOS_ID, *hypothesis.tokens]], device=device)
    decoder_gates = model.decoder.record_gates(tgt_in, state)
    model.train(was_training)
    src_pieces = [*tokenizer.src_id_pieces(src_ids), "</s>"]
    # Decoder step t reads the previous piece and predicts the next one: label it by its input.
    # Every step gets a label, even where the hypothesis holds special ids (an untrained model).
    tgt_pieces = ["<s>", *tokenizer.tgt_id_pieces(hypothesis.tokens)]
    directions = model.encoder.num_directions
    layers = [_layer("encoder", index, directions, src_pieces, gates) for index, gates in enumerate(encoded.gates)]
    layers += [_layer("decoder", index, 1, tgt_pieces, gates) for index, gates in enumerate(decoder_gates)]
    return tokenizer.decode_tgt([hypothesis.tokens])[0], layers


def _layer(side: str, index: int, directions: int, pieces: list[str], gates: Gates) -> LayerGates:
    layer, direction = divmod(index, directions)
    return LayerGates(
        side,
        layer,
        "backward" if direction else "forward",
        pieces,
        {name: value[0].float().cpu() for name, value in gates.items()},
    )


def write_inspection(translation: str, layers: list[LayerGates], sentence: str, out_dir: Path) -> list[Path]:
    from nmt.plots import save_gate_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for layer in layers:
        path = out_dir / f"{layer.name}.png"
        save_gate_figure(layer.gates, layer.pieces, f"{layer.side} layer {layer.layer} ({layer.direction})", path)
        paths.append(path)
    numbers = {
        "source": sentence,
        "translation": translation,
        "layers": [
            {
                "side": layer.side,
                "layer": layer.layer,
                "direction": layer.direction,
                "pieces": layer.pieces,
                "gates": {
                    name: value.tolist() for name, value in layer.gates.items() if name not in ("cell", "hidden")
                },
                "cell_norm": None if layer.cell_norm is None else layer.cell_norm.tolist(),
                "hidden_norm": None if layer.hidden_norm is None else layer.hidden_norm.tolist(),
            }
            for layer in layers
        ],
    }
    (out_dir / "gates.json").write_text(json.dumps(numbers) + "\n", encoding="utf-8")
    return paths
