"""The model card of a model directory: the Hugging Face Hub's README.md, YAML front matter first
(languages, license, tags, library, metrics and a model-index of the run's saved evaluations with
their sacrebleu signatures), then how the model was trained and how to use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from nmt.checkpoint import Checkpoint

METRICS = {"BLEU": "bleu", "chrF2": "chrf", "TER": "ter", "BLEU-lc": "bleu"}


def saved_evaluations(results_dir: Path) -> list[dict[str, Any]]:
    """The JSON results `nmt-evaluate` wrote into a run's results/, oldest first."""
    found = []
    for path in sorted(results_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(result, dict) and result.get("scores") and result.get("split"):
            found.append(result)
    return found


def model_card(
    checkpoint: Checkpoint,
    name: str,
    evaluations: list[dict[str, Any]],
    license: str | None,
    onnx: str | None = None,
) -> str:
    """The card; `onnx`: the directory also holds ONNX graphs, "fp32" or "int8" (with int8 copies)."""
    config = checkpoint.config
    data, model = config.data, config.model
    pair = f"{data.src_lang}-{data.tgt_lang}"
    front: dict[str, Any] = {"language": [data.src_lang, data.tgt_lang]}
    if license:
        front["license"] = license
    tags = ["translation", "nmt", "lstm", *(["onnx"] if onnx else [])]
    front |= {"tags": tags, "library_name": "nmt", "pipeline_tag": "translation"}
    results = [_result(evaluation, pair, data.name) for evaluation in evaluations]
    if results:
        front["metrics"] = sorted({metric["type"] for result in results for metric in result["metrics"]})
        front["model-index"] = [{"name": name, "results": results}]
    cells = (
        f"{model.encoder.cell} encoder ({model.encoder.num_layers} x {model.encoder.hidden_size}), "
        f"{model.decoder.cell} decoder ({model.decoder.num_layers} x {model.decoder.hidden_size})"
    )
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        f"A {data.src_lang}→{data.tgt_lang} translation model of [nmt](https://pypi.org/project/nmt/): an LSTM "
        f"encoder-decoder, {cells}, attention `{model.attention}`, trained on `{data.source or data.name}` "
        f"for {checkpoint.progress.step:,} updates ({checkpoint.progress.epoch} epochs)."
        + (
            f" The weights are the mean of {len(checkpoint.averaged_from)} checkpoints."
            if checkpoint.averaged_from
            else ""
        ),
        "",
        "## Use",
        "",
        "```bash",
        "pip install nmt[export]",
        f'echo "..." | nmt-translate {name} --beam 5',
        "```",
        "",
        "```python",
        "from nmt import Translator",
        f'Translator.load("{name}", beam_size=5).translate(["..."])',
        "```",
        "",
        *(_onnx_lines(name, onnx) if onnx else []),
        "## Evaluation",
        "",
        *(
            _evaluation_lines(evaluations)
            or ["No evaluation was saved with the run (`nmt-evaluate RUN --split test`)."]
        ),
        "",
        "## Training config",
        "",
        "```yaml",
        yaml.safe_dump(config.to_dict(), sort_keys=False, allow_unicode=True).rstrip(),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _onnx_lines(name: str, onnx: str) -> list[str]:
    int8 = onnx == "int8"
    return [
        "The directory also holds the model as two ONNX graphs, `encoder.onnx` and `decoder_step.onnx`"
        + (" (and int8 copies, `*.int8.onnx`)" if int8 else "")
        + ", for ONNX Runtime or any other ONNX engine:",
        "",
        "```bash",
        f'echo "..." | nmt-translate {name} --beam 5 --engine onnxruntime' + (" [--quantize int8]" if int8 else ""),
        "```",
        "",
    ]


def _result(evaluation: dict[str, Any], pair: str, dataset: str) -> dict[str, Any]:
    metrics = [
        {
            "type": METRICS.get(score["name"], score["name"].lower()),
            "value": round(score["score"], 2),
            "name": f"{score['name']} (beam {evaluation.get('beam', '?')})",
            "args": {"signature": score["signature"]},
        }
        for score in evaluation["scores"]
    ]
    return {
        "task": {"type": "translation", "name": f"Translation {pair}"},
        "dataset": {"type": dataset, "name": f"{dataset} {evaluation['split']}", "split": evaluation["split"]},
        "metrics": metrics,
    }


def _evaluation_lines(evaluations: list[dict[str, Any]]) -> list[str]:
    if not evaluations:
        return []
    lines = ["| split | beam | sentences | score | signature |", "| --- | ---: | ---: | ---: | --- |"]
    for evaluation in evaluations:
        for score in evaluation["scores"]:
            lines.append(
                f"| {evaluation['split']} | {evaluation.get('beam', '?')} | {evaluation.get('sentences', '?')} | "
                f"{score['name']} {score['score']:.2f} | `{score['signature']}` |"
            )
    return lines
