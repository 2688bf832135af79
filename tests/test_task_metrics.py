import numpy as np
import pytest
from transformers import EvalPrediction

from resp_hf.metrics import build_challenge_compute_metrics, icbhi_scores, sprsound_scores


def predictions_from_confusion(confusion):
    """(labels, predictions) with `confusion[true][predicted]` samples of each pair."""
    labels, predictions = [], []
    for true, row in enumerate(confusion):
        for predicted, count in enumerate(row):
            labels += [true] * count
            predictions += [predicted] * count
    return np.array(predictions), np.array(labels)


# Rows: true normal, crackle, wheeze, both; columns: predicted.
CONFUSION = [
    [3, 1, 0, 0],
    [1, 1, 1, 0],
    [0, 0, 2, 0],
    [0, 1, 0, 0],
]


def test_icbhi_score_counts_exact_abnormal_classes():
    predictions, labels = predictions_from_confusion(CONFUSION)
    scores = icbhi_scores(predictions, labels)
    # Normal: 3 of 4 right. Abnormal: crackle 1 + wheeze 2 + both 0 exact hits of 6.
    assert scores["specificity"] == pytest.approx(3 / 4)
    assert scores["sensitivity"] == pytest.approx(3 / 6)
    assert scores["icbhi_score"] == pytest.approx((3 / 4 + 3 / 6) / 2)


def test_icbhi_two_class_variant_counts_any_abnormal_prediction():
    predictions, labels = predictions_from_confusion(CONFUSION)
    scores = icbhi_scores(predictions, labels, two_class=True)
    # Abnormal predicted as any abnormal class: crackle 2 (crackle, wheeze) + wheeze 2 + both 1 of 6.
    assert scores["sensitivity"] == pytest.approx(5 / 6)
    assert scores["icbhi_score"] == pytest.approx((3 / 4 + 5 / 6) / 2)


def test_icbhi_score_of_binary_labels():
    predictions, labels = predictions_from_confusion([[5, 1], [2, 2]])
    scores = icbhi_scores(predictions, labels)
    assert (scores["specificity"], scores["sensitivity"]) == pytest.approx((5 / 6, 2 / 4))


def test_sprsound_scores_combine_average_and_harmonic_means():
    # Record-level task 2-2 order: Normal, Poor Quality, CAS, DAS, CAS & DAS (Poor Quality counts in SE).
    confusion = [
        [6, 1, 1, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 2, 0],
        [1, 0, 0, 0, 0],
    ]
    predictions, labels = predictions_from_confusion(confusion)
    scores = sprsound_scores(predictions, labels)
    se, sp = (1 + 1 + 2 + 0) / 7, 6 / 8
    assert scores["sensitivity"] == pytest.approx(se)
    assert scores["specificity"] == pytest.approx(sp)
    assert scores["average_score"] == pytest.approx((se + sp) / 2)
    assert scores["harmonic_score"] == pytest.approx(2 * se * sp / (se + sp))
    assert scores["score"] == pytest.approx(((se + sp) / 2 + 2 * se * sp / (se + sp)) / 2)


def test_sprsound_event_types_count_only_exact_hits():
    # Task 1-2 order: Normal, Rhonchi, Wheeze, Stridor, Coarse Crackle, Fine Crackle, Wheeze & Crackle.
    confusion = [
        [5, 0, 0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0, 0, 0],  # a rhonchus called a wheeze is a miss, though both are CAS
        [1, 0, 2, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 3, 0],
        [0, 0, 1, 0, 0, 0, 1],
    ]
    scores = sprsound_scores(*predictions_from_confusion(confusion))
    se, sp = (1 + 2 + 1 + 3 + 1) / 12, 5 / 6
    assert (scores["sensitivity"], scores["specificity"]) == pytest.approx((se, sp))
    assert scores["score"] == pytest.approx(((se + sp) / 2 + 2 * se * sp / (se + sp)) / 2)


def test_sprsound_binary_and_ternary_record_tasks():
    # Task 1-1 (Normal, Adventitious): SE is the adventitious events predicted adventitious.
    binary = sprsound_scores(*predictions_from_confusion([[3, 1], [2, 2]]))
    assert (binary["specificity"], binary["sensitivity"], binary["average_score"]) == pytest.approx((0.75, 0.5, 0.625))
    assert binary["harmonic_score"] == pytest.approx(0.6)
    # Task 2-1 (Normal, Poor Quality, Adventitious): a poor-quality record called adventitious is a miss.
    ternary = sprsound_scores(*predictions_from_confusion([[2, 0, 0], [0, 1, 1], [0, 0, 2]]))
    assert (ternary["specificity"], ternary["sensitivity"]) == pytest.approx((1.0, 3 / 4))
    # Nothing right: HS is 0 (not a division by zero) and so is the Score.
    wrong = sprsound_scores(*predictions_from_confusion([[0, 2], [1, 0]]))
    assert (wrong["harmonic_score"], wrong["score"]) == (0.0, 0.0)


def test_compute_metrics_takes_trainer_logits():
    predictions, labels = predictions_from_confusion(CONFUSION)
    logits = np.eye(4)[predictions] * 3.0 - 1.0
    metrics = build_challenge_compute_metrics("icbhi")(EvalPrediction(predictions=(logits,), label_ids=labels))
    assert metrics["icbhi_score"] == pytest.approx(0.625)
    assert metrics["accuracy"] == pytest.approx(6 / 10)
    two_class = build_challenge_compute_metrics("icbhi_2class")(EvalPrediction(predictions=logits, label_ids=labels))
    assert two_class["icbhi_score"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    sprs = build_challenge_compute_metrics("sprsound")(EvalPrediction(predictions=logits, label_ids=labels))
    assert sprs["score"] == pytest.approx((0.625 + 2 * 0.75 * 0.5 / 1.25) / 2)


def test_a_missing_group_is_nan_with_a_warning_and_bad_input_is_an_error():
    with pytest.warns(UserWarning, match="No abnormal samples"):
        scores = icbhi_scores(np.array([0, 1]), np.array([0, 0]))
    assert np.isnan(scores["sensitivity"]) and scores["specificity"] == 0.5
    with pytest.raises(ValueError, match="must be equal"):
        icbhi_scores(np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="Unknown scoring"):
        build_challenge_compute_metrics("auroc")
