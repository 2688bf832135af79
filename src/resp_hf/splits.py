"""
Seeded splits of rows into a kept and a held-out part: the one place where validation (and OPERA's test) rows are
chosen. Each caller states its seed: OPERA's 1337 and 42 (`resp_hf.opera`), the linear probe's 1337 (42 per fold)
for saved datasets (`resp_hf.linear_probe.runner`), fine-tuning's 42 (`resp_hf.training.finetune`) and the ICBHI /
SPRSound patient carve-out's 1337 (`resp_hf.tasks`).
"""

from collections import Counter
from collections.abc import Hashable, Sequence
from math import ceil
from typing import Literal

import numpy as np
from datasets import ClassLabel, Dataset, Features, Value
from sklearn.model_selection import train_test_split

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
