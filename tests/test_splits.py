"""resp_hf.splits: the seeded split behind every validation carve-out and OPERA's test splits; the split checks."""

from collections import Counter

import numpy as np
import pytest
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Features, Value
from sklearn.model_selection import train_test_split

from resp_hf.splits import check_disjoint_splits, check_split_labels, seeded_split
from resp_hf.tasks.segments import carve_validation
from resp_hf.training.finetune import FinetuneArguments, prepare_splits

GENERATORS = ("RandomState", "default_rng")


def imbalanced_labels(rng, rows, classes=3):
    labels = rng.choice(classes, size=rows, p=np.linspace(1, 2, classes) / np.linspace(1, 2, classes).sum())
    return [f"class-{label}" for label in labels]


@pytest.mark.parametrize("generator", GENERATORS)
def test_a_stratified_split_holds_out_each_class_in_proportion(generator):
    labels = imbalanced_labels(np.random.default_rng(0), 200)
    kept, held_out = seeded_split(len(labels), 0.2, 7, stratify=labels, generator=generator)
    assert sorted(kept + held_out) == list(range(200)) and len(held_out) == 40  # ceil(0.2 * 200)
    counts, held_counts = Counter(labels), Counter(labels[i] for i in held_out)
    for label, count in counts.items():
        assert abs(held_counts[label] - 0.2 * count) < 1, (label, count, held_counts[label])


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("kind", ["random", "stratified", "grouped"])
def test_the_rows_depend_on_the_seed_alone(generator, kind):
    rng = np.random.default_rng(1)
    labels = imbalanced_labels(rng, 120)
    options = {
        "random": {},
        "stratified": {"stratify": labels},
        "grouped": {"groups": [f"patient-{p}" for p in rng.integers(0, 30, 120)]},
    }[kind]
    first = seeded_split(120, 0.25, 3, generator=generator, **options)
    assert seeded_split(120, 0.25, 3, generator=generator, **options) == first
    assert seeded_split(120, 0.25, 4, generator=generator, **options) != first


def test_the_randomstate_stream_gives_sklearns_rows_as_opera_draws_them():
    rng = np.random.default_rng(2)
    for trial in range(30):
        rows = int(rng.integers(30, 90))
        labels = [int(label) for label in rng.integers(0, 3, rows)]
        labels[:6] = [0, 0, 1, 1, 2, 2]  # every class at least twice
        fraction, seed = float(rng.choice([0.1, 0.11, 0.2, 0.25])), int(rng.integers(0, 2000))
        expected = train_test_split(list(range(rows)), test_size=fraction, random_state=seed, stratify=labels)
        assert seeded_split(rows, fraction, seed, stratify=labels) == tuple(expected), trial
        expected = train_test_split(list(range(rows)), test_size=fraction, random_state=seed)
        assert seeded_split(rows, fraction, seed) == tuple(expected), trial


def test_the_default_rng_stream_gives_the_rows_of_datasets_train_test_split():
    rng = np.random.default_rng(3)
    for trial in range(10):
        rows = int(rng.integers(10, 60))
        labels = [int(label) for label in rng.integers(0, 3, rows)]
        labels[:6] = [0, 0, 1, 1, 2, 2]
        table = Dataset.from_dict(
            {"row": range(rows), "label": labels},
            features=Features({"row": Value("int64"), "label": ClassLabel(num_classes=3)}),
        )
        for stratify in (None, "label"):
            parts = table.train_test_split(test_size=0.2, seed=trial, stratify_by_column=stratify)
            expected = list(parts["train"]["row"]), list(parts["test"]["row"])
            given = labels if stratify else None
            assert seeded_split(rows, 0.2, trial, stratify=given, generator="default_rng") == expected


def test_finetunings_carve_out_keeps_the_rows_of_its_seed_42_split():
    labels = [0] * 9 + [1] * 6
    features = Features({"audio": Value("string"), "label": ClassLabel(names=["breath", "wheeze"])})
    train = Dataset.from_dict({"audio": [f"{i}.wav" for i in range(15)], "label": labels}, features=features)
    arguments = FinetuneArguments(model_name_or_path="unused", dataset="unused", validation_fraction=0.3)
    kept, evaluation, test = prepare_splits(DatasetDict({"train": train}), arguments)
    before = train.train_test_split(test_size=0.3, seed=42, stratify_by_column="label")  # fine-tuning's former call
    assert list(kept["audio"]) == list(before["train"]["audio"])
    assert list(evaluation["audio"]) == list(before["test"]["audio"])
    assert test is None


def former_patient_rule(patients, fraction, seed):
    """The ICBHI / SPRSound carve-out as it was written before resp_hf.splits: whole patients until the fraction."""
    per_patient = Counter(patients)
    target, chosen, taken = fraction * len(patients), set(), 0
    for patient in np.random.default_rng(seed).permutation(sorted(per_patient)):
        if taken >= target or len(chosen) == len(per_patient) - 1:
            break
        chosen.add(str(patient))
        taken += per_patient[patient]
    return chosen


def test_a_group_split_is_disjoint_and_keeps_the_former_patient_rule():
    rng = np.random.default_rng(4)
    for trial in range(30):
        patients = [str(p) for p in rng.integers(100, 100 + int(rng.integers(2, 12)), int(rng.integers(5, 60)))]
        if len(set(patients)) < 2:
            continue
        fraction = float(rng.choice([0.05, 0.2, 0.5, 0.99]))
        kept, held_out = seeded_split(len(patients), fraction, trial, groups=patients, generator="default_rng")
        kept_patients, held_patients = {patients[i] for i in kept}, {patients[i] for i in held_out}
        assert kept_patients and held_patients and not kept_patients & held_patients
        assert sorted(kept + held_out) == list(range(len(patients)))
        assert held_patients == former_patient_rule(patients, fraction, trial), trial


def test_the_segment_carve_out_moves_whole_patients_to_validation():
    rows = [{"patient": patient, "split": split} for patient, split in zip("aabbbccdde", "tttttttttx")]
    for row in rows:
        row["split"] = "train" if row["split"] == "t" else "test"
    chosen = carve_validation(rows, 0.3, 1337, "ICBHI")
    assert chosen == sorted(former_patient_rule([row["patient"] for row in rows[:9]], 0.3, 1337))
    assert {row["patient"] for row in rows if row["split"] == "validation"} == set(chosen)
    assert rows[-1]["split"] == "test"


@pytest.mark.parametrize(
    ("rows", "fraction", "options", "message"),
    [
        (10, 0.0, {}, r"the held-out fraction must lie in \(0, 1\), got 0.0"),
        (10, 1.5, {}, r"the held-out fraction must lie in \(0, 1\), got 1.5"),
        (1, 0.2, {}, r"holding out 20% of 1 row\(s\) leaves none to keep"),
        (5, 0.2, {"stratify": [0, 0, 0, 0, 1]}, r"the class\(es\) 1 have a single row"),
        (
            4,
            0.2,
            {"stratify": [0, 0, 1, 1]},
            r"the held-out part would hold 1 row\(s\), fewer than the number of classes",
        ),
        (4, 0.6, {"stratify": [0, 0, 1, 1]}, r"the kept part would hold 1 row\(s\), fewer than the number of classes"),
        (3, 0.2, {"stratify": [0, 1]}, r"stratify holds 2 values for 3 rows"),
        (3, 0.2, {"groups": ["a", "a", "a"]}, r"the rows hold 1 group\(s\); a group-disjoint split needs at least 2"),
        (4, 0.2, {"groups": list("aabb"), "stratify": [0, 1, 0, 1]}, r"stratified or group-disjoint, not both"),
        (4, 0.2, {"generator": "mt19937"}, r"generator must be 'RandomState' or 'default_rng', got 'mt19937'"),
    ],
)
def test_an_impossible_split_is_a_one_line_error(rows, fraction, options, message):
    with pytest.raises(ValueError, match=message) as error:
        seeded_split(rows, fraction, 0, **options)
    assert "\n" not in str(error.value)


def test_saved_audio_is_told_apart_by_its_bytes_not_its_file_name():
    """A saved Audio column keeps only file names: Coswara's recordings are all 'cough-shallow.wav'."""
    features = Features({"audio": {"bytes": Value("binary"), "path": Value("string")}, "label": Value("float32")})

    def split(payloads):
        rows = {"audio": [{"bytes": payload, "path": "cough-shallow.wav"} for payload in payloads], "label": [0.0] * 2}
        return Dataset.from_dict(rows, features=features).cast_column("audio", Audio(decode=False))

    check_disjoint_splits({"train": split([b"a", b"b"]), "test": split([b"c", b"d"])}, "audio", "coswara")
    with pytest.raises(ValueError, match="coswara: the train and test splits hold the same audio \\(audio bytes "):
        check_disjoint_splits({"train": split([b"a", b"b"]), "test": split([b"c", b"b"])}, "audio", "coswara")


def test_float_labels_of_any_width_agree_between_splits():
    splits = {
        name: Dataset.from_dict(
            {"audio": [f"{name}.wav"], "label": [1.5]},
            features=Features({"audio": Value("string"), "label": Value(dtype)}),
        )
        for name, dtype in (("train", "float32"), ("test", "float64"))
    }
    check_split_labels(splits, "label", "breathing-rate")
