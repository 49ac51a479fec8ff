"""Heatmaps of attention: source pieces on one axis, target pieces on the other."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def attention_figure(weights: torch.Tensor, src_pieces: list[str], tgt_pieces: list[str]) -> plt.Figure:
    """weights (tgt_len, src_len): row i is the attention while producing target piece i."""
    weights = weights[: len(tgt_pieces), : len(src_pieces)].float().numpy()
    height = max(2.5, 0.28 * len(tgt_pieces) + 1.2)
    width = max(3.0, 0.28 * len(src_pieces) + 1.8)
    figure, axes = plt.subplots(figsize=(min(width, 40), min(height, 40)))
    image = axes.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axes.set_xticks(np.arange(len(src_pieces)), labels=src_pieces, rotation=90, fontsize=8)
    axes.set_yticks(np.arange(len(tgt_pieces)), labels=tgt_pieces, fontsize=8)
    axes.set_xlabel("source")
    axes.set_ylabel("target")
    figure.colorbar(image, ax=axes, fraction=0.04)
    figure.tight_layout()
    return figure


def save_attention_heatmap(
    weights: torch.Tensor, src_pieces: list[str], tgt_pieces: list[str], path: Path
) -> None:
    figure = attention_figure(weights, src_pieces, tgt_pieces)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
