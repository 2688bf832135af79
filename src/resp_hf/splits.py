"""
Seeded splits of rows into a kept and a held-out part: the one place where validation (and OPERA's test) rows are
chosen; and the checks that a user's saved splits agree (one label feature, valid labels, no shared audio). Each
caller states its seed: OPERA's 1337 and 42 (`resp_hf.opera`), the linear probe's 1337 (42 per fold) for saved
datasets (`resp_hf.linear_probe.runner`), fine-tuning's 42 (`resp_hf.training.finetune`) and the ICBHI / SPRSound
patient carve-out's 1337 (`resp_hf.tasks`).
"""

import hashlib
import os
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from math import ceil
from typing import Literal

import numpy as np
from datasets import Audio, ClassLabel, Dataset, Features, Value
from datasets import Sequence as SequenceFeature
from sklearn.model_selection import train_test_split

from .audio import SEGMENT_KEYS, is_segment, source_path

RandomStream = Literal["RandomState", "default_rng"]


def seeded_split(
    num_rows: int,
    test_size: float,
    seed: int,
    *,
    stratify: Sequence[Hashable] | None = None,
    groups: Sequence[Hashable] | None = None,
    generator: RandomStream = "RandomState",
) -> tuple[list[int], list[int]]:
    """
    Row indices `(kept, held_out)`, with `test_size` (a fraction in (0, 1)) of the `num_rows` rows held out:

    - rows at random, or in proportion per class of `stratify` (one label per row; at least two rows per class and
      one of each class on each side);
    - with `groups` (one id per row, e.g. the patient), whole groups taken in a random order until their rows reach
      `test_size` of the rows, at least one group kept: no group is on both sides.

    `generator` is numpy's random stream seeded with `seed`, which decides the rows and their order (membership
    depends on the order of the rows given): `"RandomState"` gives the rows of sklearn's
    `train_test_split(random_state=seed)`, as OPERA draws them; `"default_rng"` those of datasets'
    `Dataset.train_test_split(seed=seed)`, which fine-tuning used before this module. An impossible split is a
    one-line ValueError.
    """
    _check_split(num_rows, test_size, stratify, groups, generator)
    if groups is not None:
        rng = np.random.RandomState(seed) if generator == "RandomState" else np.random.default_rng(seed)
        return _group_split(groups, test_size, rng)
    if generator == "RandomState":
        kept, held_out = train_test_split(
            np.arange(num_rows), test_size=test_size, random_state=seed, stratify=stratify
        )
        return kept.tolist(), held_out.tolist()
    # datasets' own split, so that the rows are exactly those of `Dataset.train_test_split(seed=seed)`
    rows = _row_table(num_rows, stratify)
    parts = rows.train_test_split(
        test_size=test_size, seed=seed, stratify_by_column=None if stratify is None else "label", keep_in_memory=True
    )
    return list(parts["train"]["row"]), list(parts["test"]["row"])


def _check_split(num_rows, test_size, stratify, groups, generator):
    """Raises a ValueError saying why no split of this kind exists, if none does."""
    if generator not in ("RandomState", "default_rng"):
        raise ValueError(f"generator must be 'RandomState' or 'default_rng', got {generator!r}.")
    if not 0 < test_size < 1:
        raise ValueError(f"the held-out fraction must lie in (0, 1), got {test_size}.")
    for name, values in (("stratify", stratify), ("groups", groups)):
        if values is not None and len(values) != num_rows:
            raise ValueError(f"{name} holds {len(values)} values for {num_rows} rows; give one per row.")
    if groups is not None:
        if stratify is not None:
            raise ValueError("a split is stratified or group-disjoint, not both: pass stratify or groups.")
        if len(set(groups)) < 2:
            raise ValueError(f"the rows hold {len(set(groups))} group(s); a group-disjoint split needs at least 2.")
        return
    held_count = ceil(test_size * num_rows)
    if num_rows - held_count < 1:
        raise ValueError(f"holding out {test_size:.0%} of {num_rows} row(s) leaves none to keep; add rows.")
    if stratify is not None:
        _check_stratifiable(Counter(stratify), num_rows - held_count, held_count)


def _check_stratifiable(class_counts, kept_count, held_count):
    """A stratified split needs two rows of each class, and room for one of each on each side."""
    single = sorted(str(label) for label, count in class_counts.items() if count < 2)
    if single:
        raise ValueError(
            f"the class(es) {', '.join(single)} have a single row; a stratified split needs at least 2 of each class."
        )
    for side, count in (("kept", kept_count), ("held-out", held_count)):
        if count < len(class_counts):
            raise ValueError(
                f"the {side} part would hold {count} row(s), fewer than the number of classes = {len(class_counts)}; "
                "a stratified split needs one row of each class on each side."
            )


def _row_table(num_rows, stratify):
    """Row numbers (and labels as class indices, in sorted order of the labels) as an in-memory `Dataset`."""
    if stratify is None:
        return Dataset.from_dict({"row": range(num_rows)})
    classes, label_indices = np.unique(np.asarray(stratify), return_inverse=True)
    features = Features({"row": Value("int64"), "label": ClassLabel(num_classes=len(classes))})
    return Dataset.from_dict({"row": range(num_rows), "label": label_indices.tolist()}, features=features)


def _group_split(groups, test_size, rng):
    """Whole groups in `rng`'s order (of the sorted group ids) until their rows reach `test_size` of the rows."""
    rows_per_group = Counter(groups)
    names = sorted(rows_per_group)
    target = test_size * len(groups)
    held, taken = set(), 0
    # shuffling positions draws the same order as shuffling the ids, and keeps the ids' own type (no numpy strings)
    for position in rng.permutation(len(names)):
        if taken >= target or len(held) == len(names) - 1:
            break
        held.add(names[position])
        taken += rows_per_group[names[position]]
    kept = [index for index, group in enumerate(groups) if group not in held]
    held_out = [index for index, group in enumerate(groups) if group in held]
    return kept, held_out


def check_split_labels(splits: Mapping[str, Dataset], column: str, source: object) -> None:
    """
    Every split of `source` must declare the same `column` feature (class numbers mean the same class in each) and
    hold only valid labels: class numbers of its ClassLabel (not -1, "no label"), or finite floats.
    """
    first, feature = next((name, split.features[column]) for name, split in splits.items())
    for name, split in splits.items():
        if not same_label_feature(split.features.get(column), feature):
            raise ValueError(
                f"{source}: the {name} split's {column!r} feature {split.features.get(column)} differs from the "
                f"{first} split's {feature}: class numbers would mean other classes. Cast every split to one feature."
            )
        bad = next((row for row, label in enumerate(split[column]) if not is_valid_label(label, feature)), None)
        if bad is not None:
            raise ValueError(
                f"{source}: the {name} split has a row without a valid label (row {bad}: {split[bad][column]!r}); "
                "label it or leave it out."
            )


def same_label_feature(one: object, other: object) -> bool:
    """Whether two splits' label features agree: equal, or both float numbers (float32 and float64 mean the same)."""
    floats = [isinstance(f, Value) and f.dtype.startswith("float") for f in (one, other)]
    return one == other or all(floats)


def is_valid_label(label: object, feature: object) -> bool:
    """Whether `label` is a class number of a ClassLabel (each of them under a Sequence), or a finite number."""
    if isinstance(feature, SequenceFeature | list):
        inner = feature.feature if isinstance(feature, SequenceFeature) else feature[0]
        return isinstance(label, list) and all(is_valid_label(value, inner) for value in label)
    if isinstance(feature, ClassLabel):
        return isinstance(label, int) and 0 <= label < feature.num_classes
    return isinstance(label, int | float) and bool(np.isfinite(label))


def audio_key(value: object) -> tuple | None:
    """
    What identifies a row's audio: the digest of its bytes when it holds them (a saved `Audio` column keeps only the
    file name, which recordings of several folders may share), else its file (and segment); None when unknown.
    """
    if is_segment(value):
        return (os.path.normpath(value["path"]), float(value["start"]), float(value["end"]))
    if isinstance(value, dict) and value.get("bytes"):
        return (f"audio bytes {hashlib.sha256(value['bytes']).hexdigest()[:16]}",)
    path = source_path(value)
    return (os.path.normpath(path),) if path else None


def split_audio_keys(split: Dataset, column: str) -> list:
    """`audio_key` of each row: of `column`, else of the segment columns (path, start, end) a task dataset has."""
    if column in split.column_names:
        if isinstance(split.features[column], Audio):
            split = split.cast_column(column, Audio(decode=False))
        return [audio_key(value) for value in split[column]]
    if set(SEGMENT_KEYS) <= set(split.column_names):
        return [audio_key(dict(zip(SEGMENT_KEYS, row))) for row in zip(*(split[key] for key in SEGMENT_KEYS))]
    return []


def check_disjoint_splits(splits: Mapping[str, Dataset], column: str, source: object) -> None:
    """Refuses the same audio (file, segment or bytes) in two splits: a score on training data means nothing."""
    seen = {}
    for name, split in splits.items():
        for key in filter(None, split_audio_keys(split, column)):
            other = seen.setdefault(key, name)
            if other != name:
                raise ValueError(
                    f"{source}: the {other} and {name} splits hold the same audio ({', '.join(map(str, key))}); "
                    "splits must not share recordings."
                )
