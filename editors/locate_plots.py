"""Pictures of a located mechanism: the heads' attribution as a layer × head heatmap, and a
circuit as a layered graph (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import torch

from editors.circuits import Circuit
from editors.locate import Attribution


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_head_attribution(
    attribution: Attribution, n_layers: int, n_heads: int, path: str | Path, title: str = ""
) -> Path:
    """Each head's estimated effect of patching in its corrupted activation (blue: the head carries
    the behaviour), with the value written in every cell."""
    plt = _pyplot()
    grid = attribution.heads_grid(n_layers, n_heads)
    bound = float(torch.nan_to_num(grid.abs(), nan=0.0).max()) or 1.0
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * n_heads, 1.2 + 0.55 * n_layers))
    image = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    for layer in range(n_layers):
        for head in range(n_heads):
            value = float(grid[layer, head])
            if value == value:  # not NaN
                ax.text(head, layer, f"{value:.2g}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    fig.colorbar(image, ax=ax, fraction=0.046, label="estimated Δ metric when patched")
    ax.set_title(
        title or f"attribution (clean {attribution.clean_metric:.3g}, corrupted {attribution.corrupted_metric:.3g})",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_circuit(circuit: Circuit, n_layers: int, path: str | Path) -> Path:
    """The circuit's nodes placed by layer (bottom: embeddings, top: logits), each node joined to
    every circuit node of a later layer and to the logits (the residual stream lets any earlier
    node write to any later one); node size follows attribution importance."""
    plt = _pyplot()
    importance = {c: -e for c, e in circuit.attribution.ranked()}
    by_layer: dict[int, list] = {}
    for node in circuit.nodes:
        by_layer.setdefault(node.layer, []).append(node)
    where = {}
    for layer, nodes in by_layer.items():
        for i, node in enumerate(sorted(nodes)):
            where[node] = ((i + 1) / (len(nodes) + 1), layer + 1)
    top = max(importance.get(n, 0.0) for n in circuit.nodes) or 1.0
    fig, ax = plt.subplots(figsize=(6, 1.6 + 0.9 * n_layers))
    for node, (x, y) in where.items():
        for other, (x2, y2) in where.items():
            if other.layer > node.layer:
                ax.annotate("", (x2, y2), (x, y), arrowprops={"arrowstyle": "->", "color": "0.7", "lw": 0.8})
        ax.annotate("", (0.5, n_layers + 1), (x, y), arrowprops={"arrowstyle": "->", "color": "0.85", "lw": 0.6})
        size = 300 + 900 * max(importance.get(node, 0.0), 0.0) / top
        ax.scatter([x], [y], s=size, color="tab:purple" if node.kind == "head" else "tab:orange", zorder=3)
        ax.text(x + 0.05, y, node.name, ha="left", va="center", fontsize=8)
    ax.text(0.5, 0, "embeddings", ha="center", va="center", fontsize=8)
    ax.text(0.5, n_layers + 1, "logits", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, n_layers + 1.5)
    ax.set_yticks(range(1, n_layers + 1), [f"layer {i}" for i in range(n_layers)], fontsize=8)
    ax.set_xticks([])
    ax.set_title(
        f"circuit: faithfulness {circuit.faithfulness:.2f}, completeness {circuit.completeness:.2f} (held out)",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
