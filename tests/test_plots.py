"""The run folder's pictures are real PNGs, written atomically, for the records the LR log really writes."""

import sys

import numpy as np
import pytest
from PIL import Image

from hfft.plots import plot_confusion, plot_training


def _records():
    """What GroupLRLog writes: lr records per step (with phase), loss records when the trainer logs."""
    records = []
    for step in range(40):
        phase = 1 if step < 10 else 2
        body_lr = 0.0 if phase == 1 else 1e-5 * (1 + step / 10)
        records.append({"step": step, "epoch": step / 10, "phase": phase,
                        "lr/embeddings": body_lr, "lr/blocks.0-5": 3 * body_lr, "lr/head": 1e-3})
        if step % 5 == 4:
            records.append({"step": step, "epoch": step / 10, "loss": 2.0 / (1 + step)})
        if step % 10 == 9:
            records.append({"step": step, "epoch": step / 10, "eval_loss": 2.5 / (1 + step), "eval_accuracy": 0.5})
    return records


def _assert_png(path):
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the temporary file is gone


def test_training_plot_is_a_png(tmp_path):
    path = tmp_path / "training.png"
    plot_training(_records(), path)
    _assert_png(path)


@pytest.mark.parametrize("records", [[], [{"step": 0, "loss": 1.0}], [{"step": 0, "phase": 2, "lr/head": 0.0}]])
def test_training_plot_survives_sparse_logs(tmp_path, records):
    path = tmp_path / "training.png"
    plot_training(records, path)
    _assert_png(path)


def test_confusion_plot_is_a_png_and_overwrites(tmp_path):
    labels = ["fresh", "rotten", "unsure"]
    matrix = np.array([[40, 10, 0], [5, 45, 0], [0, 0, 0]])  # an empty row must not divide by zero
    path = tmp_path / "sub" / "confusion_matrix.png"
    plot_confusion(matrix, labels, path)
    _assert_png(path)
    plot_confusion(matrix, labels, path, normalize=False)
    _assert_png(path)


def test_confusion_plot_rejects_a_mismatched_matrix(tmp_path):
    with pytest.raises(ValueError, match="does not fit"):
        plot_confusion(np.eye(3), ["a", "b"], tmp_path / "cm.png")


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken_savefig(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_confusion(np.eye(2), ["a", "b"], tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []


def test_plots_do_not_touch_pyplot(tmp_path):
    plot_training(_records(), tmp_path / "training.png")
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
