"""The service's request and response bodies (pydantic): FastAPI checks them and writes the OpenAPI
schema from them. The search options of a translate request are generated from SearchOptions'
fields (their defaults, help and choices), named as nmt-translate's flags (`beam`), so a new
option reaches the service with no edit here; SearchOptions' own checks judge their values."""

from __future__ import annotations

from dataclasses import Field as DataclassField
from dataclasses import fields
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from nmt.options import SearchOptions

Options = TypeVar("Options")


def request_name(spec: DataclassField) -> str:
    """An option's name in a request: its command-line flag's (`--beam` -> beam), else its own."""
    flags = spec.metadata.get("flags")
    return flags[0].lstrip("-").replace("-", "_") if flags else spec.name


def offered(options_class: type) -> list[DataclassField]:
    """The fields that users set (the command lines' flags, the requests' fields)."""
    return [spec for spec in fields(options_class) if spec.metadata.get("cli", True)]


def translate_request_model(options_class: type = SearchOptions) -> type[BaseModel]:
    """The translate request: its segments and one field per option of `options_class`."""
    options: dict[str, Any] = {}
    for spec in offered(options_class):
        choices = spec.metadata.get("choices")
        annotation = Literal[tuple(choices)] if choices else type(spec.default)
        options[request_name(spec)] = (annotation, Field(spec.default, description=spec.metadata.get("help", "")))
    return create_model(
        "TranslateRequest",
        __config__=ConfigDict(extra="forbid"),
        segments=(list[str], Field(description="the texts to translate, one result each, in order")),
        **options,
    )


def options_of(request: BaseModel, options_class: type[Options] = SearchOptions) -> Options:  # type: ignore[assignment]
    """The request's options as `options_class` (its checks run: ConfigError on a bad value)."""
    return options_class(**{spec.name: getattr(request, request_name(spec)) for spec in offered(options_class)})


TranslateRequest = translate_request_model()


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
