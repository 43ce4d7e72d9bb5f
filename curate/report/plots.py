"""The report's plots: matplotlib figures rendered to PNG and returned as base64 ``data:`` URIs.

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas), never ``pyplot``: no global backend or
figure registry is touched, so the report can run inside any process (a notebook, a Ray worker, the tests).
matplotlib is imported inside the functions so that ``curate --help`` stays instant. The same data gives the
same bytes (no dates in the PNG metadata).
"""

from __future__ import annotations

import base64
import io
from typing import Any

#: Most categories one bar chart draws; more would be unreadable (the tables list them all).
MAX_BARS = 40
DPI = 72
_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    return fig


def _uri(fig: Any) -> str:
    buf = io.BytesIO()
    # No "Creation Time" or software version in the file: the same report twice is the same bytes.
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def lineage(names: list[str], included: list[int], excluded: list[int]) -> str:
    """Stacked bars per version: included and excluded rows."""
    fig = _figure(max(5.0, 0.9 * len(names) + 2), 3.2)
    ax = fig.add_subplot()
    x = list(range(len(names)))
    ax.bar(x, included, color=_COLORS[0], label="included")
    ax.bar(x, excluded, bottom=included, color=_COLORS[3], label="excluded")
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _uri(fig)


def class_bars(classes: list[str], series: dict[str, list[float]], title: str) -> str:
    """Grouped bars: one group per class, one bar per series (a split, or before/after)."""
    classes = classes[:MAX_BARS]
    fig = _figure(min(max(5.0, 0.35 * len(classes) * max(1, len(series)) + 2), 16), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for s, (name, values) in enumerate(series.items()):
        xs = [i + (s - (len(series) - 1) / 2) * width for i in range(len(classes))]
        ax.bar(xs, values[: len(classes)], width, label=name, color=_COLORS[s % len(_COLORS)])
    ax.set_xticks(range(len(classes)), [c[:20] for c in classes], rotation=45 if len(classes) > 6 else 0, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("samples")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _uri(fig)


def histogram(hist: list[list[int]], mean: list[float] | None, std: list[float] | None) -> str:
    """Pixel-value histogram per channel (fraction of pixels per value 0..255) with mean and +-1 std marked."""
    fig = _figure(7, 3)
    ax = fig.add_subplot()
    colors = ("#555555",) if len(hist) == 1 else ("#d62728", "#2ca02c", "#1f77b4")
    names = ("gray",) if len(hist) == 1 else ("R", "G", "B")
    for ch, counts in enumerate(hist):
        total = max(sum(counts), 1)
        color = colors[ch % len(colors)]
        ax.plot(range(len(counts)), [c / total for c in counts], color=color, lw=1.2, label=names[ch % len(names)])
        if mean and ch < len(mean):
            m = mean[ch] * 255
            ax.axvline(m, color=color, ls="--", lw=0.8)
            if std and ch < len(std):
                ax.axvspan(max(0.0, m - std[ch] * 255), min(255.0, m + std[ch] * 255), color=color, alpha=0.08)
    ax.set_yscale("log")
    top = max((max(c) / max(sum(c), 1) for c in hist if c), default=1.0)
    ax.set_ylim(top=min(1.0, top * 2) if top > 0 else 1.0)  # autoscale on a log axis clips a tall background peak
    ax.set_xlim(0, 255)
    ax.set_xlabel("pixel value (dashed: mean, band: +-1 std)")
    ax.set_ylabel("fraction of pixels")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _uri(fig)


def pseudo_rounds(rounds: list[dict[str, Any]]) -> str:
    """Accepted pseudo-labels per round (bars) and val / pseudo-label accuracy (lines)."""
    fig = _figure(7, 3)
    ax = fig.add_subplot()
    x = [r.get("round", i + 1) for i, r in enumerate(rounds)]
    ax.bar(x, [r.get("accepted_total") or 0 for r in rounds], color=_COLORS[0], alpha=0.7, label="accepted")
    ax.set_xlabel("round")
    ax.set_ylabel("pseudo-labels accepted")
    ax.set_xticks(x)
    acc = ax.twinx()
    for key, color in (("val_accuracy", _COLORS[1]), ("pseudo_accuracy", _COLORS[2])):
        ys = [r.get(key) for r in rounds]
        if any(y is not None for y in ys):
            acc.plot(x, [float("nan") if y is None else y for y in ys], "o-", color=color, label=key.replace("_", " "))
    acc.set_ylim(0, 1.02)
    acc.set_ylabel("accuracy")
    handles = ax.get_legend_handles_labels()
    more = acc.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="lower right")
    fig.tight_layout()
    return _uri(fig)


def curves(history: list[dict[str, Any]]) -> str:
    """Loss and accuracy per epoch, train, train_dev (when scored) and val, side by side."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9, 3.2)
    ep = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    for pos, (metric, title) in enumerate((("loss", "loss"), ("acc", "accuracy"))):
        ax = fig.add_subplot(1, 2, pos + 1)
        for split, color in (("train", _COLORS[0]), ("train_dev", _COLORS[2]), ("val", _COLORS[1])):
            ys = [h.get(f"{split}_{metric}") for h in history]
            if any(y is not None for y in ys):
                ax.plot(ep, [float("nan") if y is None else y for y in ys], "o-", ms=3, color=color, label=split)
        ax.set(xlabel="epoch", title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _uri(fig)


def confusion(cm: list[list[int]], classes: list[str], title: str) -> str:
    """A row-normalized confusion matrix (true class per row), counts in the cells up to 20 classes."""
    import numpy as np

    m = np.asarray(cm, np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(classes)
    side = min(3.0 + 0.3 * k, 9)
    fig = _figure(side + 1, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if k <= 50:
        ax.set_xticks(range(k), [c[:16] for c in classes], rotation=90 if k > 5 else 0, fontsize=7)
        ax.set_yticks(range(k), [c[:16] for c in classes], fontsize=7)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return _uri(fig)
