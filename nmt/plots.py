"""Heatmaps of attention: source pieces on one axis, target pieces on the other."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted

import matplotlib.pyplot as plt
import numpy as np
import torch


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


def save_attention_heatmap(weights: torch.Tensor, src_pieces: list[str], tgt_pieces: list[str], path: Path) -> None:
    figure = attention_figure(weights, src_pieces, tgt_pieces)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


GATE_ORDER = ("forget", "input", "output", "update", "reset")


def gate_figure(gates: dict[str, torch.Tensor], pieces: list[str], title: str) -> plt.Figure:
    """One heatmap per gate, time (pieces) x units, values in [0, 1]; below them the norm of
    the cell state at every step (the hidden state's for gru and rnn; rnn has no gates)."""
    names = [name for name in GATE_ORDER if name in gates]
    # The state's norm per step: the cell state's, or the hidden state's for cells without one.
    state = "cell" if "cell" in gates else "hidden" if "hidden" in gates else None
    rows = len(names) + (1 if state else 0)
    if rows == 0:
        raise ValueError(f"nothing to plot for {title!r}: no gates and no state were recorded")
    time_steps = len(pieces)
    width = min(max(6.0, 0.3 * time_steps + 2.5), 40)
    figure, axes = plt.subplots(rows, 1, figsize=(width, 2.2 * rows + 0.8), squeeze=False, sharex=True)
    for ax, name in zip(axes[:, 0], names):
        values = gates[name][:time_steps].float().numpy().T  # (units, time)
        image = ax.imshow(values, cmap="magma", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        ax.set_ylabel(f"{name}\nunits", fontsize=9)
        figure.colorbar(image, ax=ax, fraction=0.03, pad=0.01)
    if state:
        ax = axes[-1, 0]
        ax.plot(np.arange(time_steps), gates[state][:time_steps].float().norm(dim=-1).numpy(), marker="o")
        ax.set_ylabel("|c_t|" if state == "cell" else "|h_t|", fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xticks(np.arange(time_steps), labels=pieces, rotation=90, fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def save_gate_figure(gates: dict[str, torch.Tensor], pieces: list[str], title: str, path: Path) -> None:
    figure = gate_figure(gates, pieces, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
