"""Classification metrics in numpy. Never `evaluate.load` at run time: it needs the Hub and is slow to import."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> np.ndarray:
    """rows: true class, columns: predicted class."""
    return np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def report(labels, preds, names: list[str]) -> dict:
    """accuracy, macro F1 (classes absent from both labels and predictions are left out of the mean, as an
    F1 of 0/0 says nothing), per-class precision/recall/F1/support and the confusion matrix."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    cm = confusion_matrix(labels, preds, len(names))
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    return {
        "accuracy": float(tp.sum() / max(len(labels), 1)),
        "f1_macro": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(names, precision, recall, f1, support)},
        "confusion_matrix": cm.tolist(),
    }


class TrainerMetrics:
    """compute_metrics for transformers.Trainer. The Trainer logs the scalars every evaluation; the full report
    of the latest one is kept, so the final evaluation need not run the model over the data a second time."""

    def __init__(self, names: list[str]):
        self.names = names
        self.last: dict | None = None

    def __call__(self, eval_pred) -> dict:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        self.last = report(eval_pred.label_ids, np.argmax(logits, axis=-1), self.names)
        return {"accuracy": self.last["accuracy"], "f1_macro": self.last["f1_macro"]}
