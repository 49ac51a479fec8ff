"""The gate inspector: what the gates of every encoder and decoder layer do on one sentence.

    nmt-inspect RUN_OR_CKPT "Ein Mann fährt Fahrrad." -o DIR

translates the sentence (greedy), replays the encoder and the decoder over it with the explicit
cells, and writes, per layer (and direction), a PNG with one heatmap per gate (time x units,
the pieces on the time axis) and the cell-state norm per step (the hidden state's for gru and
rnn), plus `gates.json` with the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from nmt.batching import collate_src
from nmt.cells import Gates
from nmt.search import SearchOptions, greedy_search
from nmt.tokenizer import BOS_ID, Tokenizer

log = logging.getLogger(__name__)


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
    hypothesis = greedy_search(model, src, src_lengths, SearchOptions())[0]
    encoded = model.encoder(src, src_lengths, record_gates=True)
    state = model.init_decoder(encoded)
    tgt_in = torch.tensor([[BOS_ID, *hypothesis.tokens]], device=device)
    decoder_gates = model.decoder.record_gates(tgt_in, state)
    model.train(was_training)
    src_pieces = [*tokenizer.src_id_pieces(src_ids), "</s>"]
    # Decoder step t reads the previous piece and predicts the next one: label it by its input.
    # Every step gets a label, even where the hypothesis holds special ids (an untrained model).
    tgt_pieces = ["<s>", *tokenizer.tgt_id_pieces(hypothesis.tokens)]
    directions = model.encoder.rnn.num_directions
    layers = [_layer("encoder", index, directions, src_pieces, gates) for index, gates in enumerate(encoded.gates)]
    layers += [_layer("decoder", index, 1, tgt_pieces, gates) for index, gates in enumerate(decoder_gates)]
    return tokenizer.decode_tgt([hypothesis.tokens])[0], layers


def _layer(side: str, index: int, directions: int, pieces: list[str], gates: Gates) -> LayerGates:
    layer, direction = divmod(index, directions)
    return LayerGates(side, layer, "backward" if direction else "forward", pieces,
                      {name: value[0].float().cpu() for name, value in gates.items()})  # fmt: skip


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
            {"side": l.side, "layer": l.layer, "direction": l.direction, "pieces": l.pieces,
             "gates": {name: value.tolist() for name, value in l.gates.items() if name not in ("cell", "hidden")},
             "cell_norm": None if l.cell_norm is None else l.cell_norm.tolist(),
             "hidden_norm": None if l.hidden_norm is None else l.hidden_norm.tolist()}
            for l in layers
        ],
    }  # fmt: skip
    (out_dir / "gates.json").write_text(json.dumps(numbers) + "\n", encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    parser = argparse.ArgumentParser(prog="nmt-inspect", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", metavar="RUN_OR_CKPT")
    parser.add_argument("sentence")
    parser.add_argument("-o", "--output", type=Path, required=True, help="directory for the PNGs and gates.json")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    from nmt.checkpoint import CheckpointError
    from nmt.translate import load_model

    try:
        model, tokenizer, _ = load_model(args.checkpoint, args.device)
        if not args.sentence.strip():
            raise ValueError("the sentence is empty")
        translation, layers = inspect_sentence(model, tokenizer, args.sentence, next(model.parameters()).device)
        paths = write_inspection(translation, layers, args.sentence, args.output)
    except (CheckpointError, ValueError, RuntimeError, OSError) as error:
        print(f"nmt-inspect: {error}", file=sys.stderr)
        return 2
    print(translation)
    log.info("wrote %d plots and gates.json to %s", len(paths), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
