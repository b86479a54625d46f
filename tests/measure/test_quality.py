import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from prunekit.errors import ConfigError
from prunekit.measure import classification_metrics


def sklearn_metrics(y_true, y_pred, labels=None):
    p, r, f, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision_macro": p,
        "recall_macro": r,
        "f1_macro": f,
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def assert_same(ours, theirs):
    assert set(ours) == set(theirs)
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert isinstance(ours[key], float)
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    assert all(isinstance(v, int) for row in ours["confusion_matrix"] for v in row)


@st.composite
def label_pairs(draw):
    k = draw(st.integers(min_value=1, max_value=6))
    n = draw(st.integers(min_value=1, max_value=40))
    labels = st.lists(st.integers(0, k - 1), min_size=n, max_size=n)
    return k, draw(labels), draw(labels)


@pytest.mark.filterwarnings("ignore:A single label was found")
@settings(max_examples=60, deadline=None)
@given(label_pairs())
def test_matches_sklearn_on_random_predictions(case):
    k, y_true, y_pred = case
    assert_same(classification_metrics(y_true, y_pred), sklearn_metrics(y_true, y_pred))
    assert_same(
        classification_metrics(y_true, y_pred, num_classes=k),
        sklearn_metrics(y_true, y_pred, labels=list(range(k))),
    )


@pytest.mark.parametrize("seed", range(5))
def test_class_never_predicted_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, size=200)
    y_pred = rng.integers(0, 4, size=200)  # class 4 is never predicted
    y_pred[:3] = 0
    ours = classification_metrics(y_true, y_pred, num_classes=5)
    assert_same(ours, sklearn_metrics(y_true, y_pred, labels=list(range(5))))
    assert [row[4] for row in ours["confusion_matrix"]] == [0] * 5


def test_class_absent_from_both_counts_as_zero_with_num_classes():
    ours = classification_metrics([0, 1, 1], [0, 1, 0], num_classes=3)
    assert_same(ours, sklearn_metrics([0, 1, 1], [0, 1, 0], labels=[0, 1, 2]))
    assert ours["recall_macro"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_hand_computed_example_and_tensor_inputs():
    m = classification_metrics(torch.tensor([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    assert m["accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert m["precision_macro"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_arbitrary_labels_without_num_classes():
    assert_same(classification_metrics([7, 3, 7], [3, 3, 9]), sklearn_metrics([7, 3, 7], [3, 3, 9]))


@pytest.mark.parametrize(
    ("y_true", "y_pred", "kwargs", "match"),
    [
        ([0, 1, 2], [0, 1], {}, "y_true has 3 labels but y_pred has 2"),
        ([], [], {}, "empty"),
        ([0, 3], [0, 1], {"num_classes": 3}, r"\[0, 3\)"),
        ([[0, 1]], [[0, 1]], {}, "1-D"),
        ([0.5, 1.0], [0, 1], {}, "non-integer"),
        (["cat", "dog"], [0, 1], {}, "non-integer"),
    ],
)
def test_bad_input_is_a_config_error(y_true, y_pred, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        classification_metrics(y_true, y_pred, **kwargs)
