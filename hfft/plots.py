"""The run folder's pictures: training curves (loss, learning rate per layer group) and the confusion matrix.

matplotlib is imported inside the functions (it costs about a second); importing this module without it
installed raises ImportError at once, so callers can skip the plots.
"""

from __future__ import annotations

import importlib.util
import math
import os
import uuid
from pathlib import Path

import numpy as np

if importlib.util.find_spec("matplotlib") is None:
    raise ImportError("hfft.plots needs matplotlib: pip install matplotlib")


def plot_training(records: list[dict], path) -> None:
    """Two panels over optimizer steps: train (and eval) loss; the learning rate of every layer group (log y).

    records: one dict per logged event, with "step" and any of "loss", "eval_loss", "lr/<group>", "phase".
    A vertical line marks where phase 2 (everything unfrozen) begins."""
    fig = _figure(figsize=(8, 7))
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True)

    for key, label, style in [("loss", "train", "-"), ("eval_loss", "eval", "o-")]:
        steps, values = _series(records, key)
        if steps:
            loss_ax.plot(steps, values, style, label=label, markersize=4)
    loss_ax.set_ylabel("loss")
    loss_ax.set_title("loss")

    groups = list(dict.fromkeys(k for r in records for k in r if k.startswith("lr/")))
    any_positive = False
    for key in groups:
        steps, values = _series(records, key)
        # A frozen group may sit at lr 0, which a log axis cannot show: leave a gap there.
        values = [v if v > 0 else math.nan for v in values]
        any_positive |= any(v > 0 for v in values)
        lr_ax.plot(steps, values, label=key[len("lr/"):])
    if any_positive:
        lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.set_title("learning rate per layer group")

    unfreeze = _phase_two_start(records)
    for ax in (loss_ax, lr_ax):
        if unfreeze is not None:
            ax.axvline(unfreeze, color="grey", linestyle="--", linewidth=1, label="unfreeze")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
        else:
            ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.grid(True, alpha=0.3)
    _save(fig, path)


def plot_confusion(matrix: np.ndarray, labels: list[str], path, normalize: bool = True) -> None:
    """Confusion matrix, true labels down, predictions across; with normalize, each row shows fractions of
    that true class (recall on the diagonal) and the counts stay in the cells."""
    counts = np.asarray(matrix, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(labels):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not fit {len(labels)} labels")
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        shown = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    else:
        shown = counts

    n = len(labels)
    side = min(max(4.0, 0.55 * n + 2.5), 24.0)
    fig = _figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(shown.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), labels=labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    if n <= 30:  # beyond that the numbers are unreadable anyway
        threshold = (1 if normalize else shown.max()) / 2
        for i in range(n):
            for j in range(n):
                text = f"{shown[i, j]:.2f}\n({int(counts[i, j])})" if normalize else f"{int(counts[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7 if n > 10 else 9,
                        color="white" if shown[i, j] > threshold else "black")
    _save(fig, path)


def _figure(figsize):
    """A Figure drawn by the Agg backend, outside pyplot: no display, no global state, nothing to close."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _series(records: list[dict], key: str) -> tuple[list, list]:
    pairs = [(r["step"], float(r[key])) for r in records if r.get(key) is not None and "step" in r]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _phase_two_start(records: list[dict]):
    """The first step logged in phase 2, when phase 1 was logged before it; else None."""
    seen_phase_one = False
    for record in records:
        phase = record.get("phase")
        if phase == 1:
            seen_phase_one = True
        elif phase == 2 and seen_phase_one:
            return record.get("step")
    return None


def _save(fig, path) -> None:
    """Write the PNG under a temporary name in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name of our own rather than mkstemp's, whose 0600 mode would stick to the final file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
