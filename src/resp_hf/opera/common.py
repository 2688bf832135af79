"""Helpers shared by the OPERA task builders: required files, OPERA's manifests, OPERA's seeded splits."""

import csv
from collections import Counter
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

SHOWN = 5
# OPERA's linear evaluation (src/benchmark/linear_eval.py) carves validation sets with this sklearn seed.
OPERA_VALIDATION_SEED = 1337


class OperaDataError(ValueError):
    """The OPERA checkout lacks something a task needs, or disagrees with OPERA's committed manifest."""


def require(root, *relative_paths):
    """Fails with the list of metadata files a task needs but the checkout lacks."""
    missing = [path for path in relative_paths if not (root / path).exists()]
    if missing:
        raise OperaDataError(
            f"The OPERA checkout at {root} lacks {', '.join(missing)}. Download the dataset and place it as OPERA's "
            "datasets/<name>/README.md describes (see `resp-hf opera list` for sources)."
        )


def load_manifest(root, relative_paths):
    """OPERA's committed task arrays (aligned by index), or None when the checkout has none of them."""
    if not relative_paths:
        return None
    present = [(root / path).is_file() for path in relative_paths]
    if not any(present):
        return None
    if not all(present):
        missing = [path for path, ok in zip(relative_paths, present) if not ok]
        raise OperaDataError(f"OPERA's manifest at {root} is incomplete: {', '.join(missing)} missing.")
    arrays = [np.load(root / path, allow_pickle=False) for path in relative_paths]
    if len({len(array) for array in arrays}) != 1:
        raise OperaDataError(f"OPERA's manifest arrays {relative_paths} have different lengths.")
    return [array.tolist() for array in arrays]


def read_csv_rows(path, delimiter=","):
    """Rows of a CSV file as dicts (a UTF-8 byte-order mark and surrounding spaces in names are dropped)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        return [{(key or "").strip(): (value or "").strip() for key, value in row.items()} for row in reader]


def read_tab_table(path):
    """Whitespace-separated text table (ICBHI metadata) as lists of fields, blank lines skipped."""
    return [line.split() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def check_against_manifest(task_id, derived, manifest):
    """
    Compares derived `(path, label, split)` triples with OPERA's, in OPERA's order. Any difference is an error that
    shows examples, so a build never silently departs from the benchmark.
    """
    derived_by_path = {path: (label, split) for path, label, split in derived}
    manifest_paths = [path for path, _, _ in manifest]
    only_derived = sorted(set(derived_by_path) - set(manifest_paths))
    only_manifest = sorted(set(manifest_paths) - set(derived_by_path))
    different = [
        f"{path}: ours {derived_by_path[path]}, OPERA {(label, split)}"
        for path, label, split in manifest
        if path in derived_by_path and derived_by_path[path] != (label, split)
    ]
    problems = []
    if only_derived:
        problems.append(f"{len(only_derived)} files not in OPERA's manifest, e.g. {only_derived[:SHOWN]}")
    if only_manifest:
        problems.append(f"{len(only_manifest)} manifest files not derived, e.g. {only_manifest[:SHOWN]}")
    if different:
        problems.append(f"{len(different)} label/split differences, e.g. {different[:SHOWN]}")
    if problems:
        raise OperaDataError(
            f"{task_id}: the metadata in this checkout does not reproduce OPERA's committed manifest: "
            + "; ".join(problems)
        )


def seeded_split(items, labels, test_size, seed, stratify=True):
    """Indices `(kept, held_out)` of sklearn's `train_test_split`, as OPERA calls it (membership depends on order)."""
    indices = np.arange(len(items))
    kept, held_out = train_test_split(
        indices, test_size=test_size, random_state=seed, stratify=labels if stratify else None
    )
    return kept.tolist(), held_out.tolist()


def carve_validation(task, rows, fraction, seed):
    """
    Moves a stratified, seeded `fraction` of the train rows to validation, like OPERA; which rows go depends on the
    order of `rows`, which must be the order OPERA passes them to sklearn. Returns `rows`.
    """
    train = [row for row in rows if row["split"] == "train"]
    labels = [row["label"] for row in train]
    check_stratifiable(task, labels)
    try:
        _, held_out = seeded_split(train, labels, fraction, seed)
    except ValueError as error:  # e.g. fewer held-out rows than classes
        raise OperaDataError(f"{task.id}: cannot carve OPERA's validation set from the train split: {error}") from error
    for index in held_out:
        train[index]["split"] = "validation"
    return rows


def check_stratifiable(task, labels):
    """A stratified split needs training rows, and at least two of each class."""
    if not labels:
        raise OperaDataError(
            f"{task.id}: the train split is empty, so no validation set can be carved from it. Check that the "
            "checkout holds the dataset's audio and metadata (see `resp-hf opera list --opera-root`)."
        )
    counts = Counter(labels)
    single = [task.label_names[label] for label in sorted(counts) if counts[label] < 2]
    if single:
        raise OperaDataError(
            f"{task.id}: the train split has a single {' / '.join(single)} row, too few for OPERA's stratified "
            "validation carve-out. Add the missing recordings."
        )
