"""Offline evaluation metrics for classification and regression heads, usable as a Trainer `compute_metrics`."""

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    roc_auc_score,
    root_mean_squared_error,
)

SINGLE_LABEL = "single_label_classification"
MULTI_LABEL = "multi_label_classification"
REGRESSION = "regression"
CLASSIFICATION_PROBLEM_TYPES = (SINGLE_LABEL, MULTI_LABEL)
PROBLEM_TYPES = (*CLASSIFICATION_PROBLEM_TYPES, REGRESSION)

# Multi-label predictions are positive when their sigmoid score reaches this value (logit >= 0).
MULTI_LABEL_THRESHOLD = 0.5


def softmax(logits):
    """Row-wise softmax, shifted by the row maximum for numerical stability."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=1, keepdims=True)


def sigmoid(logits):
    """Element-wise logistic function, written to avoid overflow for large negative logits."""
    exponentials = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + exponentials), exponentials / (1.0 + exponentials))


def undefined_auroc(reason):
    """Warns why AUROC cannot be computed and returns NaN in its place."""
    warnings.warn(f"AUROC is undefined and reported as NaN: {reason}", UndefinedMetricWarning, stacklevel=3)
    return float("nan")


def check_finite(array, name):
    """Raises ValueError when `array` holds NaN or Inf (sklearn would fail on them with a less clear message)."""
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or Inf values.")


def check_classification_inputs(logits, labels, problem_type):
    """Converts and validates classification inputs; returns `(logits, labels)` as float64 / numpy arrays."""
    if problem_type not in CLASSIFICATION_PROBLEM_TYPES:
        raise ValueError(
            f"Unknown problem_type {problem_type!r}; expected one of {list(CLASSIFICATION_PROBLEM_TYPES)}."
        )
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (num_samples, num_labels), got shape {logits.shape}.")
    if logits.shape[0] == 0:
        raise ValueError("logits are empty: there are no samples to evaluate.")
    if labels.shape[:1] != logits.shape[:1]:
        raise ValueError(
            f"logits have {logits.shape[0]} rows but labels have shape {labels.shape}; each sample needs one label row."
        )
    check_finite(logits, "logits")
    return logits, labels


def check_single_labels(labels, num_labels):
    """Checks single-label targets: 1-D integer class ids in [0, num_labels); returns them as int64."""
    if num_labels < 2:
        raise ValueError(
            f"single_label_classification needs at least 2 logit columns, got {num_labels} "
            "(one output column is a regression head)."
        )
    if labels.ndim != 1:
        raise ValueError(f"single-label labels must be a 1-D array of class ids, got shape {labels.shape}.")
    if not np.all(np.isfinite(labels.astype(np.float64))) or np.any(labels != np.round(labels)):
        raise ValueError("single-label labels must be integer class ids.")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_labels:
        raise ValueError(
            f"single-label labels must lie in [0, {num_labels}) to match the logit columns, "
            f"got values from {labels.min()} to {labels.max()}."
        )
    return labels


def check_multi_labels(labels, logits_shape):
    """Checks multi-label targets: a 0/1 matrix with the logits' shape; returns it as int64."""
    if labels.shape != logits_shape:
        raise ValueError(f"multi-label labels must have the logits' shape {logits_shape}, got {labels.shape}.")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("multi-label labels must contain only 0 and 1.")
    return labels.astype(np.int64)


def single_label_auroc(probabilities, labels):
    """Binary AUROC on the class-1 probability, or macro one-vs-rest AUROC for more than two classes."""
    num_labels = probabilities.shape[1]
    missing = sorted(set(range(num_labels)) - set(np.unique(labels).tolist()))
    if num_labels == 2:
        if missing:
            return undefined_auroc(f"only class {1 - missing[0]} is present in the labels.")
        return float(roc_auc_score(labels, probabilities[:, 1]))
    if missing:
        return undefined_auroc(f"classes {missing} of {num_labels} never occur in the labels (one-vs-rest needs all).")
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro", labels=range(num_labels)))


def multi_label_auroc(scores, labels):
    """Macro AUROC over the labels (columns) that have both positive and negative samples."""
    positives = labels.sum(axis=0)
    defined = (positives > 0) & (positives < labels.shape[0])
    if not defined.any():
        return undefined_auroc("no label has both positive and negative samples.")
    if not defined.all():
        skipped = np.flatnonzero(~defined).tolist()
        warnings.warn(
            f"AUROC skips labels {skipped}: they have only one class present; the macro average uses the others.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    per_label = [roc_auc_score(labels[:, column], scores[:, column]) for column in np.flatnonzero(defined)]
    return float(np.mean(per_label))


def classification_metrics(logits, labels, problem_type):
    """
    Accuracy and AUROC of classification logits.

    Single-label: softmax scores, argmax accuracy, binary or macro one-vs-rest AUROC.
    Multi-label: sigmoid scores, mean per-label accuracy at 0.5, macro AUROC over labels with both classes.
    An undefined AUROC is returned as NaN with a warning.
    """
    logits, labels = check_classification_inputs(logits, labels, problem_type)
    if problem_type == SINGLE_LABEL:
        labels = check_single_labels(labels, logits.shape[1])
        probabilities = softmax(logits)
        accuracy = np.mean(probabilities.argmax(axis=1) == labels)
        auroc = single_label_auroc(probabilities, labels)
    else:
        labels = check_multi_labels(labels, logits.shape)
        scores = sigmoid(logits)
        accuracy = np.mean((scores >= MULTI_LABEL_THRESHOLD) == labels)
        auroc = multi_label_auroc(scores, labels)
    return {"accuracy": float(accuracy), "auroc": auroc}


def regression_metrics(predictions, labels):
    """MAE, RMSE and MAPE (a fraction, NaN with a warning when any label is 0) over all samples."""
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions have shape {predictions.shape} but labels have shape {labels.shape}.")
    if predictions.size == 0:
        raise ValueError("predictions are empty: there are no samples to evaluate.")
    check_finite(predictions, "predictions")
    check_finite(labels, "labels")
    predictions, labels = predictions.ravel(), labels.ravel()
    return {
        "mae": float(mean_absolute_error(labels, predictions)),
        "rmse": float(root_mean_squared_error(labels, predictions)),
        "mape": mean_absolute_percentage(predictions, labels),
    }


def mean_absolute_percentage(predictions, labels):
    """MAPE as a fraction; NaN with a warning when a label is 0 (the percentage error is then undefined)."""
    zero_labels = int(np.count_nonzero(labels == 0))
    if zero_labels:
        warnings.warn(
            f"MAPE is undefined and reported as NaN: {zero_labels} label(s) are 0.",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return float("nan")
    return float(mean_absolute_percentage_error(labels, predictions))


def squeeze_single_column(array):
    """Turns an (n, 1) array into shape (n,); other shapes are returned unchanged."""
    array = np.asarray(array)
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return array


def build_compute_metrics(problem_type):
    """Returns a `compute_metrics(eval_prediction)` for `transformers.Trainer` that dispatches on `problem_type`."""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"Unknown problem_type {problem_type!r}; expected one of {list(PROBLEM_TYPES)}.")

    def compute_metrics(eval_prediction):
        """Metrics of one `EvalPrediction`; tuple predictions are reduced to their first element (the logits)."""
        predictions = eval_prediction.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        labels = eval_prediction.label_ids
        if labels is None:
            raise ValueError("EvalPrediction has no label_ids; metrics need the labels of the evaluation set.")
        if problem_type == REGRESSION:
            return regression_metrics(squeeze_single_column(predictions), squeeze_single_column(labels))
        return classification_metrics(predictions, labels, problem_type)

    return compute_metrics


__all__ = ["build_compute_metrics", "classification_metrics", "regression_metrics"]


# Respiratory-sound challenge scores. Class 0 is "normal" in every task; all other classes are abnormal.


def class_predictions(logits_or_predictions):
    """Class ids from `(n, num_labels)` logits (argmax) or from `(n,)` predicted ids."""
    values = np.asarray(logits_or_predictions)
    if values.ndim == 2:
        check_finite(values.astype(np.float64), "logits")
        return values.argmax(axis=1)
    if values.ndim != 1:
        raise ValueError(f"predictions must be (n,) class ids or (n, num_labels) logits, got shape {values.shape}.")
    return values.astype(np.int64)


def normal_abnormal_hits(predictions, labels, exact_abnormal=True):
    """
    `(specificity, sensitivity)`: the share of normal samples (label 0) predicted normal, and of abnormal samples
    predicted as their exact class (`exact_abnormal`) or as any abnormal class. NaN with a warning when a group is
    empty.
    """
    predictions = class_predictions(predictions)
    labels = np.asarray(labels).astype(np.int64)
    if predictions.shape != labels.shape or labels.size == 0:
        raise ValueError(f"predictions ({predictions.shape}) and labels ({labels.shape}) must be equal, non-empty.")
    normal, abnormal = labels == 0, labels != 0
    abnormal_hit = predictions == labels if exact_abnormal else predictions != 0
    rates = []
    for group, hit, name in ((normal, predictions == 0, "normal"), (abnormal, abnormal_hit, "abnormal")):
        if not group.any():
            warnings.warn(f"No {name} samples: the rate is NaN.", UndefinedMetricWarning, stacklevel=3)
            rates.append(float("nan"))
        else:
            rates.append(float(hit[group].mean()))
    return rates[0], rates[1]


def icbhi_scores(predictions, labels, two_class=False):
    """
    The ICBHI 2017 challenge score of cycle predictions (labels: 0 normal, 1 crackle, 2 wheeze, 3 both, or 0/1):
    specificity = normal cycles predicted normal, sensitivity = abnormal cycles predicted as their exact class,
    score = their mean (Rocha et al. 2019; Patch-Mix `util/icbhi_util.py get_score`). `two_class=True` is the 2-class
    variant: an abnormal cycle counts as hit when predicted as any abnormal class (Patch-Mix `--two_cls_eval`).
    `predictions` are logits or class ids. Returns fractions (papers print percentages).
    """
    specificity, sensitivity = normal_abnormal_hits(predictions, labels, exact_abnormal=not two_class)
    return {"specificity": specificity, "sensitivity": sensitivity, "icbhi_score": (specificity + sensitivity) / 2}


def sprsound_scores(predictions, labels):
    """
    The SPRSound challenge scores (Zhang et al., "Grand Challenge on Respiratory Sound Classification", BioCAS 2022):
    SP = normal samples predicted normal, SE = the other samples (adventitious events; CAS, DAS, CAS & DAS and Poor
    Quality records) predicted as their exact class, AS = (SE + SP) / 2, HS = 2 SE SP / (SE + SP) (0 when both are 0),
    Score = (AS + HS) / 2. Class 0 must be Normal, as in the challenge's starter code (`scripts/test.py`).

    The SPRSound repository README names SE, SP, AS and HS without formulas; these are the paper's, as recalled and
    as in public challenge code (`SE = cm.diagonal()[1:].sum() / cm[1:].sum()`); M2D's `app/icbhi_sprs` reports
    (SP + SE) / 2 with the same SE, i.e. AS.
    """
    specificity, sensitivity = normal_abnormal_hits(predictions, labels)
    total = specificity + sensitivity
    harmonic = 2 * specificity * sensitivity / total if total > 0 else 0.0
    average = total / 2
    return {
        "specificity": specificity,
        "sensitivity": sensitivity,
        "average_score": average,
        "harmonic_score": float(harmonic),
        "score": float((average + harmonic) / 2),
    }


def build_challenge_compute_metrics(scoring):
    """
    A Trainer `compute_metrics` for a challenge scoring: `"icbhi"`, `"icbhi_2class"` (4-class logits scored as
    normal / abnormal) or `"sprsound"`. It also reports `accuracy`.
    """
    scorers = {
        "icbhi": icbhi_scores,
        "icbhi_2class": lambda predictions, labels: icbhi_scores(predictions, labels, two_class=True),
        "sprsound": sprsound_scores,
    }
    if scoring not in scorers:
        raise ValueError(f"Unknown scoring {scoring!r}; expected one of {sorted(scorers)}.")

    def compute_metrics(eval_prediction):
        outputs, labels = eval_prediction.predictions, np.asarray(eval_prediction.label_ids)
        predictions = class_predictions(outputs[0] if isinstance(outputs, (tuple, list)) else outputs)
        metrics = scorers[scoring](predictions, labels)
        metrics["accuracy"] = float(np.mean(predictions == labels))
        return metrics

    return compute_metrics


__all__ += ["build_challenge_compute_metrics", "icbhi_scores", "sprsound_scores"]
