"""`/inspect`'s numbers: one sentence's translation, attention and gates, as plain lists (JSON)."""

from __future__ import annotations

from typing import Any

import torch

from nmt.inspection import inspect_sentence
from nmt.options import SearchOptions
from nmt.service.engine import LoadedModel, clean_segment

DIGITS = 4  # enough for a heatmap; keeps the JSON of a 2 x 512-unit model small


def inspect_payload(loaded: LoadedModel, sentence: str) -> dict[str, Any]:
    translator = loaded.translator
    sentence = clean_segment(sentence).strip()
    src_ids = translator.tokenizer.encode_src([sentence])[0]
    greedy = translator.with_options(SearchOptions(beam_size=1, return_attention=True))
    best = greedy.search_ids([src_ids])[0][0]
    translation, layers = inspect_sentence(translator.model, translator.tokenizer, sentence, translator.device)
    attention = None if best.attention is None else _rounded(best.attention)
    return {
        "sentence": sentence,
        "translation": translation,
        "src_pieces": [*translator.tokenizer.src_id_pieces(src_ids), "</s>"],
        "tgt_pieces": [*translator.tokenizer.tgt_id_pieces(best.tokens), "</s>"],
        "attention": attention,
        "layers": [
            {
                "name": layer.name,
                "side": layer.side,
                "layer": layer.layer,
                "direction": layer.direction,
                "pieces": layer.pieces,
                "gates": {
                    name: _rounded(value) for name, value in layer.gates.items() if name not in ("cell", "hidden")
                },
                "state": "cell" if layer.cell_norm is not None else "hidden",
                "state_norm": _rounded(layer.cell_norm if layer.cell_norm is not None else layer.hidden_norm),
            }
            for layer in layers
        ],
    }


def _rounded(values: torch.Tensor) -> list:
    return torch.round(values.float(), decimals=DIGITS).tolist()
