import csv
import importlib.util

import pytest
from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def int8_accuracy():
    spec = importlib.util.spec_from_file_location("int8_accuracy", REPO_ROOT / "benchmarks" / "int8_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_results_csv(path, values):
    """A `resp-hf benchmark` results.csv: per-seed rows, then the summary rows the comparison must ignore."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["task", "layer", "seed", "value"])
        writer.writeheader()
        for layer, by_seed in values.items():
            for seed, value in by_seed.items():
                writer.writerow({"task": "t", "layer": layer, "seed": seed, "value": value})
            writer.writerow({"task": "t", "layer": layer, "seed": "mean", "value": 0.5})
            writer.writerow({"task": "t", "layer": layer, "seed": "std", "value": 0.1})


def test_the_change_is_taken_seed_by_seed(tmp_path, int8_accuracy):
    write_results_csv(tmp_path / "fp32.csv", {"1": {0: 0.80, 1: 0.90, 2: 0.70}})
    write_results_csv(tmp_path / "int8.csv", {"1": {2: 0.72, 0: 0.79, 1: 0.90}})
    fp32 = int8_accuracy.test_auroc_per_seed(tmp_path / "fp32.csv")
    int8 = int8_accuracy.test_auroc_per_seed(tmp_path / "int8.csv")
    assert fp32 == {"1": {0: 0.80, 1: 0.90, 2: 0.70}}
    [row] = int8_accuracy.compare(fp32, int8)
    # changes per seed: -0.01, 0.00, +0.02
    assert row["fp32"] == pytest.approx(0.8)
    assert row["int8"] == pytest.approx(2.41 / 3)
    assert row["change_mean"] == pytest.approx(0.01 / 3)
    # deviations from the mean change are -4, -1 and +5 times 0.01/3: population std sqrt(42/3) * 0.01/3
    assert row["change_std"] == pytest.approx(14**0.5 * 0.01 / 3)
    assert row["largest_change"] == pytest.approx(0.02)


def test_the_synthetic_classes_overlap_in_tone_level(int8_accuracy):
    (quiet_low, quiet_high), (louder_low, louder_high) = int8_accuracy.TONE_LEVELS.values()
    assert louder_low < quiet_high  # overlapping ranges keep the task from saturating at AUROC 1.0
