"""Pictures of a located mechanism: the heads' attribution as a layer × head heatmap, and a
circuit as a layered graph (PNG, matplotlib's Agg backend: no display needed). Both take plain
values, so a client draws them from a DiscoverCircuit reply as well as from a local run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from editors.locate import Component


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_head_attribution(estimates: Mapping[Component, float], path: str | Path, title: str = "") -> Path:
    """Each head's estimated change of the metric when patched (blue: up, red: down; denoising
    raises the metric through the heads that carry the behaviour, noising lowers it), the value
    written in every cell."""
    plt = _pyplot()
    heads = {c: e for c, e in estimates.items() if c.kind == "head"}
    if not heads:
        raise ValueError("no head was scored")
    n_layers = 1 + max(c.layer for c in heads)
    n_heads = 1 + max(c.index for c in heads)
    grid = torch.full((n_layers, n_heads), float("nan"), dtype=torch.float64)
    for component, estimate in heads.items():
        grid[component.layer, component.index] = estimate
    bound = float(torch.nan_to_num(grid.abs(), nan=0.0).max()) or 1.0
    fig, ax = plt.subplots(figsize=(1.4 + 0.7 * n_heads, 1.2 + 0.55 * n_layers))
    image = ax.imshow(grid.numpy(), cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
    for component, value in heads.items():
        ax.text(component.index, component.layer, f"{value:.2g}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    fig.colorbar(image, ax=ax, fraction=0.046, label="estimated Δ metric when patched")
    ax.set_title(title or "attribution patching: heads", fontsize=9)
    return _save(plt, fig, path)


def plot_circuit(
    nodes: Sequence[Component],
    importance: Mapping[Component, float],
    n_layers: int,
    path: str | Path,
    title: str = "",
) -> Path:
    """The circuit's nodes placed by layer (bottom: embeddings, top: logits), each joined to every
    circuit node of a later layer and to the logits (the residual stream lets any earlier node
    write to any later one); node size follows ``importance`` (higher: bigger). SAE features and
    the error term sit on the residual stream entering their layer, between it and the one below."""
    plt = _pyplot()
    by_row: dict[float, list[Component]] = {}
    for node in nodes:
        by_row.setdefault(node.layer + (0.5 if node.kind in ("feature", "sae_error") else 1.0), []).append(node)
    where = {}
    for row, members in by_row.items():
        for i, node in enumerate(sorted(members)):
            where[node] = ((i + 1) / (len(members) + 1), row)
    top = max((importance.get(n, 0.0) for n in nodes), default=0.0) or 1.0
    widest = max((len(members) for members in by_row.values()), default=1)
    crowded = widest > 8  # a feature circuit's row: names stand upright, markers shrink
    fig, ax = plt.subplots(figsize=(max(6, 0.32 * widest), 1.6 + 0.9 * n_layers + (0.8 if crowded else 0)))
    for node, (x, y) in where.items():
        for x2, y2 in where.values():
            if y2 > y:
                ax.annotate("", (x2, y2), (x, y), arrowprops={"arrowstyle": "->", "color": "0.7", "lw": 0.8})
        ax.annotate("", (0.5, n_layers + 1), (x, y), arrowprops={"arrowstyle": "->", "color": "0.85", "lw": 0.6})
        size = (60 if crowded else 300) + (240 if crowded else 900) * max(importance.get(node, 0.0), 0.0) / top
        colour = {"head": "tab:purple", "feature": "tab:green", "sae_error": "tab:gray"}.get(node.kind, "tab:orange")
        ax.scatter([x], [y], s=size, color=colour, zorder=3)
        if crowded:
            ax.text(x, y - 0.12, node.name, ha="center", va="top", rotation=90, fontsize=6)
        else:
            ax.text(x + 0.05, y, node.name, ha="left", va="center", fontsize=8)
    ax.text(0.5, 0, "embeddings", ha="center", va="center", fontsize=8)
    ax.text(0.5, n_layers + 1, "logits", ha="center", va="center", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.5, n_layers + 1.5)
    ax.set_yticks(range(1, n_layers + 1), [f"layer {i}" for i in range(n_layers)], fontsize=8)
    ax.set_xticks([])
    ax.set_title(title or "circuit", fontsize=9)
    return _save(plt, fig, path)


def plot_edge_circuit(
    edges: Sequence[tuple[str, str, float]], n_layers: int, n_heads: int, path: str | Path, title: str = ""
) -> Path:
    """A circuit of edges (writer, reader, score): the embeddings at the bottom, each layer's heads
    then its MLP above, the logits on top; an edge into a head's query, key or value drawn blue,
    green or orange, its width following its score's size (every edge with its score's label)."""
    plt = _pyplot()
    where: dict[str, tuple[float, float]] = {"embed": (0.5, 0.0), "logits": (0.5, 2 * n_layers + 1)}
    for layer in range(n_layers):
        for head in range(n_heads):
            where[f"L{layer}.H{head}"] = ((head + 1) / (n_heads + 1), 2 * layer + 1)
        where[f"L{layer}.MLP"] = (0.5, 2 * layer + 2)
    colours = {"q": "tab:blue", "k": "tab:green", "v": "tab:orange"}
    largest = max((abs(score) for _, _, score in edges), default=1.0) or 1.0
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.9 * (2 * n_layers + 1)))
    used: set[str] = set()
    for writer, reader, score in edges:
        node, _, port = reader.rpartition(".") if reader.count(".") == 2 else (reader, "", "")
        (x, y), (x2, y2) = where[writer], where[node]
        x2 += {"q": -0.025, "k": 0.0, "v": 0.025}.get(port, 0.0)  # a head's three inputs side by side
        ax.annotate(
            "", (x2, y2 - 0.12), (x, y + 0.12),
            arrowprops={"arrowstyle": "->", "color": colours.get(port, "0.35"), "lw": 0.6 + 3.4 * abs(score) / largest,
                        "alpha": 0.8, "connectionstyle": "arc3,rad=0.08"},
        )  # fmt: skip
        used.update((writer, node))
    for name, (x, y) in where.items():
        active = name in used
        ax.scatter([x], [y], s=260 if active else 60, color="tab:purple" if ".H" in name else "tab:gray",
                   alpha=1.0 if active else 0.25, zorder=3)  # fmt: skip
        ax.text(x, y - 0.32, name, ha="center", va="top", fontsize=7, alpha=1.0 if active else 0.4)
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.8, 2 * n_layers + 1.6)
    ax.axis("off")
    ax.set_title(title or f"{len(edges)} edges (into q: blue, k: green, v: orange)", fontsize=9)
    return _save(plt, fig, path)
