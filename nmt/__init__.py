"""nmt: LSTM encoder-decoder translation, from SentencePiece to beam search.

    from nmt import Translator

    translator = Translator.load("runs/multi30k_de_en/<time>", beam_size=5)
    translator.translate(["Ein Mann fährt Fahrrad."])

Importing `nmt` (or `nmt.config`, `nmt.options`) does not import torch: the names below load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"
__all__ = ["InferenceOptions", "SearchOptions", "Translation", "Translator", "__version__", "load_model"]

if TYPE_CHECKING:
    from nmt.options import InferenceOptions, SearchOptions
    from nmt.translation import Translation, Translator, load_model

_HOMES = {
    "Translator": "nmt.translation",
    "Translation": "nmt.translation",
    "load_model": "nmt.translation",
    "SearchOptions": "nmt.options",
    "InferenceOptions": "nmt.options",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
