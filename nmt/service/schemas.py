"""The service's request and response bodies (pydantic): FastAPI checks them and writes the OpenAPI
schema from them. Search defaults are SearchOptions', so they live once."""

from __future__ import annotations

from dataclasses import fields
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nmt.options import LENGTH_PENALTIES, STOPPING_RULES, SearchOptions

_DEFAULT = SearchOptions()
_HELP = {f.name: f.metadata.get("help", "") for f in fields(SearchOptions)}


def _option(name: str, **constraints):
    return Field(getattr(_DEFAULT, name), description=_HELP[name], **constraints)


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segments: list[str] = Field(description="the texts to translate, one result each, in order")
    beam: int = Field(_DEFAULT.beam_size, ge=1, description=_HELP["beam_size"])
    nbest: int = _option("nbest", ge=1)
    length_penalty: Literal[tuple(LENGTH_PENALTIES)] = _option("length_penalty")  # type: ignore[valid-type]
    alpha: float = _option("alpha", ge=0)
    stopping: Literal[tuple(STOPPING_RULES)] = _option("stopping")  # type: ignore[valid-type]
    min_len: int = _option("min_len", ge=0)
    max_len_a: float = _option("max_len_a", ge=0)
    max_len_b: int = _option("max_len_b", ge=0)
    no_repeat_ngram: int = _option("no_repeat_ngram", ge=0)
    sample: bool = _option("sample")
    temperature: float = _option("temperature", gt=0)
    top_k: int = _option("top_k", ge=0)
    top_p: float = _option("top_p", gt=0, le=1)
    seed: int = _option("seed")


class Hypothesis(BaseModel):
    text: str
    score: float


class SegmentResult(BaseModel):
    text: str = Field(description="the best translation; empty for an empty segment")
    score: float = Field(description="its log-probability after the length penalty")
    nbest: list[Hypothesis] | None = Field(None, description="with nbest > 1: the n best, best first")


class TranslateResponse(BaseModel):
    translations: list[SegmentResult]
    model: str = Field(description="sha256 of the checkpoint that translated")
    ms: float = Field(description="milliseconds from the request's arrival to its answer")


class InspectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sentence: str


class LayerGates(BaseModel):
    name: str
    side: Literal["encoder", "decoder"]
    layer: int
    direction: Literal["forward", "backward"]
    pieces: list[str] = Field(description="the time axis")
    gates: dict[str, list[list[float]]] = Field(description="gate name -> (time, units) activations")
    state_norm: list[float] = Field(description="the cell state's norm per step (the hidden state's for gru, rnn)")
    state: Literal["cell", "hidden"]


class InspectResponse(BaseModel):
    sentence: str
    translation: str
    src_pieces: list[str]
    tgt_pieces: list[str]
    attention: list[list[float]] | None = Field(description="(target pieces, source pieces); null without attention")
    layers: list[LayerGates]


class ModelInfo(BaseModel):
    checkpoint: str
    sha256: str
    src_lang: str
    tgt_lang: str
    encoder_cell: str
    decoder_cell: str
    attention: str
    parameters: int
    precision: str
    quantize: str
    device: str
    src_vocab_size: int
    tgt_vocab_size: int


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(None, description="run directory or .pt; default: the one serving, re-read")
