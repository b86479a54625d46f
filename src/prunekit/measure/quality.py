"""Quality metrics: how well a (pruned) classifier still does its job.

Everything is computed with NumPy from label arrays, so the numbers match
scikit-learn's (``accuracy_score``, ``precision_recall_fscore_support`` with
``average="macro", zero_division=0`` and ``confusion_matrix``) without importing it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError


def classification_metrics(
    y_true: Any, y_pred: Any, *, num_classes: int | None = None
) -> dict[str, Any]:
    """Accuracy, macro precision / recall / F1 and the confusion matrix of a classifier.

    Macro averages weigh every class the same. The classes are ``0 .. num_classes - 1``
    when ``num_classes`` is given (a class that never occurs still counts, with zeros),
    otherwise the sorted labels that occur in either array, as scikit-learn does. A
    ratio with a zero denominator (a class never predicted has no precision) is 0.

    Args:
        y_true: True labels, a 1-D array-like of integers (NumPy array, list, tensor).
        y_pred: Predicted labels, the same length as ``y_true``.
        num_classes: Number of classes; labels must then lie in ``[0, num_classes)``.

    Returns:
        ``{"accuracy", "precision_macro", "recall_macro", "f1_macro"}`` as floats and
        ``"confusion_matrix"``: a list of lists of ints, rows are true classes and
        columns predicted classes.

    Raises:
        ConfigError: The arrays are empty, not 1-D, differ in length, or hold a label
            outside ``[0, num_classes)``.

    Example:
        >>> m = classification_metrics([0, 1, 1, 2], [0, 1, 2, 2])
        >>> m["accuracy"], m["confusion_matrix"]
        (0.75, [[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    """
    true, pred = _as_labels(y_true, "y_true"), _as_labels(y_pred, "y_pred")
    if true.shape != pred.shape:
        raise ConfigError(
            f"y_true has {true.size} labels but y_pred has {pred.size}; "
            "pass one prediction per example"
        )
    if true.size == 0:
        raise ConfigError("y_true and y_pred are empty; pass at least one prediction")
    labels = _class_labels(true, pred, num_classes)
    cm = _confusion(np.searchsorted(labels, true), np.searchsorted(labels, pred), labels.size)
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    return {
        "accuracy": float(tp.sum() / true.size),
        "precision_macro": float(_safe_div(tp, predicted).mean()),
        "recall_macro": float(_safe_div(tp, actual).mean()),
        "f1_macro": float(_safe_div(2 * tp, predicted + actual).mean()),
        "confusion_matrix": cm.tolist(),
    }


def _as_labels(values: Any, what: str) -> np.ndarray:
    """A 1-D int64 array of labels (tensors are moved to the CPU first)."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ConfigError(
            f"{what} must be a 1-D array of class labels, got shape {arr.shape}; "
            "take the argmax of logits first"
        )
    if arr.dtype.kind not in "biu" and arr.size:
        if arr.dtype.kind != "f" or not np.all(np.mod(arr, 1) == 0):
            raise ConfigError(f"{what} holds non-integer values; pass class indices")
    return arr.astype(np.int64)


def _class_labels(true: np.ndarray, pred: np.ndarray, num_classes: int | None) -> np.ndarray:
    """The sorted class labels the metrics average over."""
    if num_classes is None:
        return np.union1d(true, pred)
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    low, high = min(true.min(), pred.min()), max(true.max(), pred.max())
    if low < 0 or high >= num_classes:
        raise ConfigError(
            f"labels must lie in [0, {num_classes}) but range over [{low}, {high}]; "
            "fix num_classes or leave it out"
        )
    return np.arange(num_classes)


def _confusion(true_idx: np.ndarray, pred_idx: np.ndarray, k: int) -> np.ndarray:
    """(k, k) int64 counts; row = true class index, column = predicted class index."""
    flat = np.bincount(true_idx * k + pred_idx, minlength=k * k)
    return flat.reshape(k, k)  # (true, pred)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Elementwise ``num / den`` with 0 where ``den`` is 0 (zero_division=0)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out
