"""Plots of a run folder (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def confusion(path: Path, y_true: torch.Tensor, y_pred: torch.Tensor, classes: int,
              title: str) -> None:
    m = torch.zeros(classes, classes, dtype=torch.int64)
    m.index_put_((y_true, y_pred), torch.ones_like(y_true), accumulate=True)
    fig, ax = plt.subplots(figsize=(5, 4.4))
    im = ax.imshow(m, cmap="Blues")
    for i in range(classes):
        for j in range(classes):
            if m[i, j]:
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title, xticks=range(classes),
           yticks=range(classes))
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def raster(path: Path, spikes: list[torch.Tensor], title: str) -> None:
    """``spikes[l]``: binary ``[T, n]`` of one sample; one panel per layer."""
    fig, axes = plt.subplots(len(spikes), 1, figsize=(7, 1.6 * len(spikes) + 0.6), squeeze=False)
    for l, (ax, s) in enumerate(zip(axes[:, 0], spikes)):
        t, n = s.nonzero(as_tuple=True)
        ax.scatter(t, n, s=1.5, marker="|", color="k")
        ax.set(xlim=(-0.5, s.shape[0] - 0.5), ylim=(-0.5, s.shape[1] - 0.5),
               ylabel=f"layer {l}\nneuron")
    axes[-1, 0].set_xlabel("time step")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bars(path: Path, series: dict[str, list[float]], ylabel: str, title: str,
         stacked: bool = False) -> None:
    """One group (or stack) of bars per layer for each named series."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    n = len(next(iter(series.values())))
    x = torch.arange(n).float()
    width = 0.8 if stacked else 0.8 / len(series)
    bottom = torch.zeros(n)
    for k, (name, vals) in enumerate(series.items()):
        v = torch.tensor(vals, dtype=torch.float32)
        if stacked:
            ax.bar(x, v, width, bottom=bottom, label=name)
            bottom += v
        else:
            ax.bar(x + (k - (len(series) - 1) / 2) * width, v, width, label=name)
    ax.set(xticks=x.tolist(), xticklabels=[f"L{i}" for i in range(n)], ylabel=ylabel, title=title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pareto(path: Path, plan: dict) -> None:
    """The planner's candidates: inferences/s against logic cells and against
    block RAM, the Pareto front drawn, those that do not fit hollow, the
    chosen point (and a hand override) marked."""
    from spikeforge.hw.plan import pareto as front
    cands = plan["candidates"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, key, label in ((axes[0], "cells", "logic cells (predicted)"),
                           (axes[1], "bram", "block RAM")):
        for fits, style in ((True, dict(color="C0")), (False, dict(facecolors="none",
                                                                     edgecolors="C7"))):
            pts = [c for c in cands if c["fits"] == fits]
            ax.scatter([c[key] for c in pts], [c["inferences_per_second"] for c in pts], s=16,
                       label="fits" if fits else "does not fit", **style)
        pf = front([c for c in cands if c["fits"]], key)
        ax.plot([c[key] for c in pf], [c["inferences_per_second"] for c in pf], "C0-", lw=1,
                alpha=0.6)
        for which, mark in (("chosen", "C3*"), ("override", "C2D")):
            c = plan.get(which)
            if c:
                ax.plot(c[key], c["inferences_per_second"], mark, ms=11,
                        label=f"{which} {c['lanes']}")
        ax.set(xlabel=label)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="inferences/s (predicted)",
                title=f"plan for {plan['device']}")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
