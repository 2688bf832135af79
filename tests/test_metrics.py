import math

import numpy as np
import pytest
from scipy.special import expit
from scipy.special import softmax as scipy_softmax
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, mean_absolute_percentage_error, roc_auc_score
from transformers import EvalPrediction

from resp_hf.metrics import build_compute_metrics, classification_metrics, regression_metrics

SINGLE = "single_label_classification"
MULTI = "multi_label_classification"


def random_logits(num_samples, num_labels, seed=0):
    return np.random.default_rng(seed).normal(size=(num_samples, num_labels)).astype(np.float32)


# Single-label, binary


def test_binary_perfectly_separated_gives_auroc_one():
    logits = np.array([[2.0, -1.0], [1.0, 0.0], [0.0, 3.0], [-2.0, 2.0]])
    labels = np.array([0, 0, 1, 1])
    assert classification_metrics(logits, labels, SINGLE) == {"accuracy": 1.0, "auroc": 1.0}


def test_binary_reversed_gives_auroc_zero():
    logits = np.array([[2.0, -1.0], [1.0, 0.0], [0.0, 3.0], [-2.0, 2.0]])
    labels = np.array([1, 1, 0, 0])
    assert classification_metrics(logits, labels, SINGLE) == {"accuracy": 0.0, "auroc": 0.0}


def test_binary_hand_computed_example():
    # Class-1 probabilities rise with (logit1 - logit0): 0.1, 0.4, 0.35, 0.8 for labels 0, 0, 1, 1.
    # Positive/negative pairs ranked correctly: (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4); wrong: (0.35 < 0.4) -> 3/4.
    probabilities = np.array([0.1, 0.4, 0.35, 0.8])
    logits = np.stack([np.zeros(4), np.log(probabilities / (1 - probabilities))], axis=1)
    metrics = classification_metrics(logits, np.array([0, 0, 1, 1]), SINGLE)
    assert metrics["auroc"] == pytest.approx(0.75)
    assert metrics["accuracy"] == pytest.approx(0.75)  # sample 2 is predicted class 0


def test_binary_matches_sklearn_on_class_one_probability():
    logits = random_logits(50, 2, seed=1)
    labels = np.random.default_rng(2).integers(0, 2, size=50)
    metrics = classification_metrics(logits, labels, SINGLE)
    probabilities = scipy_softmax(logits.astype(np.float64), axis=1)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels, probabilities[:, 1]), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, logits.argmax(axis=1)))
    assert all(type(value) is float for value in metrics.values())


def test_binary_with_one_class_present_warns_and_returns_nan():
    with pytest.warns(UndefinedMetricWarning, match="only class 1 is present"):
        metrics = classification_metrics(random_logits(4, 2), np.ones(4, dtype=int), SINGLE)
    assert math.isnan(metrics["auroc"])
    assert metrics["accuracy"] == pytest.approx(np.mean(random_logits(4, 2).argmax(axis=1) == 1))


# Single-label, multi-class


def test_multiclass_matches_sklearn_macro_one_vs_rest():
    logits = random_logits(60, 4, seed=3)
    labels = np.arange(60) % 4
    metrics = classification_metrics(logits, labels, SINGLE)
    probabilities = scipy_softmax(logits.astype(np.float64), axis=1)
    expected = roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=range(4))
    assert metrics["auroc"] == pytest.approx(expected, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, logits.argmax(axis=1)))


def test_multiclass_perfect_predictions():
    labels = np.array([0, 1, 2, 2, 1, 0])
    logits = np.eye(3)[labels] * 5.0
    assert classification_metrics(logits, labels, SINGLE) == {"accuracy": 1.0, "auroc": 1.0}


def test_multiclass_missing_class_warns_and_returns_nan():
    labels = np.array([0, 1, 0, 1])
    with pytest.warns(UndefinedMetricWarning, match=r"classes \[2\] of 3 never occur"):
        metrics = classification_metrics(random_logits(4, 3), labels, SINGLE)
    assert math.isnan(metrics["auroc"])
    assert 0.0 <= metrics["accuracy"] <= 1.0


# Multi-label


def test_multi_label_hand_computed_example():
    logits = np.array([[2.0, -1.0, 0.5], [-3.0, 1.0, -0.5], [1.0, 2.0, 0.2], [-1.0, -2.0, -0.1]])
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    metrics = classification_metrics(logits, labels, MULTI)
    # Predictions (logit >= 0): [1,0,1], [0,1,0], [1,1,1], [0,0,0] -> 10 of 12 entries right.
    assert metrics["accuracy"] == pytest.approx(10 / 12)
    # Label 0 and 1 are perfectly separated; label 2 ranks positives {0.5, -0.1} against negatives {-0.5, 0.2}: 3/4.
    assert metrics["auroc"] == pytest.approx((1.0 + 1.0 + 0.75) / 3)


def test_multi_label_matches_sklearn_per_label_mean():
    logits = random_logits(40, 5, seed=4)
    labels = np.random.default_rng(5).integers(0, 2, size=(40, 5))
    metrics = classification_metrics(logits, labels, MULTI)
    scores = expit(logits.astype(np.float64))
    expected_auroc = np.mean([roc_auc_score(labels[:, k], scores[:, k]) for k in range(5)])
    expected_accuracy = np.mean([accuracy_score(labels[:, k], scores[:, k] >= 0.5) for k in range(5)])
    assert metrics["auroc"] == pytest.approx(expected_auroc, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(expected_accuracy)


def test_multi_label_skips_single_class_labels_with_a_warning():
    logits = random_logits(6, 3, seed=6)
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    with pytest.warns(UndefinedMetricWarning, match=r"skips labels \[1, 2\]"):
        metrics = classification_metrics(logits, labels, MULTI)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(labels[:, 0], logits[:, 0]))


def test_multi_label_without_any_defined_label_warns_and_returns_nan():
    labels = np.array([[1, 0], [1, 0], [1, 0]])
    with pytest.warns(UndefinedMetricWarning, match="no label has both"):
        metrics = classification_metrics(random_logits(3, 2), labels, MULTI)
    assert math.isnan(metrics["auroc"])


def test_large_logits_do_not_overflow():
    logits = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    with np.errstate(over="raise"):
        assert classification_metrics(logits, np.array([0, 1]), SINGLE) == {"accuracy": 1.0, "auroc": 1.0}
        assert classification_metrics(logits, np.array([[1, 0], [0, 1]]), MULTI) == {"accuracy": 1.0, "auroc": 1.0}


# Validation errors


@pytest.mark.parametrize(
    ("logits", "labels", "problem_type", "message"),
    [
        (random_logits(4, 2), np.array([0, 1, 0]), SINGLE, "logits have 4 rows"),
        (random_logits(4, 2)[0], np.array([0]), SINGLE, "must have shape"),
        (random_logits(4, 2), np.array([0, 1, 0, 1]), "regression", "Unknown problem_type"),
        (random_logits(4, 2), np.array([0, 1, 2, 1]), SINGLE, r"must lie in \[0, 2\)"),
        (random_logits(4, 2), np.array([0, 1, 0.5, 1]), SINGLE, "integer class ids"),
        (random_logits(4, 1), np.array([0, 0, 0, 0]), SINGLE, "at least 2 logit columns"),
        (random_logits(4, 2), np.zeros((4, 2), dtype=int), SINGLE, "1-D array of class ids"),
        (random_logits(4, 3), np.zeros((4, 2), dtype=int), MULTI, r"logits' shape \(4, 3\)"),
        (random_logits(4, 2), np.full((4, 2), 2), MULTI, "only 0 and 1"),
        (np.full((2, 2), np.nan), np.array([0, 1]), SINGLE, "NaN or Inf"),
        (np.zeros((0, 2)), np.zeros(0, dtype=int), SINGLE, "empty"),
    ],
)
def test_invalid_classification_inputs_raise(logits, labels, problem_type, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(logits, labels, problem_type)


# Regression


def test_regression_hand_computed_example():
    metrics = regression_metrics(np.array([1.0, 2.0, 5.0, 4.0]), np.array([2.0, 2.0, 4.0, 8.0]))
    assert metrics["mae"] == pytest.approx((1 + 0 + 1 + 4) / 4)
    assert metrics["rmse"] == pytest.approx(math.sqrt((1 + 0 + 1 + 16) / 4))
    assert metrics["mape"] == pytest.approx((0.5 + 0 + 0.25 + 0.5) / 4)


def test_regression_matches_sklearn_mape():
    rng = np.random.default_rng(7)
    labels = rng.uniform(1.0, 10.0, size=30)
    predictions = labels + rng.normal(size=30)
    metrics = regression_metrics(predictions, labels)
    assert metrics["mape"] == pytest.approx(mean_absolute_percentage_error(labels, predictions))
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(predictions - labels)))


def test_regression_zero_label_makes_mape_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning, match=r"MAPE .* 1 label\(s\) are 0"):
        metrics = regression_metrics(np.array([1.0, 2.0]), np.array([0.0, 2.0]))
    assert math.isnan(metrics["mape"])
    assert metrics["mae"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("predictions", "labels", "message"),
    [
        (np.zeros(3), np.zeros(4), r"shape \(3,\) but labels have shape \(4,\)"),
        (np.zeros(0), np.zeros(0), "empty"),
        (np.array([np.inf, 1.0]), np.ones(2), "predictions contain NaN or Inf"),
    ],
)
def test_invalid_regression_inputs_raise(predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        regression_metrics(predictions, labels)


# Trainer compute_metrics


def test_compute_metrics_single_label_with_tuple_predictions():
    logits = random_logits(20, 3, seed=8)
    labels = np.arange(20) % 3
    hidden_states = np.zeros((20, 7, 4))
    compute_metrics = build_compute_metrics(SINGLE)
    from_tuple = compute_metrics(EvalPrediction(predictions=(logits, hidden_states), label_ids=labels))
    assert from_tuple == classification_metrics(logits, labels, SINGLE)
    assert compute_metrics(EvalPrediction(predictions=logits, label_ids=labels)) == from_tuple


def test_compute_metrics_multi_label_accepts_float_labels():
    logits = random_logits(10, 2, seed=9)
    labels = np.random.default_rng(10).integers(0, 2, size=(10, 2))
    labels[:2] = [[0, 0], [1, 1]]
    compute_metrics = build_compute_metrics(MULTI)
    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=labels.astype(np.float32)))
    assert metrics == classification_metrics(logits, labels, MULTI)


def test_compute_metrics_regression_flattens_single_column():
    predictions = np.array([[1.0], [2.0], [5.0], [4.0]])
    labels = np.array([2.0, 2.0, 4.0, 8.0])
    compute_metrics = build_compute_metrics("regression")
    metrics = compute_metrics(EvalPrediction(predictions=(predictions,), label_ids=labels))
    assert metrics == regression_metrics(predictions[:, 0], labels)
    assert metrics["mae"] == pytest.approx(1.5)


def test_compute_metrics_errors():
    with pytest.raises(ValueError, match="Unknown problem_type 'ranking'"):
        build_compute_metrics("ranking")
    with pytest.raises(ValueError, match="no label_ids"):
        build_compute_metrics(SINGLE)(EvalPrediction(predictions=random_logits(2, 2), label_ids=None))
